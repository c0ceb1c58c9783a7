import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from biasamp.stats import design, neuron_tests, overlap_summary, regress


def _versions(arms=("a", "b"), seeds=(0, 1), gens=6):
    return pd.DataFrame([{"study": "s", "arm": a, "seed": s, "generation": g}
                         for a in arms for s in seeds for g in range(gens)])


@pytest.mark.parametrize("mode", ["within", "paper"])
def test_matches_statsmodels_loop(mode):
    rng = np.random.default_rng(1)
    versions = _versions().sample(frac=1, random_state=3).reset_index(drop=True)  # any input order
    X = rng.normal(size=(len(versions), 40)).cumsum(axis=0)
    y = rng.normal(size=len(versions)) + 0.3 * X[:, 0]
    Xd, yd, groups = design(versions, X, y, mode)
    assert len(yd) == (len(versions) - 4 if mode == "within" else len(versions))  # 4 trajectories lose one each
    ours = regress(Xd, yd, groups, maxlags=2 if mode == "within" else 1, correction=mode == "within")
    for j in range(X.shape[1]):
        exog = sm.add_constant(Xd[:, j])
        if mode == "within":
            ref = sm.OLS(yd, exog).fit(cov_type="hac-panel", cov_kwds={"groups": groups, "maxlags": 2})
        else:
            ref = sm.OLS(yd, exog).fit(cov_type="HAC", cov_kwds={"maxlags": 1})
        assert ours["beta"][j] == pytest.approx(ref.params[1], rel=1e-8, abs=1e-12)
        assert ours["se"][j] == pytest.approx(ref.bse[1], rel=1e-8)
        assert ours["t"][j] == pytest.approx(ref.tvalues[1], rel=1e-8)
        assert ours["p"][j] == pytest.approx(ref.pvalues[1], rel=1e-8, abs=1e-14)
        assert ours["r"][j] == pytest.approx(np.corrcoef(Xd[:, j], yd)[0, 1], rel=1e-8)


def test_differences_never_cross_trajectories():
    versions = _versions(arms=("a",), seeds=(0, 1), gens=3)
    X = np.array([[0.0], [1.0], [3.0], [100.0], [101.0], [103.0]])
    y = X[:, 0] * 2
    Xd, yd, groups = design(versions, X, y, "within")
    assert Xd[:, 0].tolist() == [1.0, 2.0, 1.0, 2.0] and groups.tolist() == [0, 0, 1, 1]


def _planted(n_neurons=600, n_effect=3, seed=0):
    """A neurons/summary pair where the first n_effect neurons drive share_right, the next
    n_effect drive tqi, and the rest are noise."""
    rng = np.random.default_rng(seed)
    versions = _versions(arms=("syn", "pres", "acc"), seeds=(0, 1, 2), gens=11)
    steps = rng.normal(size=(len(versions), n_neurons))
    X = np.zeros_like(steps)
    traj = versions.groupby(["arm", "seed"], sort=False).ngroup().to_numpy()
    for t in np.unique(traj):
        X[traj == t] = steps[traj == t].cumsum(axis=0)  # random walks per trajectory
    noise = rng.normal(scale=0.3, size=(len(versions), 2))
    dright = X[:, :n_effect].sum(axis=1)
    dtqi = -X[:, n_effect:2 * n_effect].sum(axis=1)
    summary = versions.assign(share_right=dright + noise[:, 0], tqi_mean=dtqi + noise[:, 1])
    long = versions.loc[versions.index.repeat(n_neurons)].reset_index(drop=True)
    long["layer"] = np.tile(np.arange(n_neurons) // 100, len(versions))
    long["neuron"] = np.tile(np.arange(n_neurons) % 100, len(versions))
    long["kind"], long["stat"], long["value"] = "weight", "mean", X.ravel()
    return long, summary, n_effect


def test_planted_effects_are_recovered():
    neurons, summary, k = _planted()
    tests = neuron_tests(neurons, summary, ["share_right", "tqi_mean"], chunk=128)
    idx = tests["layer"] * 100 + tests["neuron"]
    for target, lo in (("share_right", 0), ("tqi_mean", k)):
        t = tests[tests["target"] == target]
        i = idx[t.index]
        truth = (i >= lo) & (i < lo + k)
        power = t.loc[truth, "significant"].mean()
        fpr = t.loc[~truth, "significant"].mean()
        assert power >= 0.9 and fpr <= 0.02, f"{target}: power {power:.2f}, false-positive rate {fpr:.3f}"
        assert (np.sign(t.loc[truth, "beta"]) == (1 if target == "share_right" else -1)).all()
    s = overlap_summary(tests)["weight/mean"]
    assert s["neurons"] == 600 and s["overlap"]["share_right&tqi_mean"] <= 1, s


def test_missing_target_and_ragged_table_are_errors():
    neurons, summary, _ = _planted(n_neurons=10, n_effect=2)
    with pytest.raises(ValueError, match="summary has no column 'share_left'"):
        neuron_tests(neurons, summary, ["share_left"])
    with pytest.raises(ValueError, match="same neurons"):
        neuron_tests(neurons.iloc[1:], summary, ["share_right"])


def test_analyze_cli_writes_tests_and_summary(tmp_path):
    import json

    from typer.testing import CliRunner

    from biasamp.cli import app

    neurons, summary, _ = _planted(n_neurons=200)
    (tmp_path / "neurons").mkdir()
    for i, (key, part) in enumerate(neurons.groupby(["arm", "seed"])):
        part.to_parquet(tmp_path / "neurons" / f"part{i}.parquet")
    summary.to_parquet(tmp_path / "summary.parquet")
    res = CliRunner().invoke(app, ["analyze", str(tmp_path)])
    assert res.exit_code == 0, res.output
    tests = pd.read_parquet(tmp_path / "neuron_tests.parquet")
    assert list(tests.columns) == ["target", "kind", "stat", "layer", "neuron", "beta", "se", "t", "p", "q", "r", "significant"]
    assert len(tests) == 2 * 200
    info = json.loads((tmp_path / "neuron_tests_summary.json").read_text())
    assert info["weight/mean"]["significant"]["share_right"] == int(tests[tests.target == "share_right"]["significant"].sum())
    bad = CliRunner().invoke(app, ["analyze", str(tmp_path), "--targets", "share_purple"])
    assert bad.exit_code == 2 and "no column 'share_purple'" in bad.output
