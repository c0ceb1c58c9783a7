"""How much does each leaning reading move when a corpus's true right share moves? The slope of each
reading on the true right share, over corpora of known mix, for the shipped offline classifier.

Corpora of --articles real articles (over MIN_WORDS words), the true right share on a grid from 0.2 to
0.8 and the rest split evenly between left and center, --corpora per grid point, drawn from:
- outlets the classifier never saw (the outlets `classifier train` holds out for `classifier check`);
- articles it never saw of outlets it trained on (what a fine-tuned generator imitates);
- the same, each body cut to its first 50 words (shorter text carries less evidence).
Per corpus, the readings a study reports: the argmax right share, the mean p_right (pcc), the lean
index (mean p_right - mean p_left), and the right share calibrated as a study calibrates it
(prevalence.calibrated_readings): the confusion measured on --reference other labelled articles of the
same pool, changed the same way (in a study: the prompts' real articles cut and looped like the
generated text, the degradation null). A slope of 1 reads a change at its size; the raw readings'
slopes are the share of a true change they show. The slope's 95% CI resamples corpora.

    python bench/leaning_slope.py [--articles 300] [--corpora 20] [--reference 100] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from biasamp.config import LABELS
from biasamp.instruments import leaning, prevalence
from biasamp.text import classifier_text

ROOT = Path(__file__).parents[1]
ABP = ROOT.parent / "shared" / "data" / "article-bias-prediction"
MIN_WORDS = 120  # as bench/leaning_calibration.py: long enough that 50 words is a cut

GRID = (0.2, 0.35, 0.5, 0.65, 0.8)
CHANGES = {"intact": lambda body: body, "first 50 words": lambda body: " ".join(body.split()[:50])}
ROWS = (  # (row name, pool, change of every body)
    ("outlets the classifier never saw", "held-out outlets", "intact"),
    ("unseen articles of its training outlets", "training outlets", "intact"),
    ("the same, first 50 words only", "training outlets", "first 50 words"),
)
READINGS = ("argmax right share", "mean p_right (pcc)", "lean index", "right share, calibrated")


def corpus_readings(probs: np.ndarray, reference: np.ndarray, reference_labels) -> np.ndarray:
    """The READINGS of one corpus (its probabilities) calibrated on the reference articles."""
    raw = prevalence.reading_values(probs).mean(0)  # share_left/center/right, lean_index
    nan = np.full_like(reference, np.nan)
    values = np.vstack(
        [
            prevalence.calibration_values(probs, np.full_like(probs, np.nan), [""] * len(probs)),
            prevalence.calibration_values(nan, reference, reference_labels),
        ]
    )
    calibrated = prevalence.calibrated_readings(np.nanmean(values, axis=0))
    right, lean = LABELS.index("right"), prevalence.READINGS.index("lean_index")
    return np.array([raw[right], probs[:, right].mean(), raw[lean], calibrated[right]])


def slopes(probs: np.ndarray, labels: np.ndarray, args, rng) -> tuple[np.ndarray, np.ndarray]:
    """Per reading, the slope on the true right share and its 95% CI (corpora resampled)."""
    truth, found = [], []
    for share in GRID:
        counts = {"right": round(share * args.articles)}
        counts["left"] = (args.articles - counts["right"]) // 2
        counts["center"] = args.articles - counts["right"] - counts["left"]
        for _ in range(args.corpora):
            # reference and corpus disjoint: the calibration never reads the articles it corrects
            pick = {lab: rng.permutation(np.flatnonzero(labels == lab)) for lab in LABELS}
            ref = np.concatenate([pick[lab][: args.reference] for lab in LABELS])
            corpus = np.concatenate([pick[lab][args.reference : args.reference + counts[lab]] for lab in LABELS])
            truth.append(counts["right"] / args.articles)
            found.append(corpus_readings(probs[corpus], probs[ref], labels[ref]))
    truth, found = np.array(truth), np.array(found)
    point = np.polyfit(truth, found, 1)[0]
    draws = [rng.integers(0, len(truth), len(truth)) for _ in range(500)]
    boot = np.array([np.polyfit(truth[d], found[d], 1)[0] for d in draws])
    return point, np.percentile(boot, [2.5, 97.5], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--articles", type=int, default=300, help="articles per corpus")
    ap.add_argument("--corpora", type=int, default=20, help="corpora per true right share")
    ap.add_argument("--reference", type=int, default=100, help="calibration articles per label")
    ap.add_argument("--read", choices=["body", "title_body"], default="body", help="scoring.classifier.read")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = leaning.LeaningModel.load("bundled")
    exclude = leaning.study_article_ids([ROOT / "configs" / "paper.yaml"])  # as `classifier train`'s default
    pools = leaning.unseen_pools(ABP, exclude, model, MIN_WORDS)
    rng = np.random.default_rng(args.seed)
    print(
        f"shipped classifier, reading {args.read}; corpora of {args.articles} articles, true right share "
        f"{GRID[0]}-{GRID[-1]}, {args.corpora} per share; calibration on {args.reference} other articles per label "
        "changed the same way; slope of each reading on the true right share [95% CI]"
    )
    print(f"| articles | {' | '.join(READINGS)} |")
    print(f"|---|{'---|' * len(READINGS)}")
    for row, pool, change in ROWS:
        part = pools[pool]
        texts = [classifier_text(t, CHANGES[change](b), args.read) for t, b in zip(part["title"], part["text"])]
        point, (lo, hi) = slopes(model.probabilities(texts), part["source_label"].to_numpy(), args, rng)
        cells = " | ".join(f"{p:.2f} [{a:.2f}, {b:.2f}]" for p, a, b in zip(point, lo, hi))
        print(f"| {row} ({part['outlet'].nunique()} outlets, {len(part):,} articles) | {cells} |", flush=True)


if __name__ == "__main__":
    main()
