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

import math
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


# --- the reading calibrated to the corpus's own decay -------------------------------------------
# A generated article continues a real, labelled one; the degradation null is that real article cut
# and looped to the generated one's length and repetition. Per article, CALIBRATION_VALUES are its
# probabilities, the null's probabilities placed in the column block of the real article's label, and
# that label one-hot. Their means over a corpus (or a bootstrap draw of it) give the corpus's mean
# output and M, column i the mean output on real articles of label i degraded as this corpus is:
# adjust() then gives the share of the corpus that reads as left / center / right articles degraded
# the same way do (pacc with a confusion matched to each generation's decay, docs/measuring.md).
CALIBRATED = [f"{r}_calibrated" for r in READINGS]
N_CALIBRATION_VALUES = 3 + 9 + 3


def calibration_values(probs: np.ndarray, null_probs: np.ndarray, labels) -> np.ndarray:
    """(n, 15) per article: p (3), null p by the real article's label (3 x 3, label-major), label one-hot
    (3). The p block is NaN where p is, the other two where the null or the label is missing (imported
    numbers have neither): an article can be read, a calibration article, or both (as in a study)."""
    probs, null_probs = np.asarray(probs, float), np.asarray(null_probs, float)
    onehot = (np.asarray(labels, dtype=object)[:, None] == np.array(LABELS, dtype=object)[None, :]).astype(float)
    calibration = np.column_stack([(onehot[:, :, None] * null_probs[:, None, :]).reshape(len(probs), 9), onehot])
    calibration[np.isnan(null_probs).any(1) | (onehot.sum(1) == 0)] = np.nan
    return np.column_stack([np.where(np.isnan(probs).any(1, keepdims=True), np.nan, probs), calibration])


def calibrated_readings(means: np.ndarray) -> np.ndarray:
    """CALIBRATED (..., 4) from means of calibration_values (..., 15): the label shares and
    share_right - share_left. NaN where a label has no calibration article in the draw."""
    means = np.asarray(means, float)
    flat = means.reshape(-1, N_CALIBRATION_VALUES)
    out = np.full((len(flat), len(CALIBRATED)), np.nan)
    for row, v in enumerate(flat):
        observed, sums, n = v[:3], v[3:12].reshape(3, 3), v[12:]
        if not (np.isfinite(v).all() and (n > 0).all()):
            continue
        shares = adjust(observed, (sums / n[:, None]).T)  # M's column i: label i's mean null output
        out[row] = [*shares, shares[LABELS.index("right")] - shares[LABELS.index("left")]]
    return out.reshape(*means.shape[:-1], len(CALIBRATED))


# --- power: the smallest change a study can see ---------------------------------------------------
Z_POWER = 1.959964 + 0.841621  # two-sided alpha 0.05 and power 0.8, normal approximation
PAPER_CHANGE = 0.14  # the paper's headline change of right share (53.7% -> 67.6% by G6)


def detectable_change(sd: float, at: int, articles: int, seeds: int) -> float:
    """The smallest change of a reading detected at 80% power, from the spread `sd` of its estimate
    at `at` articles (one seed): the spread shrinks as 1 / sqrt(articles x seeds). Run-to-run
    variation between seeds is not in `sd`: with several seeds this is a lower bound."""
    return Z_POWER * sd * math.sqrt(at / (articles * seeds))


def articles_needed(sd: float, at: int, change: float, seeds: int) -> int:
    """Articles per generation for detectable_change(...) <= change."""
    return math.ceil(at * (Z_POWER * sd / change) ** 2 / seeds)
