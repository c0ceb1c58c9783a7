"""How often the neuron tests flag neurons when nothing is there, and how often they find a planted one.

Null studies: every neuron value and the target are independent random walks, one per
(arm, seed) trajectory. Planted: the target's steps are 0.5 x one neuron's steps plus unit noise.
For each study size, both modes of `biasamp analyze` and, beside them, the rule `within` mode used
before (Newey-West errors with normal p-values), all on the same draws:

- p<.05: share of null neurons with p < 0.05 (a calibrated test: 0.05)
- flagged: share of null neurons `significant` (within: BH q < 0.05; paper: raw p < 0.05, as the authors count)
- power: share of planted neurons with p < 0.05

    python bench/null_calibration.py [--neurons 2000] [--studies 10]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from biasamp.stages.analyze import design, fit, regress

SIZES = [(2, 1, 3), (2, 2, 5), (2, 3, 5), (2, 3, 11), (6, 3, 11)]  # arms x seeds x generations


def study(arms: int, seeds: int, gens: int, n_neurons: int, rng, effect: float = 0.0):
    versions = pd.DataFrame(
        [
            {"study": "n", "arm": f"a{a}", "seed": s, "generation": g}
            for a in range(arms)
            for s in range(seeds)
            for g in range(gens)
        ]
    )
    dx = rng.normal(size=(len(versions), n_neurons))
    dy = rng.normal(size=(len(versions), n_neurons)) + effect * dx if effect else rng.normal(size=(len(versions), 1))
    traj = np.repeat(np.arange(arms * seeds), gens)
    X, Y = np.empty_like(dx), np.empty_like(dy)
    for t in range(arms * seeds):  # random walks inside each trajectory
        X[traj == t], Y[traj == t] = dx[traj == t].cumsum(axis=0), dy[traj == t].cumsum(axis=0)
    return versions, X, Y


def rates(versions, X, Y, rule: str) -> tuple[float, float]:
    mode = "paper" if rule == "paper" else "within"
    if Y.shape[1] == 1:  # null: one target, every neuron
        Xd, yd, groups = design(versions, X, Y[:, 0], mode)
        p = (
            regress(Xd, yd, groups, 1, correction=True)["p"]
            if rule == "within, before"
            else fit(Xd, yd, groups, mode, maxlags=1)["p"]
        )
        flagged = p < 0.05 if rule == "paper" else multipletests(p, method="fdr_bh")[0]
        return float(np.mean(p < 0.05)), float(np.mean(flagged))
    hits = []  # planted: target j driven by neuron j
    for j in range(min(Y.shape[1], 200)):
        Xd, yd, groups = design(versions, X[:, [j]], Y[:, j], mode)
        p = (
            regress(Xd, yd, groups, 1, correction=True)["p"]
            if rule == "within, before"
            else fit(Xd, yd, groups, mode, maxlags=1)["p"]
        )
        hits.append(p[0] < 0.05)
    return float(np.mean(hits)), float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--neurons", type=int, default=2000)
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rules = ["within", "within, before", "paper"]
    print(
        f"{args.studies} null studies of {args.neurons} neurons per size (independent random walks); "
        f"power: target steps = 0.5 x neuron steps + N(0, 1)\n"
    )
    print("| arms x seeds x gens | differences | rule | p<.05 (null) | flagged (null) | power (planted) |")
    print("|---|---|---|---|---|---|")
    for arms, seeds, gens in SIZES:
        null = {r: [] for r in rules}
        power = {r: [] for r in rules}
        for _ in range(args.studies):
            v, X, Y = study(arms, seeds, gens, args.neurons, rng)
            for r in rules:
                null[r].append(rates(v, X, Y, r))
        v, X, Y = study(arms, seeds, gens, 200, rng, effect=0.5)
        for r in rules:
            power[r] = rates(v, X, Y, r)[0]
        for r in rules:
            p05, flagged = np.mean(null[r], axis=0)
            label = {
                "within": "within (default)",
                "within, before": "within, before: HAC + normal p",
                "paper": "paper (authors'): levels, HAC(1), raw p",
            }[r]
            print(
                f"| {arms} x {seeds} x {gens} | {arms * seeds * (gens - 1)} | {label} | {p05:.3f} | "
                f"{flagged:.1%} | {power[r]:.2f} |"
            )


if __name__ == "__main__":
    main()
