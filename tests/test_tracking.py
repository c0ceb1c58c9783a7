"""W&B as its users expect: generation is the step metric, an extended study appends to the same run
at the right step, arm and seed are job_type and tags, and every generation brings its CIs, a table of
sample articles with their scores and the loss curve. (wandb itself is replaced by a recorder: what
is checked is what biasamp asks of it; tests/test_wandb.py reads what the real wandb writes.)"""

from types import SimpleNamespace

from biasamp import artifacts, tracking
from biasamp.config import from_dict
from biasamp.stages.trajectory import run_trajectory
from biasamp.study import prepare_study


class _Run:
    def __init__(self, **kw):
        self.kw, self.defined, self.logged, self.artifacts = kw, [], [], []

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, row, step=None):
        self.logged.append((step, row))

    def finish(self):
        pass

    def log_artifact(self, art):
        self.artifacts.append(art)


class _Artifact:
    def __init__(self, name, type, metadata):
        self.name, self.files = name, []

    def add_dir(self, path, name):
        self.files.append(name)

    def add_file(self, path, name):
        self.files.append(name)


class _Table:
    def __init__(self, dataframe=None, data=None, columns=None):
        self.dataframe, self.data, self.columns = dataframe, data, columns


def _fake_wandb(runs):
    return SimpleNamespace(
        init=lambda **kw: runs.append(_Run(**kw)) or runs[-1],
        Settings=lambda **kw: kw,
        Table=_Table,
        Artifact=_Artifact,
        plot=SimpleNamespace(line=lambda table, x, y, stroke=None, title=None: ("line", x, y, stroke, table)),
    )


def test_an_extended_study_appends_generation_g_at_step_g_to_the_same_run(study_dict, monkeypatch):
    runs = []
    monkeypatch.setattr(tracking, "wandb", _fake_wandb(runs))
    d = study_dict(generations=1, wandb={"mode": "offline"})
    cfg = from_dict(d)
    prepare_study(cfg, log=lambda m: None)
    run_trajectory(cfg, "synthetic", 0, log=lambda m: None)
    run_trajectory(from_dict({**d, "generations": 2}), "synthetic", 0, log=lambda m: None)  # extended
    first, second = runs
    assert first.kw["id"] == second.kw["id"] and second.kw["resume"] == "allow"
    assert first.kw["job_type"] == "synthetic" and {"synthetic", "seed0"} <= set(first.kw["tags"])
    assert first.kw["config"]["arm"] == "synthetic" and first.kw["group"] == "t"
    assert ("*", "generation") in first.defined and ("*", "generation") in second.defined
    history = [(step, row["generation"]) for run in runs for step, row in run.logged]
    assert history == [(0, 0), (1, 1)]
    row = second.logged[0][1]
    assert {"share_right", "share_right_lo", "share_right_hi", "tqi_mean", "ppl_ref_mean", "train_loss"} <= set(row)
    # the degradation null and the quality-leaning association, beside the readings they qualify
    assert {"lean_index", "lean_index_lo", "null_share_right", "null_lean_index_hi", "tqi_rho_right"} <= set(row)
    sample = row["articles"].dataframe
    assert {"title", "text", "label", "p_right", "tqi"} <= set(sample.columns) and len(sample) == 6
    kind, x, y, stroke, table = row["train_loss_curve"]
    assert (kind, x, y, stroke) == ("line", "step", "loss", "generation")
    assert sorted(table.dataframe["generation"].unique()) == [0, 1]  # G1's chart draws G0's curve too
    assert first.artifacts == [] and second.artifacts == []  # off by default: checkpoints are large


def test_artifacts_when_asked(study_dict, monkeypatch):
    runs = []
    monkeypatch.setattr(tracking, "wandb", _fake_wandb(runs))
    cfg = from_dict(study_dict(generations=1, wandb={"mode": "offline", "artifacts": True}))
    prepare_study(cfg, log=lambda m: None)
    run_trajectory(cfg, "synthetic", 0, log=lambda m: None)
    (art,) = runs[0].artifacts
    assert art.name == "t-synthetic-seed0-gen0"
    assert art.files == [
        "checkpoint",
        "articles/synthetic__seed0__gen0.parquet",
        "scores/synthetic__seed0__gen0.parquet",
        "training/synthetic__seed0__gen0.parquet",
    ]


def test_disabled_wandb_makes_no_run(study_dict, monkeypatch):
    runs = []
    monkeypatch.setattr(tracking, "wandb", _fake_wandb(runs))
    cfg = from_dict(study_dict())
    assert tracking.trajectory_run(cfg, "synthetic", 0) is None
    tracking.log_study_tables(cfg, "analyze-within", {})
    assert runs == []


def test_wandb_online_without_a_server_goes_on_offline(study_dict, tmp_path, monkeypatch):
    """The real W&B, online, pointed at a port nothing listens on: one warning, an offline run that
    `wandb sync` can upload later, and the study's logging carries on."""
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")  # W&B's own setting; 90 s by default
    cfg = from_dict(study_dict(wandb={"mode": "online"}, out_dir=str(tmp_path / "out")))
    lines = []
    with artifacts.scratch_space(cfg.output_dir):
        run = tracking.trajectory_run(cfg, "synthetic", 0, log=lines.append)
        run.log({"generation": 0, "share_right": 0.5}, step=0)
        run.finish()
    assert len(lines) == 1 and lines[0].startswith("warning: W&B online failed for run synthetic/seed0")
    assert "wandb sync" in lines[0] and "\n" not in lines[0]
    assert list((cfg.output_dir / "wandb").glob("offline-run-*/run-*.wandb"))
