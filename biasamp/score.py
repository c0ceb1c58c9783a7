"""The instruments: leaning classifier, text-quality index, perplexity. Per-article scores.

scores columns: study, arm, seed, generation, article_id, p_left, p_center, p_right, label, tqi,
ppl (under the generation's own model), ppl_ref (under the study's base model, fixed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

from biasamp.config import LABELS, ModelConfig, ScoringConfig
from biasamp.models import load_tokenizer
from biasamp.tables import TABLES



@dataclass
class SequenceClassifier:
    model: torch.nn.Module
    tokenizer: object
    labels: list  # per output index: what the config maps that model label onto
    max_tokens: int


def load_classifier(kind: str, name: str, label_map: dict, max_tokens: int, study_model: ModelConfig, key: str):
    """A sequence classifier whose outputs are re-indexed through `label_map` (model label -> value);
    for kind 'offline', the project's own instruments (biasamp.leaning, biasamp.quality)."""
    if kind == "offline" and key == "classifier":
        from biasamp.leaning import MiniLMClassifier, load_head
        from biasamp.leaning import load_tokenizer as minilm_tokenizer

        head = load_head(name)  # outputs are in LABELS order; the head's own input length applies
        return SequenceClassifier(MiniLMClassifier(head).eval(), minilm_tokenizer(), list(LABELS), head["max_tokens"])
    if kind == "offline":
        from biasamp.quality import QualityProxy

        return QualityProxy.load(name)
    if kind == "tiny_random":
        tok = load_tokenizer(study_model)
        torch.manual_seed(0)
        names = sorted(label_map)  # independent of the order a config file lists them in
        config = GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=1024,
                            num_labels=len(names), pad_token_id=tok.pad_token_id,
                            id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        model = GPT2ForSequenceClassification(config)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(name)
            model = AutoModelForSequenceClassification.from_pretrained(name)
        except OSError as e:
            raise ValueError(
                f"scoring.{key}.name: cannot load '{name}' ({str(e).splitlines()[0][:160]}). Without a network, "
                f"point it at a local directory, or set scoring.enabled: false"
            ) from None
    id2label = model.config.id2label
    missing = [id2label[i] for i in range(len(id2label)) if id2label[i] not in label_map]
    if missing:
        raise ValueError(f"scoring.{key}.labels: no mapping for model label(s) {missing} of {name}")
    return SequenceClassifier(model.eval(), tok, [label_map[id2label[i]] for i in range(len(id2label))], max_tokens)


@torch.no_grad()
def class_probabilities(clf: SequenceClassifier, texts: list[str], batch_size: int) -> np.ndarray:
    """Softmax outputs, (len(texts), n_labels), in model-output order."""
    out = np.zeros((len(texts), len(clf.labels)))
    tok = clf.tokenizer
    side, tok.padding_side = tok.padding_side, "right"
    try:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok([texts[i] for i in idx], truncation=True, max_length=clf.max_tokens, padding=True,
                      return_tensors="pt")
            logits = clf.model(**{k: v.to(clf.model.device) for k, v in enc.items()}).logits
            out[idx] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
    finally:
        tok.padding_side = side
    return out


def leaning(clf: SequenceClassifier, texts: list[str], batch_size: int) -> pd.DataFrame:
    probs = class_probabilities(clf, texts, batch_size)
    cols = {lab: probs[:, [i for i, v in enumerate(clf.labels) if v == lab]].sum(axis=1) for lab in LABELS}
    df = pd.DataFrame({f"p_{lab}": cols[lab] for lab in LABELS})
    df["label"] = np.array(LABELS)[df[[f"p_{lab}" for lab in LABELS]].to_numpy().argmax(axis=1)]
    return df


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def quality_index(clf: SequenceClassifier, texts: list[str], batch_size: int) -> np.ndarray:
    """Per article: the mean over its sentences of the expected level sum_k k * p_k (0 = noise ..
    3 = clean); 0 for an article with no sentence, as the authors do."""
    owner, sents = [], []
    for k, t in enumerate(texts):
        for s in sentences(t):
            owner.append(k)
            sents.append(s)
    levels = np.zeros(len(texts))
    if sents:
        from biasamp.quality import QualityProxy

        # the offline proxy also reads which article each sentence belongs to (repetition of earlier sentences)
        probs = (clf.probabilities(sents, batch_size, owner) if isinstance(clf, QualityProxy)
                 else class_probabilities(clf, sents, batch_size))
        expected = probs @ np.asarray(clf.labels, dtype=float)
        sums = np.bincount(owner, weights=expected, minlength=len(texts))
        counts = np.bincount(owner, minlength=len(texts))
        np.divide(sums, counts, out=levels, where=counts > 0)
    return levels


@torch.no_grad()
def perplexities(model, tokenizer, texts: list[str], max_tokens: int, batch_size: int) -> np.ndarray:
    """exp(mean next-token NLL) per text, padding masked out."""
    out = np.full(len(texts), np.nan)
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    limit = min(max_tokens, getattr(model.config, "max_position_embeddings", None) or max_tokens)
    try:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=limit, padding=True,
                            return_tensors="pt").to(model.device)
            # float32 log-softmax over the vocabulary (a float64 copy of the logits costs more than the
            # forward pass for a 49k-50k vocabulary); per-token losses are summed in float64.
            logits = model(**enc, use_cache=False).logits[:, :-1]
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].double()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none").double()
            n = mask.sum(dim=1)
            ppl = torch.exp((nll * mask).sum(dim=1) / n.clamp(min=1))
            out[idx] = torch.where(n > 0, ppl, torch.nan).cpu().numpy()
    finally:
        tokenizer.padding_side = side
    return out


@dataclass
class Instruments:
    leaning: SequenceClassifier
    quality: SequenceClassifier
    reference: tuple  # (model, tokenizer) for ppl_ref
    cfg: ScoringConfig


def load_instruments(cfg: ScoringConfig, study_model: ModelConfig) -> Instruments:
    """The classifier, the quality model, and the study's base model as the fixed perplexity
    reference (seed-independent: one reference for every trajectory, in `run` and `score` alike)."""
    from biasamp.models import load_base_model

    c, q = cfg.classifier, cfg.quality
    ref_tok = load_tokenizer(study_model)
    return Instruments(
        load_classifier(c.kind, c.name, c.labels, c.max_tokens, study_model, "classifier"),
        load_classifier(q.kind, q.name, q.labels, q.max_tokens, study_model, "quality"),
        (load_base_model(study_model, len(ref_tok)).eval(), ref_tok),
        cfg,
    )


def score_articles(inst: Instruments, articles: pd.DataFrame, own=None) -> pd.DataFrame:
    """Scores of an articles table (study, arm, seed, generation, article_id, title, text).

    The classifier reads each article as the models were trained on it (`title: ...\\nbody: ...`),
    the quality index reads the generated text, perplexity the same text as the classifier.
    """
    from biasamp.train import training_text

    bs = inst.cfg.batch_size
    full = [training_text(t, b) for t, b in zip(articles["title"], articles["text"])]
    out = articles[["study", "arm", "seed", "generation", "article_id"]].reset_index(drop=True)
    out = pd.concat([out, leaning(inst.leaning, full, bs)], axis=1)
    out["tqi"] = quality_index(inst.quality, list(articles["text"]), bs)
    mt = inst.cfg.perplexity_max_tokens
    out["ppl"] = perplexities(*own, full, mt, bs) if own is not None else np.nan
    out["ppl_ref"] = perplexities(*inst.reference, full, mt, bs)
    return TABLES["scores"].check(out)
