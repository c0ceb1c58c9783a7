"""The scoring stage: each article of D_g through the instruments (biasamp.instruments), and its
perplexity under the generation's own model and under the study's base model.

scores columns: study, arm, seed, generation, article_id, p_left, p_center, p_right, label, one
column per registered measure (biasamp.instruments.registry; built in: tqi, the quality index),
ppl (under the generation's own model), ppl_ref (under the study's base model, fixed), and the
degradation null null_p_left/center/right: the classifier's reading of the real article the
generated one continues, cut and looped to the generated body's length and repetition
(biasamp.instruments.degrade). Where a leaning moves with collapse alone, the null moves with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from biasamp.config import ModelConfig, ScoringConfig
from biasamp.instruments import load_classifier
from biasamp.instruments.degrade import degrade_to_profile, profile
from biasamp.instruments.hf import leaning
from biasamp.instruments.leaning import load_calibration
from biasamp.instruments.registry import MEASURES, Reader
from biasamp.models import load_base_model, load_tokenizer, perplexities
from biasamp.stages.summarize import NULL_PROBS, PROBS, scoring_settings
from biasamp.tables import ADDRESS_COLUMNS, TABLES
from biasamp.text import classifier_text, training_text


@dataclass
class Instruments:
    leaning: Reader
    measures: dict[str, Reader]  # per registered measure (its column): the reader it measures with
    reference: tuple  # (model, tokenizer) for ppl_ref
    cfg: ScoringConfig
    calibration: pd.DataFrame | None  # the classifier's, for the prevalence estimate
    settings: str  # scoring_settings(cfg), recorded in every scores file


def load_instruments(cfg: ScoringConfig, study_model: ModelConfig) -> Instruments:
    """The classifier, each registered measure's reader, and the study's base model as the fixed
    perplexity reference (seed-independent: one reference for every trajectory, in `run` and `score` alike)."""
    c = cfg.classifier
    ref_tok = load_tokenizer(study_model)
    return Instruments(
        load_classifier(c.kind, c.name, c.labels, c.max_tokens, study_model, "classifier"),
        {column: m.load(cfg, study_model) for column, m in MEASURES.items()},
        (load_base_model(study_model, len(ref_tok)).eval(), ref_tok),
        cfg,
        load_calibration(c),
        scoring_settings(cfg),
    )


def degradation_null(articles: pd.DataFrame, real: pd.DataFrame, read: str = "title_body") -> list[str]:
    """Per generated article: its real article (same article_id; the real title), the body cut and
    looped to the generated body's profile, as the classifier reads it (text.classifier_text)."""
    by_id = real.drop_duplicates("article_id").set_index("article_id")
    source = by_id.reindex(articles["article_id"])
    return [
        classifier_text(title, degrade_to_profile(body, *profile(generated)), read)
        for title, body, generated in zip(source["title"].fillna(""), source["text"].fillna(""), articles["text"])
    ]


def score_articles(inst: Instruments, articles: pd.DataFrame, real: pd.DataFrame, own=None) -> pd.DataFrame:
    """Scores of an articles table (study, arm, seed, generation, article_id, title, text); `real`:
    the real corpus they continue (article_id, title, text), for the degradation null.

    The classifier reads each article's body, or its title and body as the models were trained on them
    (`scoring.classifier.read`), each measure reads the generated text, perplexity title and body.
    """
    bs, read = inst.cfg.batch_size, inst.cfg.classifier.read
    full = [training_text(t, b) for t, b in zip(articles["title"], articles["text"])]
    out = articles[[*ADDRESS_COLUMNS, "article_id"]].reset_index(drop=True)
    texts = [classifier_text(t, b, read) for t, b in zip(articles["title"], articles["text"])]
    out = pd.concat([out, leaning(inst.leaning, texts, bs)], axis=1)
    null = leaning(inst.leaning, degradation_null(articles, real, read), bs)
    out[NULL_PROBS] = null[PROBS].to_numpy()
    for column, reader in inst.measures.items():
        out[column] = MEASURES[column].measure(reader, list(articles["text"]), bs)
    mt = inst.cfg.perplexity_max_tokens
    # On a CPU one article per forward pass: a batch's float32 logits (rows x tokens x vocabulary, 800 MB
    # at 8 x 512 x 49k) cost more than batching saves there (`python -m bench scoring`).
    ppl_bs = 1 if inst.reference[0].device.type == "cpu" else bs
    out["ppl"] = perplexities(*own, full, mt, ppl_bs) if own is not None else np.nan
    out["ppl_ref"] = perplexities(*inst.reference, full, mt, ppl_bs)
    return TABLES["scores"].check(out)


def change_scores(
    clf: Reader, before: pd.DataFrame, after: pd.DataFrame, reference, batch_size: int, read: str, seed: int = 0
):
    """`biasamp leaning-change`'s two versions as a study's scores (generations 0 and 1 of one arm), so
    that arm_contrasts reads their change as it reads a study's. BEFORE: real articles, read intact,
    each its own null; AFTER: articles continuing BEFORE's ids, read with their titles, the null BEFORE's
    article cut and looped to each one's profile (degradation_null). Calibration articles carry labels:
    BEFORE's own (as in a study), or else `reference`'s (labelled articles), each cut and looped to the
    profile of an article of the version it calibrates, as rows of their own with nothing read."""
    frames = []
    labels = before.set_index("article_id")["source_label"]
    for g, part in enumerate((before, after)):
        texts = [classifier_text(t, b, read) for t, b in zip(part["title"], part["text"])]
        probs, null = leaning(clf, texts, batch_size), leaning(clf, degradation_null(part, before, read), batch_size)
        label = labels.reindex(part["article_id"]).to_numpy()
        frames.append(_change_rows(g, part["article_id"], probs[PROBS], null[PROBS], label))
        if reference is not None:
            # each reference article cut and looped like an article of this version drawn for it
            rng = np.random.default_rng(seed + g)
            drawn = part["text"].iloc[rng.integers(0, len(part), len(reference))].to_numpy()
            like = pd.DataFrame({"article_id": reference["article_id"].to_numpy(), "text": drawn})
            null = leaning(clf, degradation_null(like, reference, read), batch_size)[PROBS]
            ids = "reference:" + reference["article_id"].astype(str)
            frames.append(_change_rows(g, ids, null * np.nan, null, reference["source_label"].to_numpy()))
    return pd.concat(frames, ignore_index=True)


def _change_rows(g: int, ids, probs: pd.DataFrame, null: pd.DataFrame, labels) -> pd.DataFrame:
    out = pd.DataFrame({"study": "change", "arm": "after", "seed": 0, "generation": g, "article_id": list(ids)})
    out[PROBS] = probs.to_numpy()
    out[NULL_PROBS] = null.to_numpy()
    return out.assign(label=labels, ppl=np.nan)
