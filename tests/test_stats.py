import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from biasamp.config import LABELS
from biasamp.stages.analyze import arm_contrasts, design, fit, neuron_tests, regress, surrogate_target


def _versions(arms=("a", "b"), seeds=(0, 1), gens=6):
    return pd.DataFrame(
        [{"study": "s", "arm": a, "seed": s, "generation": g} for a in arms for s in seeds for g in range(gens)]
    )


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
        assert ours["se_ols"][j] == pytest.approx(sm.OLS(yd, exog).fit().bse[1], rel=1e-8)
    # What neuron_tests reports: within mode takes the larger standard error and Student's t(n-2).
    final = fit(Xd, yd, groups, mode, maxlags=2 if mode == "within" else 1)
    if mode == "within":
        se = np.maximum(ours["se"], ours["se_ols"])
        np.testing.assert_allclose(final["se"], se, rtol=1e-12)
        np.testing.assert_allclose(final["p"], 2 * sps.t.sf(np.abs(ours["beta"] / se), len(yd) - 2), rtol=1e-10)
    else:
        np.testing.assert_allclose(final["p"], ours["p"], rtol=1e-12)


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
    dtqi = -X[:, n_effect : 2 * n_effect].sum(axis=1)
    summary = versions.assign(share_right=dright + noise[:, 0], tqi_mean=dtqi + noise[:, 1])
    long = versions.loc[versions.index.repeat(n_neurons)].reset_index(drop=True)
    long["layer"] = np.tile(np.arange(n_neurons) // 100, len(versions))
    long["neuron"] = np.tile(np.arange(n_neurons) % 100, len(versions))
    long["kind"], long["stat"], long["value"] = "weight", "mean", X.ravel()
    return long, summary, n_effect


def test_planted_effects_are_recovered():
    neurons, summary, k = _planted()
    tests, report = neuron_tests(neurons, summary, ["share_right", "tqi_mean"], chunk=128, null_draws=3)
    idx = tests["layer"] * 100 + tests["neuron"]
    for target, lo in (("share_right", 0), ("tqi_mean", k)):
        t = tests[tests["target"] == target]
        i = idx[t.index]
        truth = (i >= lo) & (i < lo + k)
        power = t.loc[truth, "significant"].mean()
        fpr = t.loc[~truth, "significant"].mean()
        assert power >= 0.9 and fpr <= 0.02, f"{target}: power {power:.2f}, false-positive rate {fpr:.3f}"
        assert (np.sign(t.loc[truth, "beta"]) == (1 if target == "share_right" else -1)).all()
    s = report["weight/mean"]
    assert s["neurons"] == 600 and s["overlap"]["share_right&tqi_mean"] <= 1, s
    # The surrogate null keeps the study's shape but breaks the link: it expects (almost) nothing.
    assert s["null"]["share_right"]["null_expected_significant"] <= 3 and s["null"]["share_right"]["significant"] >= 3
    assert (tests["n_obs"] == 9 * 10).all() and (tests["n_trajectories"] == 9).all()
    assert report["warnings"] == []


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
    res = CliRunner().invoke(app, ["analyze", str(tmp_path), "--null-draws", "2"])
    assert res.exit_code == 0, res.output
    tests = pd.read_parquet(tmp_path / "neuron_tests.parquet")
    assert list(tests.columns) == [
        "target",
        "kind",
        "stat",
        "layer",
        "neuron",
        "beta",
        "se",
        "t",
        "p",
        "q",
        "r",
        "n_obs",
        "n_trajectories",
        "significant",
    ]
    assert len(tests) == 2 * 200
    paper = CliRunner().invoke(app, ["analyze", str(tmp_path), "--mode", "paper", "--null-draws", "2"])
    assert paper.exit_code == 0, paper.output
    assert len(pd.read_parquet(tmp_path / "neuron_tests_paper.parquet")) == 2 * 200
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "neuron_tests.parquet"), tests)  # not overwritten
    info = json.loads((tmp_path / "neuron_tests_summary.json").read_text())
    assert set(info) == {"within", "paper"}
    within = info["within"]["weight/mean"]
    assert within["significant"]["share_right"] == int(tests[tests.target == "share_right"]["significant"].sum())
    assert within["null"]["share_right"]["null_expected_significant"] is not None
    bad = CliRunner().invoke(app, ["analyze", str(tmp_path), "--targets", "share_purple"])
    assert bad.exit_code == 2 and "no column 'share_purple'" in bad.output


def _null_study(n_traj, gens, n_neurons, rng):
    """Neuron values and targets: independent random walks (the true effect is zero)."""
    versions = _versions(arms=[f"a{i}" for i in range(n_traj)], seeds=(0,), gens=gens)
    X = rng.normal(size=(len(versions), n_neurons))
    y = rng.normal(size=len(versions))
    traj = versions["arm"].to_numpy()
    for t in np.unique(traj):
        X[traj == t] = X[traj == t].cumsum(axis=0)
        y[traj == t] = y[traj == t].cumsum()
    return versions, X, y


@pytest.mark.parametrize("n_traj,gens", [(2, 3), (4, 5), (6, 11)])
def test_within_mode_is_calibrated_under_the_null_at_every_size(n_traj, gens):
    """On null data, p < 0.05 for 3-7% of neurons and BH flags under 1%, from 2 trajectories x 3
    generations up (with normal p-values Newey-West gave 37% at 2 x 3, 13% at 4 x 5)."""
    rng = np.random.default_rng(n_traj * 100 + gens)
    rates, flagged = [], []
    for _ in range(8):  # independent studies: the BH flags of one study are all-or-nothing-ish
        versions, X, y = _null_study(n_traj, gens, 2000, rng)
        res = fit(*design(versions, X, y, "within"), "within", maxlags=1)
        rates.append(np.mean(res["p"] < 0.05))
        from statsmodels.stats.multitest import multipletests

        flagged.append(multipletests(res["p"], method="fdr_bh")[0].mean())
    assert 0.03 <= np.mean(rates) <= 0.07, rates
    assert np.mean(flagged) < 0.01, flagged


def test_paper_mode_flags_spurious_neurons_and_the_null_diagnostic_shows_it():
    """The authors' levels regression on independent random walks: many p < 0.05 (spurious
    regression); the surrogate null expects about as many, so the diagnostic exposes it."""
    rng = np.random.default_rng(5)
    versions, X, y = _null_study(6, 11, 300, rng)
    long = versions.loc[versions.index.repeat(300)].reset_index(drop=True)
    long["layer"], long["neuron"] = 0, np.tile(np.arange(300), len(versions))
    long["kind"], long["stat"], long["value"] = "weight", "l2", X.ravel()
    summary = versions.assign(share_right=y)
    paper, rep_p = neuron_tests(long, summary, ["share_right"], mode="paper", null_draws=5)
    within, rep_w = neuron_tests(long, summary, ["share_right"], mode="within", null_draws=5)
    nul_p, nul_w = rep_p["weight/l2"]["null"]["share_right"], rep_w["weight/l2"]["null"]["share_right"]
    assert paper["significant"].mean() > 0.15 and nul_p["null_p_below_alpha"] > 0.15
    assert within["significant"].mean() < 0.02 and nul_w["null_p_below_alpha"] < 0.08


def test_surrogate_keeps_each_trajectory_start_end_and_steps():
    rng = np.random.default_rng(0)
    versions = _versions(arms=("a",), seeds=(0, 1), gens=6).sample(frac=1, random_state=1).reset_index(drop=True)
    y = rng.normal(size=len(versions)).cumsum()
    z = surrogate_target(versions, y, rng)
    for _, part in versions.groupby("seed"):
        idx = part.sort_values("generation").index.to_numpy()
        assert z[idx[0]] == y[idx[0]] and z[idx[-1]] == pytest.approx(y[idx[-1]])
        assert sorted(np.diff(z[idx])) == pytest.approx(sorted(np.diff(y[idx])))


def test_too_few_trajectories_or_generations_warn_but_run():
    neurons, summary, _ = _planted(n_neurons=20, n_effect=2)
    keep = (neurons.arm == "syn") & (neurons.seed < 2) & (neurons.generation < 3)
    tests, report = neuron_tests(neurons[keep], summary, ["share_right"], null_draws=1)
    assert (tests["n_obs"] == 4).all() and (tests["n_trajectories"] == 2).all()
    assert any("fewer than 3" in w and "trajectories" in w for w in report["warnings"])
    assert any("2 generation-to-generation differences" in w for w in report["warnings"])


def _scores(rng, arms, seeds, n_art=120, gens=3, effect=None, seed_sd=0.0):
    effect = effect or {}
    rows = []
    for arm in arms:
        for s in seeds:
            shift = rng.normal(scale=seed_sd)
            for g in range(gens):
                pr = float(np.clip(0.4 + shift + effect.get(arm, 0.0) * g, 0.01, 0.99))
                lab = rng.choice(["left", "center", "right"], size=n_art, p=[(1 - pr) / 2, (1 - pr) / 2, pr])
                # the degradation null: the arm's starting mix, drawn afresh (no drift of its own)
                null = rng.choice(LABELS, size=n_art, p=[0.3 - shift / 2, 0.3 - shift / 2, 0.4 + shift])
                rows.append(
                    pd.DataFrame(
                        {
                            "study": "s",
                            "arm": arm,
                            "seed": s,
                            "generation": g,
                            "article_id": np.arange(n_art).astype(str),
                            "label": lab,
                            **_probs("p", lab),
                            **_probs("null_p", null),
                            "tqi": rng.normal(2.0, 0.5, n_art),
                            "ppl": rng.lognormal(3, 1, n_art),
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


def _probs(prefix: str, labels: np.ndarray) -> dict:
    """Probabilities whose argmax is `labels`: 0.6 on it, 0.2 on each other label."""
    return {f"{prefix}_{lab}": np.where(labels == lab, 0.6, 0.2) for lab in LABELS}


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_arm_contrasts_null_calibration_and_planted_effect(seeds):
    rng = np.random.default_rng(len(seeds))
    rejections, covered = [], []
    for rep in range(25):  # null: both arms drawn from one distribution
        c, t = arm_contrasts(_scores(rng, ("a", "b"), seeds, seed_sd=0.03), "a", n_boot=300, seed=rep)
        rejections += list(c["p"] < 0.05)
        covered += list((c["lo"] <= 0) & (c["hi"] >= 0))
    assert np.mean(rejections) <= 0.08 and np.mean(covered) >= 0.92, (np.mean(rejections), np.mean(covered))
    readings = {"share_left", "share_center", "share_right", "lean_index"}
    calibrated = {f"{r}_calibrated" for r in readings}
    assert set(c["target"]) == readings | {"tqi_mean", "ppl_mean"} | {f"{r}_beyond_null" for r in readings} | calibrated
    assert (c["seed_variation_in_ci"] == (len(seeds) > 1)).all() and (c["n_seeds"] == len(seeds)).all()
    # planted: arm b drifts right by 10 points a generation
    c, t = arm_contrasts(_scores(rng, ("a", "b"), seeds, n_art=400, effect={"b": 0.1}), "a", n_boot=300)
    right = c[(c.target == "share_right") & (c.generation == 2)].iloc[0]
    assert right["lo"] > 0 and abs(right["estimate"] - 0.2) < 3 * right["se"] and right["p"] < 0.001, right
    trend = t[(t.arm == "b") & (t.target == "share_right")].iloc[0]
    assert trend["lo"] > 0 and abs(trend["estimate"] - 0.1) < 3 * trend["se"] and trend["p"] < 0.001, trend
    beyond = t[(t.arm == "b") & (t.target == "share_right_beyond_null")].iloc[0]  # the null does not drift
    assert beyond["lo"] > 0 and abs(beyond["estimate"] - 0.1) < 3 * beyond["se"], beyond
    flat = t[(t.arm == "a") & (t.target == "share_right_beyond_null")].iloc[0]
    assert flat["lo"] <= 0 <= flat["hi"], flat


def _decayed_study(rng, n_art, right_after, clarity, base=(0.5, 0.2, 0.3)):
    """One arm, one seed, G0 and G1 over the same n_art prompts (labels in equal shares). What the
    classifier reads of an article of true label L: clarity[g] * onehot(L) + (1 - clarity[g]) * base,
    plus noise, argmax taken from it: decay (lower clarity) pulls every reading toward `base`. At G1 a
    share of the non-right articles turns right (true right share `right_after`); the null reads the
    prompt's own label at the same clarity (its real article degraded the same way)."""
    prompts = np.array(LABELS)[np.arange(n_art) % 3]
    flip = (prompts != "right") & (rng.random(n_art) < (right_after - 1 / 3) * 1.5)
    truth = {0: prompts, 1: np.where(flip, "right", prompts)}

    def read(labels, c):
        onehot = (labels[:, None] == np.array(LABELS)[None, :]).astype(float)
        p = c * onehot + (1 - c) * np.array(base) + rng.normal(0, 0.08, (len(labels), 3))
        p = np.clip(p, 1e-3, None)
        return p / p.sum(1, keepdims=True)

    rows = []
    for g, labels in truth.items():
        p, p0 = read(labels, clarity[g]), read(prompts, clarity[g])
        frame = {"study": "s", "arm": "a", "seed": 0, "generation": g, "article_id": np.arange(n_art).astype(str)}
        frame |= {f"p_{lab}": p[:, k] for k, lab in enumerate(LABELS)}
        frame |= {f"null_p_{lab}": p0[:, k] for k, lab in enumerate(LABELS)}
        rows.append(pd.DataFrame(frame | {"label": prompts, "tqi": 2.0, "ppl": 10.0}))
    return pd.concat(rows, ignore_index=True), float(np.mean(truth[1] == "right") - np.mean(truth[0] == "right"))


def test_the_calibrated_change_has_the_planted_size_where_decay_shrinks_the_raw_one():
    """Decay that halves what the classifier reads (clarity 0.5 at G0, 0.2 at G1) shrinks a planted
    change of right share in the raw reading and beyond the null; calibrated on the degraded prompts,
    the change comes out at its size, its CI covering the truth, and a null (no change) reads 0."""
    rng = np.random.default_rng(0)
    found = {"raw": [], "calibrated": [], "covers": [], "null_covers": []}
    for rep in range(12):
        scores, truth = _decayed_study(rng, 600, 0.60, {0: 0.5, 1: 0.2})
        t = arm_contrasts(scores, n_boot=300, seed=rep)[1].set_index("target")
        found["raw"].append(t.loc["share_right", "change"] / truth)
        cal = t.loc["share_right_calibrated"]
        found["calibrated"].append(cal["change"] - truth)
        found["covers"].append(cal["change_lo"] <= truth <= cal["change_hi"])
        null = arm_contrasts(_decayed_study(rng, 600, 1 / 3, {0: 0.5, 1: 0.2})[0], n_boot=300, seed=rep)[1]
        null = null.set_index("target").loc["share_right_calibrated"]
        found["null_covers"].append(null["change_lo"] <= 0 <= null["change_hi"])
    assert np.mean(found["raw"]) < 0.6, found["raw"]  # what the raw reading shows of the change
    assert abs(np.mean(found["calibrated"])) < 0.03, found["calibrated"]
    assert np.mean(found["covers"]) >= 10 / 12 and np.mean(found["null_covers"]) >= 10 / 12, found


def test_a_change_from_g0_is_paired_by_prompt():
    """Each article's reading carries its prompt's own leaning at every generation (a large share of
    the variance): the change from G0 resamples prompts jointly, so its CI is narrow and still
    covers the planted change, where resampling each generation's articles on its own could not."""
    rng = np.random.default_rng(1)
    n = 300
    prompt = rng.normal(0, 0.3, n)  # what every generation inherits from its prompt
    rows = []
    for g, shift in ((0, 0.0), (1, 0.02)):
        value = np.clip(0.5 + prompt + shift + rng.normal(0, 0.03, n), 0.01, 0.99)
        p = np.column_stack([(1 - value) / 2, (1 - value) / 2, value])
        frame = {"study": "s", "arm": "a", "seed": 0, "generation": g, "article_id": np.arange(n).astype(str)}
        frame |= {f"p_{lab}": p[:, k] for k, lab in enumerate(LABELS)}
        rows.append(pd.DataFrame(frame | {"label": "right", "tqi": 2.0, "ppl": 10.0}))
    scores = pd.concat(rows, ignore_index=True)
    trend = arm_contrasts(scores, n_boot=400)[1].set_index("target").loc["lean_index"]
    # lean_index = p_right - p_left = 1.5 * value - 0.5: the planted change is 0.03
    unpaired_se = np.sqrt(2 * np.var(1.5 * (0.5 + prompt)) / n)
    assert trend["change_lo"] <= 0.03 <= trend["change_hi"] and trend["change_lo"] > 0, trend
    assert trend["change_hi"] - trend["change_lo"] < 0.25 * 2 * 1.96 * unpaired_se, (trend, unpaired_se)


def test_arm_contrasts_name_a_missing_baseline():
    with pytest.raises(ValueError, match="baseline arm 'control' is not in study s"):
        arm_contrasts(_scores(np.random.default_rng(0), ("a", "b"), (0,)), "control", n_boot=20)


def test_contrasts_on_the_authors_numbers(tmp_path):
    """Preservation minus Synthetic at G10 on the authors' released per-article scores."""
    from pathlib import Path

    from biasamp.stages.summarize import import_paper

    folder = (
        Path(__file__).parents[1]
        / ".."
        / "shared"
        / "data"
        / "paper-results"
        / "Bias_Performance_and_Generation_Quality"
    )
    if not folder.exists():
        pytest.skip("../shared/data/paper-results not present")
    scores, _ = import_paper(folder)
    c, t = arm_contrasts(scores, "synthetic", n_boot=200)
    row = c[(c.study == "paper") & (c.arm == "preservation") & (c.generation == 10) & (c.target == "share_right")].iloc[
        0
    ]
    g10 = scores[(scores.study == "paper") & (scores.generation == 10)]
    share = g10.groupby("arm")["label"].apply(lambda s: (s == "right").mean())
    assert row["estimate"] == pytest.approx(share["preservation"] - share["synthetic"])
    assert row["hi"] < 0 and not row["seed_variation_in_ci"]
