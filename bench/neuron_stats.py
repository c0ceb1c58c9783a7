"""Vectorised neuron regressions vs a statsmodels loop, and the time at 1M neurons.

Random-walk neuron values for 6 arms x 11 generations (66 model versions), first-differenced
within trajectories, `biasamp analyze`'s default test (`fit`, within mode, maxlags 1) against the
statsmodels loop it reproduces (hac-panel and conventional OLS, the larger SE, t(n-2) p-values). Prints both timings and the ratio at
9,216 neurons (GPT-2's FFN outputs), then the vectorised time and peak memory at 1M neurons.

    python bench/neuron_stats.py [--loop-neurons 9216] [--big 1000000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import t as student_t

from biasamp.stages.analyze import design, fit


def data(n_neurons: int, rng):
    versions = pd.DataFrame([{"study": "b", "arm": f"arm{a}", "seed": 0, "generation": g}
                             for a in range(6) for g in range(11)])
    X = rng.normal(size=(66, n_neurons)).astype(np.float64)
    for a in range(6):
        X[a * 11:(a + 1) * 11] = X[a * 11:(a + 1) * 11].cumsum(axis=0)
    y = rng.normal(size=66)
    return design(versions, X, y, "within")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop-neurons", type=int, default=9216)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=1 << 17)
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    Xd, yd, groups = data(args.loop_neurons, rng)
    t = time.perf_counter()
    ours = fit(Xd, yd, groups, "within", maxlags=1)
    t_vec = time.perf_counter() - t
    t = time.perf_counter()
    p_ref = np.empty(Xd.shape[1])
    for j in range(Xd.shape[1]):
        exog = sm.add_constant(Xd[:, j])
        hac = sm.OLS(yd, exog).fit(cov_type="hac-panel", cov_kwds={"groups": groups, "maxlags": 1})
        se = max(hac.bse[1], sm.OLS(yd, exog).fit().bse[1])
        p_ref[j] = 2 * student_t.sf(abs(hac.params[1] / se), len(yd) - 2)
    t_loop = time.perf_counter() - t
    print(f"{args.loop_neurons} neurons x 66 versions ({len(yd)} differences):")
    print(f"  statsmodels loop : {t_loop:9.3f} s")
    print(f"  vectorised       : {t_vec:9.3f} s")
    print(f"  ratio            : {t_loop / t_vec:9.0f}x   (max |p - p_ref| = {np.max(np.abs(ours['p'] - p_ref)):.1e})")

    Xd, yd, groups = data(args.big, rng)
    t = time.perf_counter()
    for start in range(0, Xd.shape[1], args.chunk):
        fit(Xd[:, start:start + args.chunk], yd, groups, "within", maxlags=1)
    t_big = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.big} neurons x 66 versions: {t_big:.2f} s in chunks of {args.chunk} "
          f"(peak RSS {peak:.0f} MiB, of which the input differences are {Xd.nbytes / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
