"""W&B against the real libraries: the smoke study's offline run files read back record by record
(tests/wandb_files.py), and the comparison Report built with wandb-workspaces and checked in the
form the library sends to the server."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import cli, tiny_study
from typer.testing import CliRunner
from wandb_files import history, report_spec, runs

from biasamp import artifacts, tracking
from biasamp.cli import app
from biasamp.config import from_dict, load_config
from biasamp.stages.analyze import arm_contrasts
from biasamp.stages.report import (
    bar_metrics,
    dose_response,
    dose_targets,
    fig_dose_response,
    line_metrics,
    load,
    wandb_report,
)
from biasamp.stages.trajectory import run_trajectory
from biasamp.study import prepare_study
from biasamp.tables import TABLES

ROOT = Path(__file__).parents[1]


def _trajectory_runs(out: Path, cfg) -> dict:
    """run id -> (folder, records) of each (arm, seed): one offline folder each."""
    found = runs(out)
    by_arm_seed = {}
    for arm in cfg.arms:
        for seed in cfg.seeds:
            run_id = tracking._run_id(cfg, f"{arm}-seed{seed}")
            assert run_id in found, (run_id, sorted(found))
            ((folder, recs),) = found[run_id]
            by_arm_seed[arm, seed] = recs
    return by_arm_seed


def _panels(block: dict) -> list[dict]:
    return block["metadata"]["panelBankSectionConfig"]["panels"]


def _filters(runset: dict) -> dict:
    return {(f["key"]["section"], f["key"]["name"]): (f["op"], f["value"]) for f in runset["filters"]["filters"]}


def test_smoke_study_run_files_hold_what_the_report_plots(smoke_study):
    out = smoke_study.out
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    traj = _trajectory_runs(out, cfg)
    train_steps = TABLES["train_metrics"].read(out).groupby(["arm", "seed", "generation"]).size()
    for (arm, seed), recs in traj.items():
        (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
        assert (run.run_group, run.job_type, run.display_name) == ("smoke", arm, f"{arm}/seed{seed}")
        assert {arm, f"seed{seed}", "smoke"} <= set(run.tags)
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        assert config["arm"] == arm and config["seed"] == seed and config["study"] == "smoke"
        metrics = [r.metric for r in recs if r.WhichOneof("record_type") == "metric"]
        assert any(m.glob_name == "*" and m.step_metric == "generation" for m in metrics)
        rows = history(recs)
        assert [r["_step"] for r in rows] == [r["generation"] for r in rows] == list(range(cfg.generations))
        for row in rows:  # every metric a panel plots, with its interval, at every step
            for m in line_metrics():
                assert {m, f"{m}_lo", f"{m}_hi"} <= set(row), (arm, seed, m)
            assert {"null_lean_index", "ppl_mean", "ppl_ref_mean", "train_loss"} <= set(row)
            assert row["articles/_type"] == "table-file" and row["articles/nrows"] == 8  # SAMPLE_ARTICLES
            # the loss chart's table holds every generation so far: one row per optimizer step of G0..Gg
            g = row["generation"]
            want = sum(train_steps[arm, seed, h] for h in range(g + 1))
            assert row["train_loss_curve_table/nrows"] == want, (arm, seed, g)
        chart = [
            json.loads(i.value_json)
            for r in recs
            if r.WhichOneof("record_type") == "config"
            for i in r.config.update
            if list(i.nested_key) == ["_wandb", "visualize", "train_loss_curve"]
        ]
        assert chart and chart[-1]["panel_config"]["fieldSettings"] == {
            "x": "step",
            "y": "loss",
            "stroke": "generation",
        }
    # The study-level runs: the summary (written by `run`) and the analysis, at step 0 of their first invocation.
    found = runs(out)
    for job, tables in (
        ("summary", ("summary_arms", "summary")),
        ("analyze-within", ("arm_contrasts", "neuron_counts")),
    ):
        ((folder, recs),) = found[tracking._run_id(cfg, job)]
        (row,) = history(recs)
        assert row["_step"] == 0 and row["invocation"] == 0
        for t in tables:
            assert row[f"{t}/_type"] == "table-file", (job, t)


def test_the_report_built_with_wandb_workspaces_selects_groups_and_draws_the_logged_metrics(smoke_study):
    out = smoke_study.out
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    report = wandb_report([load(out)], "my-team", "biasamp")
    spec = report_spec(report)
    assert spec["project"] == {"name": "biasamp", "entityName": "my-team"}
    blocks = spec["spec"]["blocks"]
    grids = [b for b in blocks if b["type"] == "panel-grid"]
    arms = sorted(cfg.arms)
    logged = set()
    for recs in _trajectory_runs(out, cfg).values():
        for row in history(recs):
            logged |= set(row)
    plotted = set()
    for grid in grids:
        (runset,) = grid["metadata"]["runSets"]
        filters = _filters(runset)
        assert filters[("run", "group")] == ("=", "smoke")  # the study is the runs' W&B group, not a config key
        if filters[("run", "jobType")][1] == arms:  # trajectory runs: study-level runs are not an arm
            assert runset["grouping"] == [{"section": "config", "name": "arm.value"}]
            for panel in _panels(grid):
                c = panel["config"]
                assert c["groupBy"] == "arm.value" and c["groupAgg"] == "mean" and c["groupArea"] == "minmax"
                assert c["aggregate"] is True
                if panel["viewType"] == "Run History Line Plot":
                    assert c["xAxis"] == "generation"
                    plotted |= set(c["metrics"])
                else:
                    assert panel["viewType"] == "Bar Chart"
                    plotted |= set(c["metrics"])
        else:  # the analysis run's tables
            assert filters[("run", "jobType")] == ("IN", ["analyze-within"])
            weave = json.dumps(_panels(grid))
            for t in ("arm_contrasts", "arm_trends", "neuron_counts"):
                assert f'"{t}"' in weave, t
    assert {f"{m}{s}" for m in line_metrics() for s in ("", "_lo", "_hi")} <= plotted
    assert set(bar_metrics()) <= plotted
    assert plotted <= logged, plotted - logged
    text = "\n".join(json.dumps(b) for b in blocks if b["type"] == "markdown-block")
    assert "Arm contrasts at G2" in text and "Neurons flagged" in text and "null: expected" in text
    contrasts = pd.read_parquet(out / "arm_contrasts.parquet")
    last = contrasts[(contrasts.generation == 2) & (contrasts.target == "share_right")]
    for r in last.itertuples():  # the estimates the page states, in the Report's text
        assert f"| {r.arm} | share_right | {r.estimate:.3g} |" in text


def test_several_studies_are_several_run_sets(smoke_study, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    summary = pd.read_parquet(smoke_study.out / "summary_arms.parquet").assign(study="other")
    TABLES["summary_arms"].write(summary, other)
    spec = report_spec(wandb_report([load(smoke_study.out), load(other)], "e", "p"))
    first = next(b for b in spec["spec"]["blocks"] if b["type"] == "panel-grid")
    groups = [_filters(r)[("run", "group")][1] for r in first["metadata"]["runSets"]]
    assert groups == ["smoke", "other"]


def test_report_without_an_entity_is_one_line_and_writes_nothing(smoke_study, tmp_path):
    res = CliRunner().invoke(app, ["report", str(smoke_study.out), "--out", str(tmp_path / "r"), "--wandb", "proj"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "--wandb proj: a W&B Report belongs to an entity: ENTITY/PROJECT" in res.output
    assert not (tmp_path / "r").exists()


def test_report_that_cannot_reach_wandb_writes_the_page_and_exits_1(smoke_study, tmp_path, monkeypatch):
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "a" * 40, "WANDB_HTTP_TIMEOUT": "3"}
    res = cli("report", str(smoke_study.out), "--out", str(tmp_path / "r"), "--wandb", "team/proj", env=env)
    assert res.returncode == 1 and (tmp_path / "r" / "index.html").exists(), res.stdout + res.stderr
    assert res.stderr.startswith("error: W&B Report not published") and res.stderr.count("\n") == 1, res.stderr


def test_offline_runs_continue_their_steps_when_a_study_is_extended_or_analyzed_again(study_dict, tmp_path):
    """The real wandb, offline: an extended trajectory and a study-level stage run twice each write a
    second folder under the same run id whose steps follow the first's (`wandb sync` uploads a
    resumed run's folders in order of start time)."""
    d = study_dict(generations=1, wandb={"mode": "offline"}, out_dir=str(tmp_path / "out"))
    cfg = from_dict(d)
    with artifacts.scratch_space(cfg.output_dir):
        prepare_study(cfg, log=lambda m: None)
        run_trajectory(cfg, "synthetic", 0, log=lambda m: None)
        run_trajectory(from_dict({**d, "generations": 2}), "synthetic", 0, log=lambda m: None)  # extended
        for _ in range(2):
            tracking.log_study_tables(cfg, "summary", {"summary": pd.DataFrame({"x": [1]})}, log=lambda m: None)
    found = runs(cfg.output_dir)
    folders = found[tracking._run_id(cfg, "synthetic-seed0")]
    assert [[r["_step"] for r in history(recs)] for _, recs in folders] == [[0], [1]]
    assert [[r["generation"] for r in history(recs)] for _, recs in folders] == [[0], [1]]
    second = history(folders[1][1])[0]
    assert second["train_loss_curve_table/nrows"] == 2 * 2  # G0's and G1's steps: 6 articles, batch 3
    study_level = found[tracking._run_id(cfg, "summary")]
    assert [[r["_step"] for r in history(recs)] for _, recs in study_level] == [[0], [1]]


# --- sweeps and the dose-response -------------------------------------------------------------------


def _planted_scores(values, effect: float, seed: int = 0, n: int = 300) -> pd.DataFrame:
    """Scores where each article is right-leaning with probability 0.3 + effect x value x g/2 (the
    baseline arm: value 0) and the quality index falls by effect x value per generation."""
    rng = np.random.default_rng(seed)
    rows = []
    arms = [("synthetic", 0.0)] + [(f"preservation-{v}".replace(".", "_"), v) for v in values]
    for arm, v in arms:
        for s in (0, 1):
            for g in range(3):
                right = rng.random(n) < 0.3 + effect * v * g / 2
                other = rng.random(n) < 0.5
                p = np.where(
                    right[:, None], [0.1, 0.1, 0.8], np.where(other[:, None], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1])
                )
                frame = pd.DataFrame(p, columns=["p_left", "p_center", "p_right"])
                frame[["null_p_left", "null_p_center", "null_p_right"]] = 1 / 3
                frame["tqi"] = 2.0 - effect * v * g + rng.normal(0, 0.1, n)
                frame["ppl"] = 30.0
                rows.append(
                    frame.assign(study="d", arm=arm, seed=s, generation=g, article_id=[f"a{i}" for i in range(n)])
                )
    return pd.concat(rows, ignore_index=True)


def _dose_study(values, effect: float) -> dict:
    contrasts, trends = arm_contrasts(_planted_scores(values, effect), "synthetic", n_boot=400)
    sweep = {"arm": "preservation", "key": "mix.real_fraction", "values": list(values)}
    return {"label": "d", "manifest": {"config": {"sweep": sweep}}, "contrasts": contrasts, "trends": trends}


def test_dose_response_recovers_a_planted_dose_and_finds_none_where_none_is(tmp_path):
    values = [0.1, 0.25, 0.5, 1.0]
    d = dose_response(_dose_study(values, effect=0.4))
    assert set(d["target"]) == {t for t, _ in dose_targets()} and list(d["value"].unique()) == values
    right = d[d.target == "share_right"].set_index("value")
    for v in values:  # truth: change from G0 = 0.4 v; minus the baseline (no change) at G2 = 0.4 v
        assert right.loc[v, "change_lo"] < 0.4 * v < right.loc[v, "change_hi"], (v, right.loc[v])
        assert right.loc[v, "contrast_lo"] < 0.4 * v < right.loc[v, "contrast_hi"], (v, right.loc[v])
    assert (right["change_p"].iloc[-1] < 1e-3) and right.loc[1.0, "baseline"] == "synthetic"
    tqi = d[d.target == "tqi_mean"].set_index("value")
    assert np.polyfit(values, tqi["change"], 1)[0] == pytest.approx(-0.8, abs=0.05)  # -effect x 2 generations
    null = dose_response(_dose_study(values, effect=0.0))
    for target in ("share_right", "tqi_mean"):
        part = null[null.target == target]
        covered = ((part["change_lo"] < 0) & (part["change_hi"] > 0)).mean()
        assert covered >= 0.75, part  # 95% CIs: at most one of four misses by chance
    assert fig_dose_response([_dose_study(values, effect=0.4)], tmp_path) == "dose_response"
    assert (tmp_path / "dose_response.png").exists() and "mix.real_fraction" in (
        tmp_path / "dose_response.svg"
    ).read_text()
    assert dose_response({"label": "x", "manifest": {"config": {}}, "contrasts": None, "trends": None}) is None


def test_a_sweep_expands_into_arms_named_by_value_that_resume_and_log_their_dose(study_dict, monkeypatch):
    d = study_dict(
        arms={"synthetic": {"mix": "replace"}, "pres": {"mix": "preserve", "real_fraction": 0.5}},
        sweep={"arm": "pres", "key": "mix.real_fraction", "values": [0.25, 1.0]},
    )
    cfg = from_dict(d)
    assert list(cfg.arms) == ["synthetic", "pres-0_25", "pres-1_0"]
    assert [cfg.arms[a].mix.real_fraction for a in ("pres-0_25", "pres-1_0")] == [0.25, 1.0]
    # The resolved config (a manifest) validates to the same config and hash; the sweep is not science.
    again = from_dict(cfg.model_dump(mode="json"))
    assert again == cfg and again.science_hash() == cfg.science_hash()
    written = from_dict({**d, "arms": {**{k: v.model_dump(mode="json") for k, v in cfg.arms.items()}}, "sweep": None})
    assert written.science_hash() == cfg.science_hash()  # the same arms written by hand: the same study
    logged = []
    run = SimpleNamespace(define_metric=lambda *a, **k: None)
    monkeypatch.setattr(tracking, "_init", lambda cfg, run_id, name, job, tags, extra, log: logged.append(extra) or run)
    tracking.trajectory_run(from_dict({**d, "wandb": {"mode": "offline"}}), "pres-0_25", 0)
    tracking.trajectory_run(from_dict({**d, "wandb": {"mode": "offline"}}), "synthetic", 0)
    assert logged == [
        {"arm": "pres-0_25", "seed": 0, "sweep_key": "mix.real_fraction", "sweep_value": 0.25},
        {"arm": "synthetic", "seed": 0},
    ]


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"arm": "nope", "key": "mix.real_fraction", "values": [0.1]}, "sweep.arm: 'nope' is not an arm"),
        ({"arm": "synthetic", "key": "train.lr", "values": [0.1]}, "sweep.arm: 'synthetic' is the baseline arm"),
        ({"arm": "pres", "key": "mix.real_fraction", "values": [0.1, 0.1]}, "sweep.values: two values give"),
        ({"arm": "pres", "key": "mix.real_fraction", "values": [0.1, 2]}, "arms.pres-2.mix.real_fraction"),
        ({"arm": "pres", "key": "mix.bogus", "values": [0.1]}, "arms.pres-0_1.mix.bogus: unknown key"),
        ({"arm": "pres", "key": "mix.real_fraction", "values": []}, "sweep.values"),
    ],
)
def test_a_bad_sweep_is_one_line_naming_the_key(tmp_path, sweep, message):
    d = tiny_study(tmp_path, arms={"synthetic": {"mix": "replace"}, "pres": {"mix": "preserve"}}, sweep=sweep)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    res = cli("validate", str(tmp_path / "s.yaml"))
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
