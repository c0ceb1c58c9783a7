"""Does a leaning instrument read text degradation as a leaning? (`biasamp classifier check`)

The same labelled articles are read intact and after each change in degrade.DEGRADATIONS, none of
which carries a leaning. For every reading the summaries report (prevalence.READINGS: argmax label
shares and the lean index mean p_right - mean p_left; the prevalence method's shares) it gives the
reading and its shift from intact, with a paired bootstrap 95% CI over articles, and macro-F1 on
the intact articles. An instrument fit for a collapse study moves by little under every change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from biasamp.config import LABELS
from biasamp.instruments import prevalence
from biasamp.instruments.degrade import DEGRADATIONS, degrade
from biasamp.text import classifier_text

TOLERANCE = 0.05  # the largest shift of a reading counted as "does not move"
MIN_WORDS = 200  # default articles: long enough that every degradation changes them


def unseen_articles(data: pd.DataFrame, seen_outlets, per_label: int, seed: int = 0) -> pd.DataFrame:
    """Up to per_label articles of each label from outlets not in `seen_outlets`, each with more
    than MIN_WORDS words, a seeded draw."""
    df = data[~data["outlet"].isin(set(seen_outlets)) & (data["text"].str.split().str.len() > MIN_WORDS)]
    df = df.drop_duplicates("article_id").sample(frac=1.0, random_state=seed)
    return df.groupby("source_label").head(per_label).sort_values("article_id").reset_index(drop=True)


def readings(clf, articles: pd.DataFrame, batch_size: int = 16, read: str = "body") -> dict[str, np.ndarray]:
    """Condition ('intact', then each degradation) -> the classifier's probabilities (n, 3) of every
    article, in LABELS order, read as a study reads (text.classifier_text: with "title_body" the title
    is kept, as a study's generated articles keep the real title)."""
    from biasamp.instruments.hf import leaning

    conditions = {"intact": list(articles["text"])}
    for name in DEGRADATIONS:
        conditions[name] = [degrade(body, name, seed=i) for i, body in enumerate(articles["text"])]
    return {
        name: leaning(clf, [classifier_text(t, b, read) for t, b in zip(articles["title"], bodies)], batch_size)[
            [f"p_{lab}" for lab in LABELS]
        ].to_numpy()
        for name, bodies in conditions.items()
    }


def shift_table(
    probs: dict[str, np.ndarray],
    method: str = "pcc",
    calibration=None,
    n_boot: int = 1000,
    seed: int = 0,
    labels=None,
) -> pd.DataFrame:
    """One row per (articles, condition, reading): its value, its shift from intact with a paired
    bootstrap 95% CI (the same article draws for both), and whether |shift| <= TOLERANCE. Articles:
    "all", and with `labels` (each article's true label) also the articles of each label, whose shifts
    a balanced corpus averages away. The prevalence method's shares (prev_*) are read too where the
    method can be computed (pcc and cc always)."""
    groups = {"all": np.arange(len(probs["intact"]))}
    if labels is not None:
        labels = np.asarray(labels)
        groups |= {lab: np.flatnonzero(labels == lab) for lab in LABELS if (labels == lab).any()}
    parts = [
        _shifts({c: p[idx] for c, p in probs.items()}, method, calibration, n_boot, seed).assign(articles=name)
        for name, idx in groups.items()
    ]
    table = pd.concat(parts, ignore_index=True)
    return table[["articles", *(c for c in table.columns if c != "articles")]]


def _shifts(probs: dict[str, np.ndarray], method: str, calibration, n_boot: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(next(iter(probs.values())))
    draws = rng.integers(0, n, size=(n_boot, n))
    intact = probs["intact"]
    has_prev = calibration is not None or method in prevalence.UNCORRECTED

    m = prevalence.confusion_draws(calibration, method, 0, rng)[0] if has_prev else None

    def values(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point readings and their bootstrap draws: READINGS, then prev_* (the confusion held fixed:
        the shift is the instrument's, not the calibration's uncertainty)."""
        v = prevalence.reading_values(p)
        point, boot = v.mean(0), v[draws].mean(1)
        if has_prev:
            pv = prevalence.article_values(p, method)
            point = np.append(point, prevalence.adjust(pv.mean(0), m))
            boot = np.column_stack([boot, [prevalence.adjust(x, m) for x in pv[draws].mean(1)]])
        return point, boot

    names = prevalence.READINGS + ([f"prev_{lab}" for lab in LABELS] if has_prev else [])
    base_point, base_boot = values(intact)
    rows = []
    for condition, p in probs.items():
        point, boot = values(p)
        diff = boot - base_boot
        lo, hi = np.percentile(diff, [2.5, 97.5], axis=0)
        for k, reading in enumerate(names):
            shift = point[k] - base_point[k]
            rows.append(
                {
                    "condition": condition,
                    "reading": reading,
                    "value": point[k],
                    "shift": shift,
                    "shift_lo": lo[k],
                    "shift_hi": hi[k],
                    "within_tolerance": bool(abs(shift) <= TOLERANCE),
                }
            )
    return pd.DataFrame(rows)


def macro_f1(probs: np.ndarray, labels) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(labels), np.asarray(LABELS)[probs.argmax(1)], labels=LABELS, average="macro"))


def render(table: pd.DataFrame, f1: float, n: dict[str, int], instrument: str) -> str:
    """The check as a Markdown table: one row per condition, per reading its value and shift [CI]
    over all articles; then, where the table has them, each condition's largest shift within the
    articles of each true label."""
    by_label = table[table["articles"] != "all"]
    table = table[table["articles"] == "all"]
    readings = list(dict.fromkeys(table["reading"]))
    lines = [
        f"{instrument}: {sum(n.values())} articles ({', '.join(f'{k} {v}' for k, v in n.items())}), "
        f"macro-F1 on the intact articles {f1:.3f}",
        "",
        "| condition | " + " | ".join(readings) + " | max abs shift |",
        "|---|" + "---|" * (len(readings) + 1),
    ]
    for condition, part in table.groupby("condition", sort=False):
        part = part.set_index("reading")
        cells = [
            f"{part.loc[r, 'value']:.3f}"
            if condition == "intact"
            else f"{part.loc[r, 'value']:.3f} ({part.loc[r, 'shift']:+.3f} [{part.loc[r, 'shift_lo']:+.3f}, "
            f"{part.loc[r, 'shift_hi']:+.3f}])"
            for r in readings
        ]
        worst = "" if condition == "intact" else f"{part['shift'].abs().max():.3f}"
        lines.append(f"| {condition} | " + " | ".join(cells) + f" | {worst} |")
    worst = table["shift"].abs().max()
    lines += [
        "",
        f"largest shift {worst:.3f}: "
        + ("every reading within" if worst <= TOLERANCE else "NOT within")
        + f" {TOLERANCE} under every degradation",
    ]
    if by_label.empty:
        return "\n".join(lines)
    labels = list(dict.fromkeys(by_label["articles"]))
    lines += [
        "",
        "Within the articles of each true label: the largest shift of any reading (which one)",
        "",
        "| condition | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for condition, part in by_label[by_label["condition"] != "intact"].groupby("condition", sort=False):
        cells = []
        for lab in labels:
            one = part[part["articles"] == lab]
            row = one.loc[one["shift"].abs().idxmax()]
            cells.append(f"{row['shift']:+.3f} ({row['reading']})")
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    worst_label = by_label["shift"].abs().max()
    lines += [
        "",
        f"largest shift within a label {worst_label:.3f}: "
        + ("within" if worst_label <= TOLERANCE else "NOT within")
        + f" {TOLERANCE}",
    ]
    return "\n".join(lines)
