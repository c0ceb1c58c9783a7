"""Which neurons move with bias (or quality), and how arms differ: the statistics stage.

Neuron tests: one regression per neuron, y = a + b x, vectorised over all neurons at once.
statsmodels is the reference (tests/test_stats.py checks every column against it to 1e-8):

- mode "within" (default): first differences of target and neuron value between consecutive
  generations of one (arm, seed) trajectory, never across trajectories, pooled. The standard error
  is the larger of the conventional OLS one and the Newey-West one
  (`OLS(dy, [1, dx]).fit(cov_type="hac-panel", cov_kwds={"groups": trajectory, "maxlags": L})`),
  and p comes from Student's t with n - 2 degrees of freedom. Why: Newey-West errors are biased
  down in small samples, and with normal p-values 13% of null neurons had p < 0.05 at 16
  differences (37% at 4); the max rule (Angrist & Pischke 2009, section 8.1) with t(n-2) stays at or
  below the nominal rate at every size (`python bench/null_calibration.py` prints the table).
- mode "paper": the authors' released procedure, kept as they ran it: levels, every version pooled
  in one sequence, `OLS(y, [1, x]).fit(cov_type="HAC", cov_kwds={"maxlags": 1})`, normal p-values.

Every analysis also runs on surrogate nulls built from the study's own data (`null_diagnostic`):
the target's steps in a random order inside each trajectory, so the timing of its changes carries
no information about any neuron. The mean count flagged there is the false-discovery count to
expect when there is nothing to find; the authors' pooled-levels procedure flags many.

Arm contrasts and trends (`arm_contrasts`, `arm_trends`) come from the per-article scores, with
bootstrap CIs: seeds resampled, then articles within each drawn seed, paired by prompt (one draw
weighs each article id alike in every generation and arm: `_study_draws`).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtr
from scipy.stats import t as student_t
from statsmodels.stats.multitest import multipletests

from biasamp.instruments.prevalence import CALIBRATED, READINGS, calibrated_readings, calibration_values, reading_values
from biasamp.instruments.registry import MEASURES
from biasamp.stages.summarize import PROBS, measure_values, null_probs, real_labels
from biasamp.tables import ADDRESS_COLUMNS, TABLES

Mode = Literal["within", "paper"]
VERSION = ADDRESS_COLUMNS  # a model version: study, arm, seed, generation


def regress(X: np.ndarray, y: np.ndarray, groups: np.ndarray, maxlags: int, correction: bool) -> dict[str, np.ndarray]:
    """OLS of y on [1, X[:, j]] for every column j: the slope, its Bartlett-kernel HAC standard
    error `se` (with normal p, as statsmodels reports it), the conventional standard error `se_ols`
    and Pearson's r.

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
        resid = ym[:, None] - xm * beta
        v = xm * resid
        s = np.einsum("ij,ij->j", v, v)
        for lag in range(1, maxlags + 1):
            same = groups[lag:] == groups[:-lag]
            w = 1.0 - lag / (maxlags + 1.0)
            s += 2.0 * w * np.einsum("ij,ij->j", v[lag:][same], v[:-lag][same])
        var = s / sxx**2
        if correction:
            var *= n / (n - 2.0)
        se = np.sqrt(var)
        se_ols = np.sqrt(np.einsum("ij,ij->j", resid, resid) / (n - 2.0) / sxx)
        t = beta / se
        r = sxy / np.sqrt(sxx * (ym @ ym))
    p = 2.0 * ndtr(-np.abs(t))
    return {"beta": beta, "se": se, "se_ols": se_ols, "t": t, "p": p, "r": r}


def fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray, mode: Mode, maxlags: int) -> dict[str, np.ndarray]:
    """beta, se, t, p, r per column as `neuron_tests` reports them (see the module docstring)."""
    res = regress(X, y, groups, maxlags, correction=(mode == "within"))
    if mode == "within":
        with np.errstate(divide="ignore", invalid="ignore"):
            res["se"] = np.fmax(res["se"], res["se_ols"])
            res["t"] = res["beta"] / res["se"]
        res["p"] = 2.0 * student_t.sf(np.abs(res["t"]), len(y) - 2)
    del res["se_ols"]
    return res


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
    null_draws: int = 10,
    seed: int = 0,
    chunk: int = 1 << 17,
) -> tuple[pd.DataFrame, dict]:
    """The table `neuron_tests` from long-format `neurons` and per-version `summary` tables, and a
    report: counts, overlaps, the null diagnostic per (kind/stat, target), and warnings.

    Significant: Benjamini-Hochberg q < alpha across the neurons of one (target, kind, stat);
    in paper mode, as the authors count, raw p < alpha.
    """
    for col in targets:
        if col not in summary.columns:
            raise ValueError(f"summary has no column '{col}' (has: {', '.join(summary.columns)})")
    rng = np.random.default_rng(seed)
    out, null, warn = [], {}, set()
    for (kind, stat), part in neurons.groupby(["kind", "stat"], sort=True):
        versions, keys, X = _matrix(part)
        merged = versions.merge(summary[VERSION + list(targets)], on=VERSION, how="left")
        for target in targets:
            y = merged[target].to_numpy(dtype=np.float64)
            keep = ~np.isnan(y)
            v, Xk, yk = versions[keep].reset_index(drop=True), X[keep], y[keep]
            Xd, yd, groups = design(v, Xk, yk, mode)  # the neurons' side once; null draws redo the target only
            if len(yd) < 3:
                raise ValueError(
                    f"{len(yd)} observations after differencing; need at least 3 (more generations or seeds)"
                )
            n_obs = len(yd)
            per_traj = np.bincount(v.groupby(VERSION[:3], sort=True).ngroup().to_numpy()) - (mode == "within")
            res = _fit_chunks(Xd, yd, groups, mode, maxlags, chunk)
            if len(per_traj) < 3:
                warn.add(
                    f"{len(per_traj)} trajectories: fewer than 3, so the tests rest on very few "
                    "independent runs; add seeds"
                )
            if per_traj.min() < 3:
                warn.add(
                    f"a trajectory has {per_traj.min()} generation-to-generation differences (fewer than 3); "
                    "add generations"
                )
            q, sig = _significant(res["p"], mode, alpha)
            table = pd.DataFrame(
                {
                    "target": target,
                    "kind": kind,
                    "stat": stat,
                    **keys,
                    **res,
                    "q": q,
                    "n_obs": n_obs,
                    "n_trajectories": len(per_traj),
                    "significant": sig,
                }
            )
            out.append(TABLES["neuron_tests"].check(table))
            counts, rates = [], []
            for _ in range(null_draws):
                y0 = design(v, Xk[:, :0], surrogate_target(v, yk, rng), mode)[1]
                p0 = _fit_chunks(Xd, y0, groups, mode, maxlags, chunk)["p"]
                counts.append(int(_significant(p0, mode, alpha)[1].sum()))
                rates.append(float(np.mean(np.nan_to_num(p0, nan=1.0) < alpha)))
            null.setdefault(f"{kind}/{stat}", {})[target] = {
                "significant": int(sig.sum()),
                "p_below_alpha": float(np.mean(np.nan_to_num(res["p"], nan=1.0) < alpha)),
                "null_expected_significant": float(np.mean(counts)) if counts else None,
                "null_max_significant": max(counts) if counts else None,
                "null_p_below_alpha": float(np.mean(rates)) if rates else None,
                "n_obs": n_obs,
                "n_trajectories": len(per_traj),
            }
    tests = pd.concat(out, ignore_index=True)
    report = {"mode": mode, "maxlags": maxlags, "alpha": alpha, "null_draws": null_draws, "warnings": sorted(warn)}
    for key, counts in overlap_summary(tests).items():
        report[key] = {**counts, "null": null[key]}
    return tests, report


def _fit_chunks(Xd, yd, groups, mode, maxlags, chunk) -> dict[str, np.ndarray]:
    """fit() over every neuron column in chunks: bounded memory at any model size."""
    res = {k: np.empty(Xd.shape[1]) for k in ("beta", "se", "t", "p", "r")}
    for start in range(0, Xd.shape[1], chunk):
        block = fit(Xd[:, start : start + chunk], yd, groups, mode, maxlags)
        for k in res:
            res[k][start : start + chunk] = block[k]
    return res


def _significant(p: np.ndarray, mode: Mode, alpha: float):
    """BH q-values across one (target, kind, stat), and the significance flag (raw p in paper mode)."""
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    crit = p if mode == "paper" else q
    return q, np.nan_to_num(crit, nan=1.0) < alpha


def surrogate_target(versions: pd.DataFrame, y: np.ndarray, rng) -> np.ndarray:
    """The target with its generation-to-generation steps in a random order inside each trajectory,
    accumulated from the trajectory's first value: same start, end, step sizes and drift, but the
    timing of its changes tells nothing about any neuron. (Autocorrelation of the steps is not kept.)"""
    y = np.asarray(y, dtype=np.float64)
    out = y.copy()
    order = np.lexsort([versions[c].to_numpy() for c in reversed(VERSION)])
    traj = versions.iloc[order].groupby(VERSION[:3], sort=False).ngroup().to_numpy()
    for t in np.unique(traj):
        idx = order[traj == t]
        steps = rng.permutation(np.diff(y[idx]))
        out[idx] = y[idx[0]] + np.concatenate([[0.0], np.cumsum(steps)])
    return out


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


def neuron_counts(tests: pd.DataFrame, report: dict, mode: str) -> pd.DataFrame:
    """neuron_tests' report as a table: per (neurons kind/stat, target), how many are significant out
    of how many, and how many the surrogate null flags (the `biasamp analyze` lines, W&B's table)."""
    pairs = [f"{k}/{s}" for k, s in tests[["kind", "stat"]].drop_duplicates().itertuples(index=False)]
    return pd.DataFrame(
        [
            {"mode": mode, "neurons": key, "target": target, "of": report[key]["neurons"], **r}
            for key in pairs
            for target, r in report[key]["null"].items()
        ]
    )


def overlap_summary(tests: pd.DataFrame) -> dict:
    """Counts of significant neurons per (kind, stat, target) and the overlap between targets."""
    out = {}
    for (kind, stat), part in tests.groupby(["kind", "stat"]):
        sig = {
            t: set(zip(g.loc[g["significant"], "layer"], g.loc[g["significant"], "neuron"]))
            for t, g in part.groupby("target")
        }
        names = sorted(sig)
        out[f"{kind}/{stat}"] = {
            "neurons": int(part.groupby("target").size().iloc[0]),
            "significant": {t: len(sig[t]) for t in names},
            "overlap": {f"{a}&{b}": len(sig[a] & sig[b]) for i, a in enumerate(names) for b in names[i + 1 :]},
        }
    return out


# --- arms: contrasts against a baseline arm, trends over generations ------------------------------


def contrast_targets() -> list[str]:
    """The leaning readings, each measure's mean (tqi_mean), perplexity, each reading beyond its
    degradation null (measured minus null, article by article: an arm's trend in
    `lean_index_beyond_null` is its drift in leaning that shortening and looping alone would not
    produce), and each reading calibrated to the generation's decay, in label units (`*_calibrated`)."""
    return _mean_targets() + CALIBRATED


def _mean_targets() -> list[str]:
    """The targets that are means of per-article values (_article_values' first columns)."""
    return READINGS + [f"{m}_mean" for m in MEASURES] + ["ppl_mean"] + [f"{r}_beyond_null" for r in READINGS]


def _article_values(part: pd.DataFrame) -> np.ndarray:
    """Per article, the values whose means are _mean_targets() (NaN beyond the null where scores
    have no null, e.g. imported numbers), then the calibration values (prevalence.calibration_values)."""
    probs, null = part[PROBS].to_numpy(float), null_probs(part)
    measured = reading_values(probs)
    return np.column_stack(
        [
            measured,
            *measure_values(part),
            part["ppl"].to_numpy(dtype=float),
            measured - reading_values(null),
            calibration_values(probs, null, real_labels(part)),
        ]
    )


def _targets(means: np.ndarray) -> np.ndarray:
    """contrast_targets() (..., T) from means of _article_values (..., k)."""
    k = len(_mean_targets())
    return np.concatenate([means[..., :k], calibrated_readings(means[..., k:])], axis=-1)


def _study_draws(spart: pd.DataFrame, rng, n_boot: int) -> dict[str, dict[int, tuple]]:
    """arm -> generation -> (point (T,), bootstrap draws (n_boot, T), n_seeds) of contrast_targets().

    Paired by prompt: every generation of every arm continues the same real articles (article_id),
    so one draw weighs each article id the same way everywhere (a multinomial count per id), and a
    generation's change from G0 and an arm's difference from the baseline keep the part of the
    variance the shared prompts cancel. Seeds: drawn per arm, the same for every generation of a draw,
    so that a trend's draws keep whole trajectories; articles within each drawn seed by the weights."""
    ids = {a: i for i, a in enumerate(sorted(spart["article_id"].unique()))}
    weights = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=n_boot).astype(float)
    out: dict[str, dict[int, tuple]] = {}
    for arm, apart in spart.groupby("arm", sort=True):
        seeds = sorted(apart["seed"].unique())
        seed_draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
        out[arm] = {}
        for g, gpart in apart.groupby("generation", sort=True):
            sums = counts = 0.0
            pooled = []
            for s, x in gpart.groupby("seed", sort=True):
                v = _article_values(x)
                pooled.append(v)
                ok = np.isfinite(v)
                w = weights[:, x["article_id"].map(ids).to_numpy()]  # (n_boot, articles of this seed)
                times = (seed_draws == seeds.index(s)).sum(1)[:, None]  # how often this seed is drawn
                sums = sums + times * (w @ np.where(ok, v, 0.0))
                counts = counts + times * (w @ ok)
            with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a value no article has (e.g. no tqi) stays NaN
                point, boot = np.nanmean(np.concatenate(pooled), axis=0), sums / counts
            out[arm][int(g)] = (_targets(point), _targets(boot), len(pooled))
    return out


def _interval(point: float, boot: np.ndarray) -> dict:
    """Percentile 95% CI of a bootstrap distribution, and a two-sided p from its standard error."""
    boot = boot[~np.isnan(boot)]
    if np.isnan(point) or len(boot) < 2:
        return {"estimate": point, "lo": np.nan, "hi": np.nan, "se": np.nan, "p": np.nan}
    se = boot.std(ddof=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    p = 2.0 * ndtr(-abs(point) / se) if se > 0 else (1.0 if point == 0 else 0.0)
    return {"estimate": point, "lo": lo, "hi": hi, "se": se, "p": p}


def arm_contrasts(
    scores: pd.DataFrame, baseline: str | None = None, n_boot: int = 1000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per study: each arm minus the baseline arm, per generation and target, and each arm's linear
    trend over generations (slope per generation) with its change from the first generation to the
    last. All with 95% bootstrap CIs (seeds, then articles within each drawn seed, paired by prompt) and p-values from
    the bootstrap standard error.

    `seed_variation_in_ci` is False where an arm has one seed: the CI then covers only which
    articles were written, not how another run of the same arm would differ.
    """
    rng = np.random.default_rng(seed)
    contrasts, trends = [], []
    for study, spart in scores.groupby("study", sort=True):
        arms = sorted(spart["arm"].unique())
        base = baseline or arms[0]
        if base not in arms:
            raise ValueError(f"baseline arm '{base}' is not in study {study} (arms: {', '.join(arms)})")
        draws = _study_draws(spart, rng, n_boot)
        for arm in arms:
            for g in sorted(draws[arm]):
                if arm == base or g not in draws[base]:
                    continue
                (pa, ba, sa), (pb, bb, sb) = draws[arm][g], draws[base][g]
                for k, target in enumerate(contrast_targets()):
                    contrasts.append(
                        {
                            "study": study,
                            "arm": arm,
                            "baseline": base,
                            "generation": g,
                            "target": target,
                            **_interval(pa[k] - pb[k], ba[:, k] - bb[:, k]),
                            "arm_value": pa[k],
                            "baseline_value": pb[k],
                            "n_seeds": sa,
                            "n_seeds_baseline": sb,
                            "seed_variation_in_ci": bool(sa > 1 and sb > 1),
                        }
                    )
            gens = np.array(sorted(draws[arm]), dtype=float)
            if len(gens) < 2:
                continue
            point = np.stack([draws[arm][g][0] for g in sorted(draws[arm])])  # (G, k)
            boot = np.stack([draws[arm][g][1] for g in sorted(draws[arm])], axis=1)  # (n_boot, G, k)
            gc = (gens - gens.mean()) / ((gens - gens.mean()) ** 2).sum()  # OLS slope weights
            n_seeds = max(d[2] for d in draws[arm].values())
            for k, target in enumerate(contrast_targets()):
                # The last generation minus the first: the same draws of whole trajectories (paired).
                change = _interval(point[-1, k] - point[0, k], boot[:, -1, k] - boot[:, 0, k])
                trends.append(
                    {
                        "study": study,
                        "arm": arm,
                        "target": target,
                        **_interval(float(gc @ point[:, k]), boot[:, :, k] @ gc),
                        "change": change["estimate"],
                        "change_lo": change["lo"],
                        "change_hi": change["hi"],
                        "change_p": change["p"],
                        "first_generation": int(gens[0]),
                        "last_generation": int(gens[-1]),
                        "n_generations": len(gens),
                        "n_seeds": n_seeds,
                        "seed_variation_in_ci": n_seeds > 1,
                    }
                )
    # A one-arm study has trends and no contrasts: an empty table, with its columns.
    return tuple(
        TABLES[name].check(pd.DataFrame(rows, columns=list(TABLES[name].columns)))
        for name, rows in (("arm_contrasts", contrasts), ("arm_trends", trends))
    )
