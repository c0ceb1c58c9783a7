"""The loop end to end: tables, resume, refusal of a changed config, determinism."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from conftest import SMOKE_KEY, TWO_ARMS, cli, folder_tree

from biasamp import artifacts
from biasamp.config import QualityConfig, from_dict, load_config
from biasamp.stages import generate, trajectory
from biasamp.stages.trajectory import run_trajectory
from biasamp.study import prepare_study
from biasamp.tables import TABLES

ROOT = Path(__file__).parents[1]


def _articles(out):
    return (
        pd.read_parquet(out / "articles")
        .sort_values(["arm", "seed", "generation", "article_id"])
        .reset_index(drop=True)
    )


def test_trajectory_tables_and_checkpoints(study_dict):
    cfg = from_dict(study_dict(arms={"acc": {"mix": "accumulate"}}))
    prepare_study(cfg, log=lambda m: None)
    assert run_trajectory(cfg, "acc", 0, log=lambda m: None) == 2
    out = cfg.output_dir
    df = _articles(out)
    assert list(pd.read_parquet(TABLES["articles"].file(out, arm="acc", seed=0, generation=1)).columns) == list(
        TABLES["articles"].columns
    )
    assert df.groupby("generation").size().to_dict() == {0: 6, 1: 6}
    assert set(df["source_label"]) == {"left", "center", "right"} and (df["study"] == "t").all()
    assert (df["n_tokens"] > 0).all() and (df["n_tokens"] <= 16).all()  # title + 1 block, 8 new tokens each
    for g in (0, 1):
        assert (artifacts.checkpoint_dir(out, "acc", 0, g) / "model.safetensors").exists()
    assert run_trajectory(cfg, "acc", 0, log=lambda m: None) == 0  # complete: nothing to do


def test_interrupted_run_resumes_to_the_same_result(study_dict, tmp_path, monkeypatch):
    d = study_dict(generations=3, arms={"pres": {"mix": "preserve", "real_fraction": 0.5}})
    fresh = from_dict({**d, "out_dir": str(tmp_path / "fresh")})
    prepare_study(fresh, log=lambda m: None)
    run_trajectory(fresh, "pres", 0, log=lambda m: None)

    broken = from_dict({**d, "out_dir": str(tmp_path / "broken")})
    prepare_study(broken, log=lambda m: None)
    real_write = generate.write_articles
    calls = []

    def dies_in_g1(model, tok, sources, cfg, progress=None, checkpoint=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed while G1 was writing")
        return real_write(model, tok, sources, cfg, progress, checkpoint)

    monkeypatch.setattr(trajectory, "write_articles", dies_in_g1)
    with pytest.raises(RuntimeError, match="killed"):
        run_trajectory(broken, "pres", 0, log=lambda m: None)
    out = broken.output_dir
    assert artifacts.completed_generations(out, "pres", 0) == 1
    assert artifacts.checkpoint_dir(out, "pres", 0, 1).exists()  # G1 trained and saved, not yet written
    assert not list((out / "articles").glob("*.tmp"))
    monkeypatch.setattr(trajectory, "write_articles", real_write)
    log = []
    assert run_trajectory(broken, "pres", 0, log=log.append) == 2
    assert any("resuming after G0" in m for m in log) and any("checkpoint found" in m for m in log)
    pd.testing.assert_frame_equal(_articles(fresh.output_dir), _articles(out))


def test_damaged_artifacts_are_set_aside_and_rebuilt_exactly(study_dict, tmp_path):
    """A truncated checkpoint, a deleted one, a truncated articles file: the resume sets each aside
    (renamed, kept), runs the generation again, and ends with the bytes of an uninterrupted run."""
    fresh = from_dict(study_dict(out_dir=str(tmp_path / "fresh")))
    prepare_study(fresh, log=lambda m: None)
    run_trajectory(fresh, "synthetic", 0, log=lambda m: None)
    cfg = from_dict(study_dict())
    out = cfg.output_dir
    prepare_study(cfg, log=lambda m: None)
    run_trajectory(cfg, "synthetic", 0, log=lambda m: None)
    weights = artifacts.checkpoint_dir(out, "synthetic", 0, 1) / "model.safetensors"
    for damage in ("truncate checkpoint", "delete checkpoint", "truncate articles"):
        if damage == "truncate checkpoint":
            weights.write_bytes(weights.read_bytes()[:1000])
        elif damage == "delete checkpoint":
            import shutil

            shutil.rmtree(weights.parent)
        else:
            f = TABLES["articles"].file(out, arm="synthetic", seed=0, generation=0)
            f.write_bytes(f.read_bytes()[:200])
            assert prepare_study(cfg, log=lambda m: None) == [("synthetic", 0)]  # finished, but not whole
        log = []
        assert run_trajectory(cfg, "synthetic", 0, log=log.append) >= 1
        assert any("damaged" in m for m in log), (damage, log)
        for table in ("articles", "scores", "training"):
            pd.testing.assert_frame_equal(pd.read_parquet(out / table), pd.read_parquet(tmp_path / "fresh" / table))
        assert weights.read_bytes() == (tmp_path / "fresh" / weights.relative_to(out)).read_bytes()
    kept = sorted(p.name for p in out.rglob(".*.damaged-*"))
    assert len(kept) >= 3 and any(k.startswith(".gen1.damaged") for k in kept), kept  # the evidence is kept


def test_a_changed_config_is_refused_and_a_longer_study_extends(study_dict):
    cfg = from_dict(study_dict(generations=1))
    prepare_study(cfg, log=lambda m: None)
    with pytest.raises(ValueError, match=r"differs in: .*train.lr.*Use another --out"):
        prepare_study(from_dict(study_dict(generations=1, train={"lr": 0.1})), log=lambda m: None)
    longer = from_dict(study_dict(generations=2, seeds=[0, 1]))
    assert prepare_study(longer, log=lambda m: None) == [("synthetic", 0), ("synthetic", 1)]
    run_trajectory(longer, "synthetic", 0, log=lambda m: None)
    manifest = (longer.output_dir / "manifest.json").read_text()
    for shorter, says in ((dict(generations=1), "holds G0..G1; generations=1"), (dict(seeds=[1]), "of seeds \\[0\\]")):
        with pytest.raises(ValueError, match=f"{says}.*never shrinks it"):  # the manifest would claim less
            prepare_study(from_dict(study_dict(**{"generations": 2, **shorter})), log=lambda m: None)
    assert (longer.output_dir / "manifest.json").read_text() == manifest


def _sorted(path):
    return pd.read_parquet(path).sort_values(["arm", "seed", "generation", "article_id"]).reset_index(drop=True)


def test_score_command_rescores_a_finished_study(study_dict):
    cfg = from_dict(study_dict(seeds=[1]))  # seed 1: ppl_ref must use the same fixed reference model
    prepare_study(cfg, log=lambda m: None)
    run_trajectory(cfg, "synthetic", 1, log=lambda m: None)
    out = cfg.output_dir
    before = pd.read_parquet(out / "scores")
    (out / "scores" / "synthetic__seed1__gen1.parquet").unlink()
    res = cli("score", str(out), "--set", "scoring.bootstrap=20")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Loading weights" not in res.stderr and "it/s]" not in res.stderr  # no loader's bars in a pipe
    pd.testing.assert_frame_equal(
        _sorted(out / "scores"), before.sort_values(["arm", "seed", "generation", "article_id"]).reset_index(drop=True)
    )
    assert len(pd.read_parquet(out / "summary.parquet")) == 2
    bad = cli("score", str(out), "--set", "scoring.classifier.labels={}")
    assert bad.returncode == 2 and "scoring.classifier" in bad.stderr


def test_scores_made_with_other_settings_never_mix(study_dict):
    """A resume asking for other scoring settings stops before writing anything; `biasamp score`
    rescores every generation; the manifest then says how they were made; summaries refuse a mix."""
    from biasamp.stages.summarize import SETTINGS_KEY, settings_of_scores, write_summaries
    from biasamp.tables import file_metadata, write_parquet

    cfg = from_dict(study_dict(generations=1))
    prepare_study(cfg, log=lambda m: None)
    run_trajectory(cfg, "synthetic", 0, log=lambda m: None)
    out = cfg.output_dir
    manifest = (out / "manifest.json").read_text()
    (made,) = settings_of_scores(out)
    assert '"perplexity_max_tokens": 512' in made
    longer = from_dict(study_dict(generations=2, scoring={**study_dict()["scoring"], "perplexity_max_tokens": 8}))
    with pytest.raises(ValueError, match=r"different scoring settings.*biasamp score"):
        prepare_study(longer, log=lambda m: None)
    assert (out / "manifest.json").read_text() == manifest  # nothing recorded for a run that did not happen
    res = cli("score", str(out), "--set", "scoring.perplexity_max_tokens=8")
    assert res.returncode == 0, res.stdout + res.stderr
    (now,) = settings_of_scores(out)
    assert '"perplexity_max_tokens": 8' in now
    assert '"perplexity_max_tokens": 8' in (out / "manifest.json").read_text()
    assert prepare_study(longer, log=lambda m: None) == [("synthetic", 0)]  # now the resume may go on
    # a scores file from elsewhere (other settings) is refused by the summaries, with the way out
    f = out / "scores" / "synthetic__seed0__gen1.parquet"
    write_parquet(
        pd.read_parquet(out / "scores" / "synthetic__seed0__gen0.parquet").assign(generation=1),
        f,
        metadata={SETTINGS_KEY: made},
    )
    assert file_metadata(f, SETTINGS_KEY) == made
    with pytest.raises(ValueError, match=r"scores: made with different scoring settings.*biasamp score"):
        write_summaries(out, pd.read_parquet(out / "scores"), 20)


def _ran_cleanly(res, out, systmp, cache) -> None:
    """A smoke study's `biasamp run`: all 8 trajectories, on a loopback Ray, nothing left in the temp
    dir or the user's cache, no temp file or scratch folder left in OUT."""
    assert res.returncode == 0, res.stdout + res.stderr
    assert "finished (8/8 trajectories)" in res.stdout
    assert "Ray at 127.0.0.1:" in res.stdout  # the private Ray listens on loopback only
    assert list(systmp.iterdir()) == [] and not list(cache.rglob("*")), (list(systmp.iterdir()), list(cache.rglob("*")))
    assert not list(out.rglob(".*.tmp")) and not (out / artifacts.SCRATCH).exists()


def test_smoke_study_via_ray_writes_every_table_then_analysis_and_report(smoke_study):
    """`biasamp run configs/smoke.yaml` (the session's study), then `analyze` and `report` on it."""
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    outs, res = [smoke_study.out], smoke_study.run
    _ran_cleanly(res, outs[0], smoke_study.systmp, smoke_study.cache)
    a = _articles(outs[0])
    assert len(a) == len(cfg.arms) * len(cfg.seeds) * cfg.generations * 12
    assert a.groupby(["arm", "seed"])["text"].apply(lambda s: s.nunique()).min() > 1
    for arm in cfg.arms:
        assert (outs[0] / "logs" / f"{arm}__seed0.log").exists()
    assert list((outs[0] / "wandb").glob("offline-run-*"))
    for f in outs[0].rglob("*"):  # the W&B key in the environment is never written to an artifact or a log
        if f.is_file() and f.stat().st_size < 50_000_000:
            assert SMOKE_KEY.encode() not in f.read_bytes(), f
    # What each generation trained on: the preserve arms mix in round(real_fraction x N) real articles
    # a generation, the curation arm resamples D_(g-1) to N, every arm's G0 is the real corpus.
    training = pd.read_parquet(outs[0] / "training")
    assert list(training.columns) == list(TABLES["training"].columns)
    n = len(pd.read_parquet(outs[0] / "corpus" / "main.parquet"))
    real = training[training.source == "real"].groupby(["arm", "seed", "generation"]).size()
    for arm in ("preservation", "preservation_balanced"):
        for seed in (0, 1):
            assert [real[(arm, seed, g)] for g in (1, 2)] == [round(0.25 * n)] * 2
    assert (training[training.generation == 0]["source"] == "real").all()
    cur = training[(training.arm == "curation") & (training.generation == 2)]
    assert len(cur) == 2 * n and set(cur["source"]) == {"G1"}
    metrics = pd.read_parquet(outs[0] / "train_metrics")
    assert metrics.groupby(["arm", "seed", "generation"]).size().min() >= 1 and (metrics["lr"] == 5e-4).all()
    # Each generation's wall time per stage, and the run's split of them at the end.
    for stage in ("train", "capture", "generate", "score"):
        assert (metrics[f"{stage}_seconds"] > 0).all(), stage
    assert re.search(
        r"time by stage over 24 generations: train \d+ s \(\d+%, median [\d.]+ s\), capture .*"
        r"generate .*score ",
        res.stdout,
    ), res.stdout
    # Every table written is what biasamp.tables declares.
    for table in TABLES.values():
        if table.where(outs[0]).exists():
            frame = table.read(outs[0])
            assert list(frame.columns) == list(table.columns), table.name
            table.check(frame)
    assert list(pd.read_parquet(outs[0] / "scores").columns) == list(TABLES["scores"].columns)
    summary = pd.read_parquet(outs[0] / "summary.parquet")
    assert len(summary) == 4 * 2 * 3 and {
        "share_right",
        "share_right_lo",
        "share_right_hi",
        "tqi_mean",
        "tqi_mean_lo",
        "tqi_mean_hi",
        "ppl_mean",
        "ppl_ref_mean",
    } <= set(summary.columns)
    assert (pd.read_parquet(outs[0] / "summary_arms.parquet")["n_seeds"] == 2).all()
    # The statistics stage on the smoke study's own neurons and summary.
    res = smoke_study.analyze
    assert res.returncode == 0, res.stdout + res.stderr
    tests = pd.read_parquet(outs[0] / "neuron_tests.parquet")
    assert set(tests["target"]) == {"share_right", "tqi_mean"}
    assert set(tests["kind"]) == {"weight", "activation", "block_activation"}
    assert len(tests[(tests.kind == "weight") & (tests.stat == "mean")]) == 2 * 2 * 64  # 2 targets x 2 layers x 64
    assert (outs[0] / "neuron_tests_summary.json").exists()
    assert "2 generation-to-generation differences" in res.stderr  # 3 generations: the tests warn
    contrasts = pd.read_parquet(outs[0] / "arm_contrasts.parquet")
    assert set(contrasts["arm"]) == {"preservation", "curation", "preservation_balanced"}
    assert set(contrasts["baseline"]) == {"synthetic"}
    assert set(contrasts["generation"]) == {0, 1, 2} and contrasts["seed_variation_in_ci"].all()
    # The report from those tables: every figure, every arm named; the W&B offline runs took the logs.
    rep = smoke_study.report
    assert rep.returncode == 0, rep.stdout + rep.stderr
    page = (outs[0] / "report" / "index.html").read_text()
    assert page.count("<img ") >= 5
    for arm in cfg.arms:
        assert arm in (outs[0] / "report" / "leaning_shares.svg").read_text()
    assert len(list((outs[0] / "wandb").glob("offline-run-*"))) >= 8 + 2  # trajectories, summary, analyze


def test_status_of_the_finished_smoke_study_and_its_eta_replayed(smoke_study):
    """`biasamp status` on the session's finished study: every trajectory done, the medians of its
    generations and stages; replayed from its logs at half its run (`--as-of`), the ETA then is within
    25% of the time the run really had left (bench/status_eta.py prints every point and the naive
    estimate's error beside it)."""
    from bench.status_eta import log_span, replay

    res = cli("status", str(smoke_study.out), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    s = json.loads(res.stdout)
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    assert s["state"] == "finished" and s["pid"] is None and s["eta"] is None
    assert s["generations_done"] == s["generations_total"] == len(cfg.arms) * len(cfg.seeds) * cfg.generations
    assert {t["state"] for t in s["trajectories"]} == {"done"} and len(s["trajectories"]) == 8
    assert set(s["median_stage_seconds"]) == {"train", "capture", "generate", "score"}
    assert 0 < sum(s["median_stage_seconds"].values()) <= s["median_generation_seconds"]
    text = cli("status", str(smoke_study.out)).stdout.splitlines()
    assert text[0].startswith(f"study smoke in {smoke_study.out}: finished; 24/24 generations"), text
    assert len(text) == 2 + 8 + 1 and text[-1].startswith("median generation "), text
    start, end = log_span(smoke_study.out)
    half = start + (end - start) / 2
    stamp = datetime.fromtimestamp(half).isoformat(sep=" ", timespec="milliseconds")
    then = json.loads(cli("status", str(smoke_study.out), "--json", "--as-of", stamp).stdout)
    assert then["state"] == "running" and 0 < then["generations_done"] < then["generations_total"]
    assert {t["state"] for t in then["trajectories"]} >= {"done", "running"}
    (row,) = replay(smoke_study.out, [0.5])
    assert abs(row["ours_s"] - then["eta_seconds"]) < 0.01  # the bench reads what the command prints (ms stamps)
    assert row["ours_error"] <= 0.25, row


@pytest.mark.extended  # a second smoke study (a minute and a half on 2 cores): make test-all; resume tests guard bytes
def test_smoke_study_via_ray_is_deterministic_and_rerun_is_a_noop(smoke_study, monkeypatch):
    """`biasamp run configs/smoke.yaml` again into a second folder: identical articles and scores
    tables; then resuming there finds nothing to do but the debris an interrupted run left."""
    systmp, env = smoke_study.systmp, smoke_study.env
    outs = [smoke_study.out, smoke_study.out.with_name("smoke-study-with-a-long-path-b")]
    again = cli("run", "configs/smoke.yaml", "--out", str(outs[1]), "--set", "wandb.mode=offline", env=env)
    _ran_cleanly(again, outs[1], systmp, smoke_study.cache)
    pd.testing.assert_frame_equal(_articles(outs[0]), _articles(outs[1]))
    pd.testing.assert_frame_equal(_sorted(outs[0] / "scores"), _sorted(outs[1] / "scores"))
    # Resuming, on the second folder (the first is the session's, read by other tests).
    (outs[1] / "summary_arms.parquet").unlink()  # as if killed after the last trajectory, ...
    monkeypatch.setenv("TMPDIR", str(systmp))  # the scratch folder the CLI uses (OUT's path is long: in TMPDIR)
    monkeypatch.setattr(tempfile, "tempdir", None)
    debris = [
        outs[1] / "articles" / ".synthetic__seed0__gen2.parquet.a1b2c3.tmp",  # ... mid-write,
        outs[1] / "checkpoints" / "synthetic" / "seed0" / ".gen2.tmp" / "model.safetensors",
        artifacts.scratch_dir(outs[1]) / "tmpdir" / "tmpab12cd" / "articles.table.json",
    ]  # ... with W&B media
    assert debris[-1].is_relative_to(systmp)  # OUT's path here is too long for W&B's sockets: scratch in TMPDIR
    for f in debris:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("partial")
    again = cli("run", "configs/smoke.yaml", "--out", str(outs[1]), env=env)
    assert again.returncode == 0 and "nothing to do: all 8 trajectories" in again.stdout
    assert "removed 3 temp file(s) an interrupted run left" in again.stdout
    assert not any(f.exists() for f in debris) and not (outs[1] / "checkpoints/synthetic/seed0/.gen2.tmp").exists()
    assert list(systmp.iterdir()) == []
    assert (outs[1] / "summary_arms.parquet").exists()  # the study-level stage is finished on resume
    bad = cli("run", "configs/smoke.yaml", "--out", str(outs[1]), "--set", "train.epochs=3")
    assert bad.returncode == 2 and "differs in" in bad.stderr


def test_a_trajectory_that_cannot_fit_the_machine_is_an_error(tmp_path):
    res = cli("run", "configs/smoke.yaml", "--out", str(tmp_path / "x"), "--set", "resources.gpus_per_trajectory=1")
    assert res.returncode == 2
    assert "resources.gpus_per_trajectory: a trajectory asks for 1 GPU, this machine has 0" in res.stderr


def test_validate_cli():
    ok = cli("validate", "configs/smoke.yaml")
    assert ok.returncode == 0 and "8 trajectories" in ok.stdout
    bad = cli("validate", "configs/smoke.yaml", "--set", "generation.batch_size=0")
    assert bad.returncode == 2 and "configs/smoke.yaml: generation.batch_size: Input should be greater" in bad.stderr


def test_generation_progress_is_logged_at_most_once_a_minute(monkeypatch):
    clock = iter([0.0, 30.0, 61.0, 90.0, 125.0])
    monkeypatch.setattr(trajectory.time, "time", lambda: next(clock))
    log = []
    report = trajectory._every_minute(lambda m: log.append(f"[a/seed0] G1/2: {m}"))
    for done in (10, 20, 30, 40):
        report(done, 40)
    assert log == ["[a/seed0] G1/2: 20/40 prompts, 1 min left"]


@pytest.mark.extended  # Ray Train and DeepSpeed in every trajectory: two minutes; make test-all (CI: the ZeRO tests)
def test_study_with_deepspeed_training_queues_trajectories_around_their_workers(tmp_path):
    """The smoke study with train.backend deepspeed (2 CPU workers, ZeRO-2), each trajectory a Ray
    task launching a Ray Train run: on 2 CPUs one trajectory at a time, no deadlock, same tables."""
    res = cli(
        "run",
        "configs/smoke.yaml",
        "--out",
        str(tmp_path / "ds"),
        "--set",
        "seeds=[0]",
        "--set",
        TWO_ARMS,
        "--set",
        "generations=1",
        "--set",
        "wandb.mode=disabled",
        "--set",
        "train.backend=deepspeed",
        "--set",
        "train.deepspeed={workers: 2, micro_batch: 1, cpus_per_worker: 0.5, zero_stage: 2}",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "at most 1 trajectories at once" in res.stdout
    assert "finished (2/2 trajectories)" in res.stdout
    articles = _articles(tmp_path / "ds")
    assert len(articles) == 2 * 12 and articles["text"].str.len().gt(0).all()
    assert len(list((tmp_path / "ds" / "scores").glob("*.parquet"))) == 2
    assert not list((tmp_path / "ds").rglob("*.train"))  # the weight handoff folders are cleaned up


def test_a_run_that_fails_on_its_data_does_not_claim_the_folder(tmp_path):
    out = tmp_path / "x"
    bad = cli("run", "configs/smoke.yaml", "--out", str(out), "--set", "corpora.main.source=/no/such/corpus")
    assert bad.returncode != 0 and "/no/such/corpus" in bad.stderr
    assert not (out / "manifest.json").exists()  # so the corrected config is not refused


FOREIGN = {  # another tool's hidden files, named as biasamp names its temp files, where biasamp writes
    ".draft.tmp": "a",
    "notes/.cache.tmp": "b",
    "logs/.rotate.tmp": "c",
    "wandb/.w.tmp": "d",
}


def _plant(folder: Path, files: dict) -> dict:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder_tree(folder)


def test_a_folder_that_is_not_a_study_loses_nothing(tmp_path):
    """`run` and `analyze` on a folder that is not a study delete nothing in it, refused or not; a
    foreign `.scratch` or `.lock` (names biasamp would use, then remove) is refused in one line."""
    foreign = tmp_path / "foreign"
    before = _plant(foreign, {**FOREIGN, "scores.parquet": "not parquet"})
    refused = cli("run", "configs/smoke.yaml", "--out", str(foreign), "--set", "corpora.main.source=/no/such/corpus")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    analyzed = cli("analyze", str(foreign))
    assert analyzed.returncode == 2 and len(analyzed.stderr.strip().splitlines()) == 1, analyzed.stderr
    assert folder_tree(foreign) == before
    # A folder of the authors' numbers (analyze reads it; it is no study): at a short path, where
    # OUT/.scratch would be biasamp's temp space.
    paper = Path(tempfile.mkdtemp(prefix="bp", dir="/tmp")) / "p"
    made = cli(
        "import-paper",
        str(ROOT.parent / "shared/data/paper-results/Bias_Performance_and_Generation_Quality"),
        "--out",
        str(paper),
        "--bootstrap",
        "20",
    )
    assert made.returncode == 0, made.stderr
    for name, what in ((".scratch/keep.txt", ".scratch exists"), (".lock", "not a biasamp lock")):
        kept = _plant(paper, {name: "theirs"})
        res = cli("analyze", str(paper), "--bootstrap", "20")
        assert res.returncode == 2 and what in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert folder_tree(paper) == kept
        (paper / ".lock").unlink(missing_ok=True)
        shutil.rmtree(paper / ".scratch", ignore_errors=True)
    assert cli("analyze", str(paper), "--bootstrap", "20").returncode == 0 and not (paper / ".lock").exists()
    shutil.rmtree(paper.parent)


def test_a_study_folder_loses_only_what_its_writers_left(study_dict):
    """In a study folder, the owner removes the temp files interrupted biasamp writers left (at the
    top, in its tables, checkpoints and logs) and its scratch folder; a user's folder and W&B's stay."""
    cfg = from_dict(study_dict())
    prepare_study(cfg, log=lambda m: None)
    out = cfg.output_dir
    ours = {".summary.parquet.x1.tmp": "", "articles/.part.parquet.tmp": "", "checkpoints/.gen0.tmp/w": ""}
    _plant(out, ours)
    _plant(artifacts.scratch_dir(out), {"tmpdir/x": ""})  # OUT/.scratch, or in TMPDIR for a long path
    kept = _plant(out, {"notes/.cache.tmp": "b", "wandb/.w.tmp": "d"})
    lines = []
    with artifacts.own_output_dir(out, log=lines.append):
        pass
    assert lines == [f"removed 4 temp file(s) an interrupted run left in {out}"]
    after = folder_tree(out)
    assert set(kept) - set(after) == {*ours, "checkpoints/.gen0.tmp"} and not artifacts.scratch_dir(out).exists()
    assert all(kept[k] == v for k, v in after.items())  # the user's and W&B's files, byte for byte
    assert {"notes/.cache.tmp", "wandb/.w.tmp"} <= set(after)


def test_outputs_are_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        path = TABLES["summary_arms"].file(tmp_path)
        from biasamp.tables import write_parquet

        write_parquet(pd.DataFrame({"a": [1]}), path)
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        write_parquet(pd.DataFrame({"a": [2]}), path)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_one_writer_per_study_folder(tmp_path):
    """While one process holds a study folder, a second `run` or `analyze` stops at once in one line;
    a folder the lock created and nothing else wrote is removed again."""
    import time

    out = tmp_path / "busy"
    with artifacts.own_output_dir(out):
        (out / "scores").mkdir()
        start = time.time()
        run = cli("run", "configs/smoke.yaml", "--out", str(out))
        analyze = cli("analyze", str(out))
        assert time.time() - start < 60
        for res in (run, analyze):
            assert res.returncode != 0 and f"is in use by another biasamp process (pid {os.getpid()})" in res.stderr
            assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        (out / "scores").rmdir()
    assert not out.exists()


def test_a_moved_corpus_resumes_and_other_articles_are_refused(study_dict, tmp_path):
    """The folder is tied to the articles drawn, not to where the data file lives: the same file
    under another path resumes the study; a file with other articles at that path is refused."""
    from biasamp.corpus import read_source

    articles = read_source("bundled")
    first, moved, other = tmp_path / "a.parquet", tmp_path / "moved" / "a.parquet", tmp_path / "b.parquet"
    moved.parent.mkdir()
    articles.to_parquet(first)
    articles.to_parquet(moved)
    articles.assign(text=articles["text"] + " (edited)").to_parquet(other)
    per_label = {"left": 2, "center": 2, "right": 2}

    def study(source):
        return from_dict(study_dict(corpora={"main": {"source": str(source), "per_label": per_label}}))

    assert study(first).science_hash() == study(other).science_hash()
    prepare_study(study(first), log=lambda m: None)
    prepare_study(study(moved), log=lambda m: None)  # same articles: accepted, and recorded
    manifest = artifacts.read_manifest(study(first).output_dir)
    assert manifest["config"]["corpora"]["main"]["source"] == str(moved)
    first.unlink()  # the old path is gone: the new one is all there is
    with pytest.raises(ValueError, match=r"corpora\.main\.source: .*b\.parquet gives other articles than .*moved"):
        prepare_study(study(other), log=lambda m: None)


def test_keep_last_checkpoint_resumes_and_extends_to_the_same_result(study_dict, tmp_path):
    """keep_checkpoints: last keeps each trajectory's newest checkpoint only; a study extended by a
    generation from it ends with the articles of a study that kept all; rescoring says what it lacks."""
    from biasamp.study import rescore_study

    every = from_dict(study_dict(generations=3, out_dir=str(tmp_path / "all")))
    prepare_study(every, log=lambda m: None)
    run_trajectory(every, "synthetic", 0, log=lambda m: None)
    last = from_dict(study_dict(generations=2, keep_checkpoints="last", out_dir=str(tmp_path / "last")))
    prepare_study(last, log=lambda m: None)
    run_trajectory(last, "synthetic", 0, log=lambda m: None)
    kept = sorted(p.name for p in (last.output_dir / "checkpoints" / "synthetic" / "seed0").iterdir())
    assert kept == ["gen1"]
    longer = last.model_copy(update={"generations": 3})
    assert run_trajectory(longer, "synthetic", 0, log=lambda m: None) == 1
    assert sorted(p.name for p in (last.output_dir / "checkpoints" / "synthetic" / "seed0").iterdir()) == ["gen2"]
    pd.testing.assert_frame_equal(_articles(every.output_dir), _articles(last.output_dir))
    # Rescoring (here: other quality instrument) carries each lost model's perplexities over ...
    before = pd.read_parquet(last.output_dir / "scores")
    other = longer.model_copy(
        update={"scoring": longer.scoring.model_copy(update={"quality": QualityConfig(kind="offline")})}
    )
    rescore_study(other, log=lambda m: None)
    after = pd.read_parquet(last.output_dir / "scores")
    pd.testing.assert_series_equal(after["ppl"], before["ppl"])
    assert not after["tqi"].equals(before["tqi"])
    # ... and refuses where they were made with another perplexity budget.
    shorter = other.model_copy(update={"scoring": other.scoring.model_copy(update={"perplexity_max_tokens": 16})})
    with pytest.raises(ValueError, match=r"gen0 is not kept .* no perplexities with perplexity_max_tokens=16"):
        rescore_study(shorter, log=lambda m: None)


def test_an_extension_interrupted_after_its_last_trajectory_resumes_to_current_summaries(study_dict, tmp_path):
    """Summaries are derived state: the summary files record what they were built from, and a run
    that finds every trajectory done rebuilds them when that changed (here: an extension by one
    generation killed before its summaries), to the tables an uninterrupted extension writes."""
    from biasamp.study import run_study, summaries_current, summarize_study

    def never(*args):
        raise AssertionError("nothing is pending: no trajectory may run")

    quiet = lambda m: None  # noqa: E731
    d = study_dict(generations=1)
    cfg = from_dict(d)
    prepare_study(cfg, log=quiet)
    run_trajectory(cfg, "synthetic", 0, log=quiet)
    summarize_study(cfg, log=quiet)
    assert summaries_current(cfg)
    before = pd.read_parquet(cfg.output_dir / "summary_arms.parquet")

    longer = from_dict({**d, "generations": 2})
    prepare_study(longer, log=quiet)
    run_trajectory(longer, "synthetic", 0, log=quiet)  # the extension's last trajectory; then killed
    assert not summaries_current(longer)  # G1's scores are not in them
    result = run_study(longer, never, log=quiet)
    resumed = {n: pd.read_parquet(longer.output_dir / f"{n}.parquet") for n in ("summary", "summary_arms")}
    assert result.per_arm is not None and summaries_current(longer)
    assert sorted(resumed["summary_arms"]["generation"]) == [0, 1] and len(before) == 1

    summarize_study(longer, log=quiet)  # what the uninterrupted extension writes at its end
    for name, table in resumed.items():
        pd.testing.assert_frame_equal(table, pd.read_parquet(longer.output_dir / f"{name}.parquet"))
    assert run_study(longer, never, log=quiet).per_arm is None  # current now: nothing is rebuilt


@pytest.mark.slow  # two runs of four trajectories on a private Ray: two minutes; CI runs it (make test-slow)
def test_failing_trajectories_stop_only_themselves_and_a_rerun_runs_only_them(tmp_path):
    """Planted failures in one arm: seed 0's log path is a folder (it cannot write a line), seed 1's
    checkpoint folder is under a file (its traceback goes to its log). The other arm finishes and is
    summarized, the run lists each failure and exits 1, `biasamp status` names the failed ones and their
    errors from the folder alone, the report names what is missing, and once the causes are gone the
    rerun `status` prints runs only the failed trajectories."""
    out = tmp_path / "out"
    planted = out / "logs" / "preservation__seed0.log"
    planted.mkdir(parents=True)
    under_a_file = out / "checkpoints" / "preservation" / "seed1"
    under_a_file.parent.mkdir(parents=True)
    under_a_file.write_text("")
    args = ["run", "configs/smoke.yaml", "--out", str(out), "--set", TWO_ARMS, "--set", "seeds=[0, 1]"]
    args += ["--set", "generations=1", "--set", "wandb.mode=disabled"]
    res = cli(*args)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    log1 = out / "logs" / "preservation__seed1.log"
    assert lines[0] == "error: 2 of 4 trajectories failed (the others finished; a rerun runs only these):"
    assert sorted(lines[1:]) == [  # in the order they failed
        f"  preservation__seed0: IsADirectoryError: {planted}: Is a directory (log: {planted})",
        f"  preservation__seed1: FileExistsError: {under_a_file}: File exists (log: {log1})",
    ], res.stderr
    assert "[synthetic/seed0] finished" in res.stdout and "[synthetic/seed1] finished" in res.stdout
    assert set(pd.read_parquet(out / "summary_arms.parquet")["arm"]) == {"synthetic"}
    status = json.loads(cli("status", str(out), "--json").stdout)
    assert status["state"] == "failed" and status["pid"] is None and status["eta"] is None
    states = {(t["arm"], t["seed"]): (t["state"], t["error"], t["log"]) for t in status["trajectories"]}
    assert [states[("synthetic", seed)][:2] for seed in (0, 1)] == [("done", ""), ("done", "")]
    state, error, log = states[("preservation", 1)]
    assert state == "failed" and log == str(log1) and error.startswith("FileExistsError: ")
    assert str(under_a_file) in error
    assert states[("preservation", 0)] == ("failed", f"its log {planted} is not a file", str(planted))
    text = cli("status", str(out))
    assert text.returncode == 0 and f"resume: biasamp run {out}" in text.stdout, text.stdout + text.stderr
    report = cli("report", str(out), "--out", str(out / "report"))
    assert (
        report.returncode == 0
        and "preservation/seed0, preservation/seed1</p>" in (out / "report" / "index.html").read_text()
    )
    planted.rmdir()
    under_a_file.unlink()
    again = cli("run", str(out))  # as `status` says
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 of 4 trajectories to run" in again.stdout and "[preservation/seed1] finished" in again.stdout
    assert set(pd.read_parquet(out / "summary_arms.parquet")["arm"]) == {"synthetic", "preservation"}
    assert json.loads(cli("status", str(out), "--json").stdout)["state"] == "finished"


@pytest.mark.slow  # two studies' worth of runs in a real terminal and a pipe: about a minute; CI runs it
def test_run_shows_a_live_view_in_a_terminal_and_plain_lines_in_a_pipe(tmp_path):
    """`biasamp run` in a real terminal (tmux, its screen captured every half second): the running
    trajectories a line each with their generation and stage, under them a bar and the summary line,
    and at the end every generation counted. The same study extended through a pipe: the plain lines,
    no escape sequence and no bar."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (.ci/run installs it)")
    out = tmp_path / "out"
    args = ["run", "configs/smoke.yaml", "--out", str(out), "--set", TWO_ARMS, "--set", "seeds=[0]"]
    args += ["--set", "generations=2", "--set", "wandb.mode=disabled"]
    command = f"{shlex.join([sys.executable, '-m', 'biasamp.cli', *args])}; echo EXIT=$?; sleep 300"
    server = ["tmux", "-L", f"biasamp-test-{os.getpid()}"]
    subprocess.run([*server, "new-session", "-d", "-x", "150", "-y", "40", "-c", str(ROOT), command], check=True)
    running = re.compile(r"^(synthetic|preservation)/seed0\s+G[01]/1\s+(train|capture|generate|score)\b")
    screens = [""]
    try:
        deadline = time.time() + 600
        while time.time() < deadline and "EXIT=" not in screens[-1]:
            time.sleep(0.5)
            screens.append(subprocess.run([*server, "capture-pane", "-p"], capture_output=True, text=True).stdout)
    finally:
        subprocess.run([*server, "kill-server"])
    last = screens[-1]
    assert "EXIT=0" in last, last
    seen = [s for s in screens if any(running.match(line) for line in s.splitlines())]
    assert seen and all("━" in s and "generations; trajectories" in s for s in seen), screens[-3:]
    done = "4/4 generations; trajectories 2 done, 0 running, 0 failed, 0 waiting"
    assert done in " ".join(last.split()), last  # (rich wraps a line at the console's width)
    piped = cli("run", str(out), "--set", "generations=3")
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert "[synthetic/seed0] finished" in piped.stdout and "\x1b[" not in piped.stdout and "━" not in piped.stdout
