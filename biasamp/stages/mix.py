"""What each generation trains on: one function per mix kind (the kinds and their settings are
biasamp.config's MixConfig); `training_set` picks the arm's. Adding an arm type is one function here
and one settings class there (a test checks they agree)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from biasamp.config import ArmConfig

MIXES = {}


def register_mix(kind: str):
    def add(fn):
        MIXES[kind] = fn
        return fn

    return add


def training_set(
    arm: ArmConfig,
    generation: int,
    real: pd.DataFrame,
    synthetic: list[pd.DataFrame],
    seed: int,
    previous_scores: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The articles G_generation is fine-tuned on: article_id, title, text, and `source`, "real" or
    the generation that wrote the article ("G0", "G1", ...).

    `synthetic` holds D_0 .. D_{generation-1}, oldest first, each with its `generation` column;
    `previous_scores` the scores of D_{generation-1} (mixes that read the classifier). G0 always trains
    on the real corpus. Random draws are seeded by (seed, generation), so a resumed run draws what a
    fresh one would.
    """
    if generation == 0:
        return _tagged(real, "real")
    rng = np.random.default_rng([seed, generation])
    return MIXES[arm.mix.kind](arm.mix, real, synthetic, rng, previous_scores).reset_index(drop=True)


def _tagged(df: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """article_id, title, text, source; a synthetic table's source is the generation that wrote it."""
    out = df[["article_id", "title", "text"]].copy()
    out["source"] = source if source is not None else "G" + df["generation"].astype(str)
    return out


def _real_sample(real: pd.DataFrame, k: int, rng) -> pd.DataFrame:
    return _tagged(real.iloc[np.sort(rng.choice(len(real), k, replace=False))], "real")


@register_mix("replace")
def _replace(mix, real, synthetic, rng, scores):
    return _tagged(synthetic[-1])


@register_mix("preserve")
def _preserve(mix, real, synthetic, rng, scores):
    return pd.concat([_tagged(synthetic[-1]), _real_sample(real, round(mix.real_fraction * len(real)), rng)])


@register_mix("accumulate")
def _accumulate(mix, real, synthetic, rng, scores):
    return pd.concat([_tagged(real, "real"), *[_tagged(d) for d in synthetic]])


@register_mix("accumulate_subsample")
def _accumulate_subsample(mix, real, synthetic, rng, scores):
    pool = _accumulate(mix, real, synthetic, rng, scores).reset_index(drop=True)
    return pool.iloc[np.sort(rng.choice(len(pool), len(real), replace=False))]  # constant size N


def _apportion(weights: dict[str, float], n: int) -> dict[str, int]:
    """n split in proportion to `weights` (largest remainders), as whole numbers."""
    keys = list(weights)
    w = np.array([weights[k] for k in keys], dtype=float)
    raw = w / w.sum() * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return dict(zip(keys, counts.tolist()))


def _labels_of(latest: pd.DataFrame, scores: pd.DataFrame) -> np.ndarray:
    """The classifier's label of each article of D_{g-1}, in its row order."""
    return (
        latest[["article_id"]].merge(scores[["article_id", "label"]], on="article_id", how="left")["label"].to_numpy()
    )


@register_mix("curate")
def _curate(mix, real, synthetic, rng, scores):
    """D_{g-1} resampled to its own size with the real corpus's label shares (labels of D_{g-1} as the
    classifier gave them). A label short of articles is upsampled: all of them, then draws with
    replacement; a label the classifier never gave has its share spread over the others."""
    latest = synthetic[-1].reset_index(drop=True)
    labels = _labels_of(latest, scores)
    target = real["source_label"].value_counts(normalize=True)
    present = {lab: share for lab, share in target.items() if (labels == lab).any()}
    picks = []
    for lab, n in _apportion(present, len(latest)).items():
        pool = rng.permutation(np.flatnonzero(labels == lab))
        picks.append(pool[:n] if len(pool) >= n else np.concatenate([pool, rng.choice(pool, n - len(pool))]))
    return _tagged(latest.iloc[np.sort(np.concatenate(picks))])


@register_mix("preserve_balanced")
def _preserve_balanced(mix, real, synthetic, rng, scores):
    """D_{g-1} plus k = real_fraction*N real articles, k split over labels in proportion to how far
    each label of D_{g-1} (classifier labels) falls short of the real corpus's share of D_{g-1} + k."""
    latest = synthetic[-1]
    k = round(mix.real_fraction * len(real))
    have = pd.Series(_labels_of(latest, scores)).value_counts()
    target = real["source_label"].value_counts(normalize=True)
    deficit = {lab: max(0.0, share * (len(latest) + k) - have.get(lab, 0)) for lab, share in target.items()}
    chosen = []
    for lab, n in _apportion(deficit, k).items():
        pool = np.flatnonzero(real["source_label"].to_numpy() == lab)
        chosen.append(rng.choice(pool, min(n, len(pool)), replace=False))
    chosen = np.concatenate(chosen)
    if len(chosen) < k:  # a label ran out of real articles: the rest at random
        rest = np.setdiff1d(np.arange(len(real)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, k - len(chosen), replace=False)])
    return pd.concat([_tagged(latest), _tagged(real.iloc[np.sort(chosen)], "real")])
