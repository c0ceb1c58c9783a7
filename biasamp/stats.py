"""Which neurons move with bias (or quality): per-neuron OLS with Newey-West (HAC) errors.

One regression per neuron, y = a + b x, vectorised over all neurons at once. statsmodels is the
reference (tests/test_stats.py checks every column against it to 1e-8):

- mode "within" (default): first differences of target and neuron value between consecutive
  generations of one (arm, seed) trajectory, never across trajectories, pooled;
  `OLS(dy, [1, dx]).fit(cov_type="hac-panel", cov_kwds={"groups": trajectory, "maxlags": L})`
  (Bartlett kernel, lag products only within a trajectory, small-sample factor n/(n-2)).
- mode "paper": the authors' released procedure: levels, every version pooled in one sequence,
  `OLS(y, [1, x]).fit(cov_type="HAC", cov_kwds={"maxlags": 1})`.

p-values are two-sided normal, as statsmodels reports them for these covariance types.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtr
from statsmodels.stats.multitest import multipletests

Mode = Literal["within", "paper"]
VERSION = ["study", "arm", "seed", "generation"]
TEST_COLUMNS = ["target", "kind", "stat", "layer", "neuron", "beta", "se", "t", "p", "q", "r", "significant"]


def regress(X: np.ndarray, y: np.ndarray, groups: np.ndarray, maxlags: int, correction: bool) -> dict[str, np.ndarray]:
    """OLS of y on [1, X[:, j]] for every column j, with Bartlett-kernel HAC standard errors.

    X: (n, J); y: (n,); groups: (n,), observations of a group contiguous and in time order:
    lag products are summed only between observations of the same group.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    xm = X - X.mean(axis=0)
    ym = y - y.mean()
    sxx = np.einsum("ij,ij->j", xm, xm)
    sxy = xm.T @ ym
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = sxy / sxx
        # For a slope, the sandwich reduces to sum-of-scores over (sum x_c^2)^2 with
        # scores v_t = (x_t - mean x) * residual_t.
        v = xm * (ym[:, None] - xm * beta)
        s = np.einsum("ij,ij->j", v, v)
        for lag in range(1, maxlags + 1):
            same = groups[lag:] == groups[:-lag]
            w = 1.0 - lag / (maxlags + 1.0)
            s += 2.0 * w * np.einsum("ij,ij->j", v[lag:][same], v[:-lag][same])
        var = s / sxx**2
        if correction:
            var *= n / (n - 2.0)
        se = np.sqrt(var)
        t = beta / se
        r = sxy / np.sqrt(sxx * (ym @ ym))
    p = 2.0 * ndtr(-np.abs(t))
    return {"beta": beta, "se": se, "t": t, "p": p, "r": r}


def design(versions: pd.DataFrame, X: np.ndarray, y: np.ndarray, mode: Mode):
    """Rows to regress, from one row per model version (columns VERSION) in any order.

    within: first differences between generations g-1 and g of the same trajectory.
    paper: the levels, in (study, arm, seed, generation) order, as one sequence.
    """
    order = np.lexsort([versions[c].to_numpy() for c in reversed(VERSION)])
    v = versions.iloc[order].reset_index(drop=True)
    X, y = X[order], y[order]
    traj = v.groupby(VERSION[:3], sort=False).ngroup().to_numpy()
    if mode == "paper":
        return X, y, np.zeros(len(y), dtype=int)
    gen = v["generation"].to_numpy()
    step = (traj[1:] == traj[:-1]) & (gen[1:] == gen[:-1] + 1)
    return (X[1:] - X[:-1])[step], (y[1:] - y[:-1])[step], traj[1:][step]


def neuron_tests(
    neurons: pd.DataFrame,
    summary: pd.DataFrame,
    targets: list[str],
    mode: Mode = "within",
    maxlags: int = 1,
    alpha: float = 0.05,
    chunk: int = 1 << 17,
) -> pd.DataFrame:
    """The table `neuron_tests` from long-format `neurons` and per-version `summary` tables.

    Significant: Benjamini-Hochberg q < alpha across the neurons of one (target, kind, stat);
    in paper mode, as the authors count, raw p < alpha.
    """
    for col in targets:
        if col not in summary.columns:
            raise ValueError(f"summary has no column '{col}' (has: {', '.join(summary.columns)})")
    out = []
    for (kind, stat), part in neurons.groupby(["kind", "stat"], sort=True):
        versions, keys, X = _matrix(part)
        merged = versions.merge(summary[VERSION + list(targets)], on=VERSION, how="left")
        for target in targets:
            y = merged[target].to_numpy(dtype=np.float64)
            keep = ~np.isnan(y)
            Xd, yd, groups = design(versions[keep].reset_index(drop=True), X[keep], y[keep], mode)
            if len(yd) < 3:
                raise ValueError(f"target {target}: {len(yd)} observations after differencing; need at least 3")
            res = {k: np.empty(X.shape[1]) for k in ("beta", "se", "t", "p", "r")}
            for start in range(0, X.shape[1], chunk):  # bounded memory at any model size
                block = regress(Xd[:, start : start + chunk], yd, groups, maxlags, correction=(mode == "within"))
                for k in res:
                    res[k][start : start + chunk] = block[k]
            q = np.full_like(res["p"], np.nan)
            ok = ~np.isnan(res["p"])
            if ok.any():
                q[ok] = multipletests(res["p"][ok], method="fdr_bh")[1]
            crit = res["p"] if mode == "paper" else q
            table = pd.DataFrame({"target": target, "kind": kind, "stat": stat, **keys, **res, "q": q})
            table["significant"] = np.nan_to_num(crit, nan=1.0) < alpha
            out.append(table[TEST_COLUMNS])
    return pd.concat(out, ignore_index=True)


def _matrix(part: pd.DataFrame):
    """Long rows of one (kind, stat) -> versions table, neuron keys, (n_versions, n_neurons) array."""
    part = part.sort_values(VERSION + ["layer", "neuron"])
    versions = part[VERSION].drop_duplicates().reset_index(drop=True)
    n_v = len(versions)
    if len(part) % n_v:
        raise ValueError("neurons table: versions do not all have the same neurons")
    n_n = len(part) // n_v
    layer = part["layer"].to_numpy().reshape(n_v, n_n)
    neuron = part["neuron"].to_numpy().reshape(n_v, n_n)
    if not ((layer == layer[0]).all() and (neuron == neuron[0]).all()):
        raise ValueError("neurons table: versions do not all have the same neurons")
    X = part["value"].to_numpy(dtype=np.float64).reshape(n_v, n_n)
    return versions, {"layer": layer[0], "neuron": neuron[0]}, X


def overlap_summary(tests: pd.DataFrame) -> dict:
    """Counts of significant neurons per (kind, stat, target) and the overlap between targets."""
    out = {}
    for (kind, stat), part in tests.groupby(["kind", "stat"]):
        sig = {t: set(zip(g.loc[g["significant"], "layer"], g.loc[g["significant"], "neuron"]))
               for t, g in part.groupby("target")}
        names = sorted(sig)
        out[f"{kind}/{stat}"] = {
            "neurons": int(part.groupby("target").size().iloc[0]),
            "significant": {t: len(sig[t]) for t in names},
            "overlap": {f"{a}&{b}": len(sig[a] & sig[b]) for i, a in enumerate(names) for b in names[i + 1 :]},
        }
    return out

