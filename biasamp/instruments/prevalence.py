"""Label shares of a corpus, corrected for the classifier's confusion (quantification).

Counting argmax labels (classify and count, `cc`) pulls every corpus toward the classifier's own
preferred mix; averaging probabilities (`pcc`, the default) pulls it less, and keeps what a
calibrated classifier reads when the text itself shifts (Card & Smith, NAACL 2018): generated text
is such a shift. Neither needs a calibration table; their CI covers the articles only. Adjusted
classify-and-count solves observed = M @ true for the true shares, where
column i of M is what the classifier outputs, on average, for articles whose true label is i, on
outlets it never saw: argmax shares (`acc`) or mean probabilities (`pacc`, Bella et al. 2010).
M comes from a calibration table: per outlet and true label, sums of out-of-fold outputs of the
same classifier recipe (`biasamp classifier train` / `eval` write it).

The 95% CI has three parts, one per bootstrap draw: the corpus's articles resampled; the
calibration outlets resampled (within each label: how well M is known); and the corpus's own
shift: the confusion of a corpus of the same size and estimated mix, drawn article by article
(outlets in proportion to their size) from a new set of outlets resampled like the
calibration's, minus M. The last matters on real text: an unseen source shifts the classifier's
outputs about as much as the labels separate them, so the confusion of the corpus's own sources
is not the calibration's average (without it the CI covered 55% of held-out corpora, docs/measuring.md).
It assumes the corpus's sources are as many and as unequal as the calibration's.

Calibration columns: outlet, label, n, post_left/center/right (summed probabilities),
pred_left/center/right (argmax counts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from biasamp.config import LABELS

METHODS = ("pcc", "cc", "acc", "pacc")
UNCORRECTED = ("pcc", "cc")  # the confusion is taken as the identity
# What the leaning instrument reports of a corpus: the means of reading_values over its articles.
READINGS = [f"share_{lab}" for lab in LABELS] + ["lean_index"]
POST = [f"post_{lab}" for lab in LABELS]
PRED = [f"pred_{lab}" for lab in LABELS]


def calibration_table(probs: np.ndarray, labels, outlets) -> pd.DataFrame:
    """Per (outlet, true label): n and the sums of out-of-fold probabilities and argmax indicators."""
    df = pd.DataFrame(probs, columns=POST)
    df[PRED] = (probs.argmax(1)[:, None] == np.arange(len(LABELS))[None, :]).astype(float)
    df["outlet"], df["label"], df["n"] = np.asarray(outlets), np.asarray(labels), 1
    return df.groupby(["outlet", "label"], as_index=False, sort=True)[["n", *POST, *PRED]].sum()


def read_calibration(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"scoring.classifier.calibration: no calibration table at {path} "
            f"(`biasamp classifier eval` writes one for any classifier)"
        )
    cal = pd.read_parquet(path)
    missing = sorted({"outlet", "label", "n", *POST, *PRED} - set(cal.columns))
    if missing or set(cal["label"]) != set(LABELS):
        raise ValueError(f"{path}: not a calibration table (missing columns {missing} or a label without outlets)")
    return cal


def confusion_draws(
    cal: pd.DataFrame, method: str, n_boot: int, rng, corpus: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """M (3 x 3, columns: true label) from all outlets, and n_boot draws of it with the outlets of each
    label resampled (how well M is known). `corpus` (articles per label of the corpus being
    estimated) adds to each draw the corpus's own shift: that of a corpus of this many articles
    drawn, in proportion to outlet size, from a new set of outlets like the calibration's.
    cc, pcc: the identity (no correction)."""
    if method in UNCORRECTED:
        eye = np.eye(len(LABELS))
        return eye, np.broadcast_to(eye, (n_boot, *eye.shape))
    cols = POST if method == "pacc" else PRED
    point, draws = np.empty((3, 3)), np.empty((n_boot, 3, 3))
    for i, lab in enumerate(LABELS):
        part = cal[cal["label"] == lab]
        sums, n = part[cols].to_numpy(float), part["n"].to_numpy(float)
        point[:, i] = sums.sum(0) / n.sum()
        pick = rng.integers(0, len(part), size=(n_boot, len(part)))
        draws[:, :, i] = sums[pick].sum(1) / n[pick].sum(1)[:, None]
        if corpus is not None:
            new = rng.integers(0, len(part), size=(n_boot, len(part)))
            articles = rng.multinomial(max(int(round(corpus[i])), 1), n[new] / n[new].sum(1, keepdims=True))
            shifted = np.einsum("bo,boc->bc", articles, (sums / n[:, None])[new]) / articles.sum(1)[:, None]
            draws[:, :, i] += shifted - point[:, i]
    return point, draws


def adjust(observed: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Shares p >= 0, sum 1, with M @ p closest to the observed mean output (least squares; the
    sum-to-one row weighted heavily so that it holds)."""
    w = 1e3
    p, _ = nnls(np.vstack([m, w * np.ones(m.shape[1])]), np.append(observed, w))
    return p / p.sum()


def reading_values(probs: np.ndarray) -> np.ndarray:
    """Per article, the values whose means are READINGS: one-hot argmax label, p_right - p_left.
    Rows with a NaN (not scored) stay NaN."""
    probs = np.asarray(probs, float)
    onehot = (probs.argmax(1)[:, None] == np.arange(len(LABELS))[None, :]).astype(float)
    values = np.column_stack([onehot, probs[:, LABELS.index("right")] - probs[:, LABELS.index("left")]])
    return np.where(np.isnan(probs).any(1, keepdims=True), np.nan, values)


def article_values(probs: np.ndarray, method: str) -> np.ndarray:
    """What is averaged over a corpus: probabilities (pcc, pacc) or argmax one-hot (cc, acc)."""
    if method in ("pcc", "pacc"):
        return np.asarray(probs, float)
    return (probs.argmax(1)[:, None] == np.arange(probs.shape[1])[None, :]).astype(float)


def estimate(
    mean_values: np.ndarray, boot_values: np.ndarray, cal: pd.DataFrame | None, method: str, rng, n_articles: int
):
    """Point shares and 95% percentile bounds (each (3,)) of a corpus of n_articles from its mean
    article values and their bootstrap draws (n_boot, 3); NaN without a calibration table (unless
    uncorrected)."""
    if cal is None and method not in UNCORRECTED:
        nan = np.full(len(LABELS), np.nan)
        return nan, nan, nan
    point = adjust(mean_values, confusion_draws(cal, method, 0, rng)[0])
    _, draws_m = confusion_draws(cal, method, len(boot_values), rng, corpus=n_articles * point)
    boot = np.array([adjust(v, m) for v, m in zip(boot_values, draws_m) if np.isfinite(v).all()])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return point, lo, hi
