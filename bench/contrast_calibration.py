"""How often `biasamp analyze`'s arm contrasts and trends call a difference when there is none.

Two arms drawn from one distribution (label shares 30/30/40, a classifier's noisy probabilities,
tqi, ppl; no degradation null, so no calibrated targets), 150 articles per (seed,
generation), 3 generations, seeds shifted by N(0, sd) to add run-to-run variation; 60 studies per
row. A calibrated test has p < 0.05 in 5% of contrasts and CIs that cover 0 in 95%.

    python bench/contrast_calibration.py [--studies 60]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from biasamp.config import LABELS
from biasamp.stages.analyze import arm_contrasts


def scores(rng, seeds, n_art=150, gens=3, seed_sd=0.0):
    rows = []
    for arm in ("a", "b"):
        for s in seeds:
            shift = rng.normal(scale=seed_sd)
            for g in range(gens):
                p_right = float(np.clip(0.4 + shift, 0, 1))
                lab = rng.choice(
                    ["left", "center", "right"], size=n_art, p=[(1 - p_right) / 2, (1 - p_right) / 2, p_right]
                )
                # The classifier's output: a noisy reading that leans to the article's label.
                probs = rng.dirichlet([1.0, 1.0, 1.0], n_art) + 1.5 * (lab[:, None] == np.array(LABELS)[None, :])
                probs /= probs.sum(1, keepdims=True)
                rows.append(
                    pd.DataFrame(
                        {
                            "study": "s",
                            "arm": arm,
                            "seed": s,
                            "generation": g,
                            "article_id": np.arange(n_art).astype(str),
                            "label": lab,
                            **{f"p_{lab}": probs[:, i] for i, lab in enumerate(LABELS)},
                            "tqi": rng.normal(2 + shift, 0.5, n_art),
                            "ppl": rng.lognormal(3, 1, n_art),
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=60)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| seeds per arm | seed sd | contrasts p<.05 | CIs cover 0 | trends p<.05 |")
    print("|---|---|---|---|---|")
    for seeds, sd in [((0,), 0.0), ((0, 1, 2), 0.05), ((0, 1, 2, 3, 4), 0.05)]:
        rej, cov, trend = [], [], []
        for rep in range(args.studies):
            c, t = arm_contrasts(scores(rng, seeds, seed_sd=sd), "a", n_boot=400, seed=rep)
            c, t = c.dropna(subset=["estimate"]), t.dropna(subset=["estimate"])  # targets with no data here
            rej += list(c["p"] < 0.05)
            cov += list((c["lo"] <= 0) & (c["hi"] >= 0))
            trend += list(t["p"] < 0.05)
        print(f"| {len(seeds)} | {sd} | {np.mean(rej):.3f} | {np.mean(cov):.3f} | {np.mean(trend):.3f} |")


if __name__ == "__main__":
    main()
