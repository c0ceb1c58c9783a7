"""The paper's appendix simulation: weighted MLE vs plain MLE over generations of Beta fits.

A "pretrained model" is the MLE of a Beta(3, 2) sample. Fine-tuning data come from Beta(2, 2).
WMLE: each generation fits a Beta to the current data with every point weighted by the density of
the previous generation's model (the pretrained one at first), then samples the next data from
its fit. Plain MLE: the same loop without weights. The WMLE chain drifts toward the pretraining
leaning; the plain chain stays near Beta(2, 2).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize, stats

from biasamp.files import atomic


def fit_beta(x: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """(Weighted) maximum-likelihood Beta(a, b), optimised over log a, log b."""
    w = np.ones_like(x) if weights is None else weights / weights.mean()
    m, v = np.average(x, weights=w), np.cov(x, aweights=w)
    common = m * (1 - m) / v - 1  # method of moments: the starting point
    start = np.log([max(m * common, 0.1), max((1 - m) * common, 0.1)])

    def nll(theta):  # the weighted mean, so that the tolerances do not depend on the sample size
        return -np.average(stats.beta.logpdf(x, np.exp(theta[0]), np.exp(theta[1])), weights=w)

    res = optimize.minimize(nll, start, method="L-BFGS-B")
    if not res.success:
        raise RuntimeError(f"Beta fit did not converge: {res.message}")
    a, b = np.exp(res.x)
    return float(a), float(b)


def simulate(
    generations: int = 10,
    n_pretrain: int = 100_000,
    n_data: int = 10_000,
    pretrain=(3.0, 2.0),
    data=(2.0, 2.0),
    seed: int = 0,
) -> pd.DataFrame:
    """Rows (method, generation, alpha, beta, mean); generation -1 is the pretrained fit."""
    rng = np.random.default_rng(seed)
    a0, b0 = fit_beta(rng.beta(*pretrain, size=n_pretrain))
    rows = [{"method": m, "generation": -1, "alpha": a0, "beta": b0} for m in ("wmle", "mle")]
    first = rng.beta(*data, size=n_data)
    for method in ("wmle", "mle"):
        x, prev = first, (a0, b0)
        for g in range(generations):
            weights = stats.beta.pdf(x, *prev) if method == "wmle" else None
            a, b = fit_beta(x, weights)
            rows.append({"method": method, "generation": g, "alpha": a, "beta": b})
            x, prev = rng.beta(a, b, size=n_data), (a, b)
    df = pd.DataFrame(rows)
    df["mean"] = df["alpha"] / (df["alpha"] + df["beta"])
    return df


def plot(df: pd.DataFrame, method: str, path, data=(2.0, 2.0)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.001, 0.999, 300)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pre = df[(df["method"] == method) & (df["generation"] == -1)].iloc[0]
    ax.plot(
        grid, stats.beta.pdf(grid, pre["alpha"], pre["beta"]), "k-", lw=2, label="pretrained fit (Beta(3,2) sample)"
    )
    ax.plot(grid, stats.beta.pdf(grid, *data), "r--", lw=2, label=f"data: Beta{data}")
    part = df[(df["method"] == method) & (df["generation"] >= 0)]
    cmap = plt.get_cmap("viridis", len(part))
    for i, (_, r) in enumerate(part.iterrows()):
        ax.plot(
            grid,
            stats.beta.pdf(grid, r["alpha"], r["beta"]),
            color=cmap(i),
            lw=1.2,
            label=f"G{r['generation']}: mean {r['mean']:.3f}" if i in (0, len(part) - 1) else None,
        )
    ax.set_title({"wmle": "Weighted MLE (weights from the previous model)", "mle": "Plain MLE"}[method])
    ax.set_xlabel("value")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
