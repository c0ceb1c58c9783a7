"""Hub sequence classifiers as instruments (biasamp.instruments.registry.Reader): the authors'
RoBERTa, the gibberish detector, any local folder, and a random tiny one for tests. The offline
leaning model (biasamp.instruments.leaning) and quality proxy (biasamp.instruments.quality) serve the
same protocol; biasamp.instruments.load_classifier picks one by config kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

from biasamp.config import LABELS, ModelConfig
from biasamp.models import load_tokenizer
from biasamp.text import by_length


@dataclass
class SequenceClassifier:
    model: torch.nn.Module
    tokenizer: object
    labels: list  # per output index: what the config maps that model label onto
    max_tokens: int

    def probabilities(self, texts: list[str], batch_size: int) -> np.ndarray:
        return class_probabilities(self, texts, batch_size)


def load_hub(kind: str, name: str, label_map: dict, max_tokens: int, study_model: ModelConfig, key: str):
    """A sequence classifier (kind hf: hub id or folder; tiny_random: random, on the study's
    tokenizer) whose outputs are re-indexed through `label_map` (model label -> value); `key` (the
    config's scoring.KEY) names it in errors."""
    if kind == "tiny_random":
        tok = load_tokenizer(study_model)
        torch.manual_seed(0)
        names = sorted(label_map)  # independent of the order a config file lists them in
        config = GPT2Config(
            vocab_size=len(tok),
            n_layer=1,
            n_embd=32,
            n_head=2,
            n_positions=1024,
            num_labels=len(names),
            pad_token_id=tok.pad_token_id,
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
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
        for idx in by_length(texts, batch_size):
            enc = tok(
                [texts[i] for i in idx], truncation=True, max_length=clf.max_tokens, padding=True, return_tensors="pt"
            )
            logits = clf.model(**{k: v.to(clf.model.device) for k, v in enc.items()}).logits
            out[idx] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
    finally:
        tok.padding_side = side
    return out


def leaning(clf: SequenceClassifier, texts: list[str], batch_size: int) -> pd.DataFrame:
    """Per text: p_left, p_center, p_right (summed over model labels mapped onto each) and the argmax label."""
    probs = clf.probabilities(texts, batch_size)
    cols = {lab: probs[:, [i for i, v in enumerate(clf.labels) if v == lab]].sum(axis=1) for lab in LABELS}
    df = pd.DataFrame({f"p_{lab}": cols[lab] for lab in LABELS})
    df["label"] = np.array(LABELS)[df[[f"p_{lab}" for lab in LABELS]].to_numpy().argmax(axis=1)]
    return df
