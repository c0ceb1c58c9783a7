"""Neuron statistics: `biasamp analyze`'s vectorised regressions vs the statsmodels loop they
reproduce (hac-panel and conventional OLS per neuron, the larger SE, t(n-2) p-values), on
random-walk neuron values for 6 arms x 11 generations (66 model versions, first-differenced within
trajectories), 9,216 neurons (GPT-2's FFN outputs), the default test (within, maxlags 1). The check
is the largest p-value difference. Run by `python -m bench stats`.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import t as student_t

from biasamp.stages.analyze import design, fit

NEURONS = 9216


def data(n_neurons: int, rng):
    versions = pd.DataFrame(
        [{"study": "b", "arm": f"arm{a}", "seed": 0, "generation": g} for a in range(6) for g in range(11)]
    )
    X = rng.normal(size=(66, n_neurons)).astype(np.float64)
    for a in range(6):
        X[a * 11 : (a + 1) * 11] = X[a * 11 : (a + 1) * 11].cumsum(axis=0)
    y = rng.normal(size=66)
    return design(versions, X, y, "within")


def statsmodels_loop(Xd, yd, groups) -> np.ndarray:
    p = np.empty(Xd.shape[1])
    for j in range(Xd.shape[1]):
        exog = sm.add_constant(Xd[:, j])
        hac = sm.OLS(yd, exog).fit(cov_type="hac-panel", cov_kwds={"groups": groups, "maxlags": 1})
        se = max(hac.bse[1], sm.OLS(yd, exog).fit().bse[1])
        p[j] = 2 * student_t.sf(abs(hac.params[1] / se), len(yd) - 2)
    return p


def measure(repeats: int) -> list[dict]:
    Xd, yd, groups = data(NEURONS, np.random.default_rng(0))
    ours_s, base_s = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours = fit(Xd, yd, groups, "within", maxlags=1)
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        p_ref = statsmodels_loop(Xd, yd, groups)
        base_s.append(time.perf_counter() - t)
    return [
        {
            "figure": f"neuron regressions, {NEURONS} neurons x 66 versions",
            "unit": "s",
            "ours": "vectorised (numpy)",
            "baseline": "statsmodels loop, one OLS pair per neuron",
            "ours_s": ours_s,
            "baseline_s": base_s,
            "check": f"max |p - p_statsmodels| {np.max(np.abs(ours['p'] - p_ref)):.0e}",
        }
    ]
