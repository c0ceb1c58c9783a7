"""W&B, as its users expect it: one run per (arm, seed) trajectory in the study's group, with
`generation` as the step metric (generation g is logged at step g, so extending or resuming a study
appends to the same run at the right step), arm and seed as job_type, tags and config keys; one run
per study-level stage (`biasamp analyze`, `summary`) in the same group for its tables, each invocation at
the next step (so its summary holds the newest tables and no step is logged twice). A sweep's arms
carry `sweep_key` and `sweep_value` in their config (the W&B Report's dose-response panels plot them).
Only the config goes to W&B: the API key stays in the environment (WANDB_API_KEY).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import wandb

from biasamp.config import StudyConfig
from biasamp.tables import MEASURES

SAMPLE_ARTICLES = 8  # generated articles per generation shown in W&B, with their scores


def _run_id(cfg: StudyConfig, name: str) -> str:
    return f"{cfg.study}-{cfg.science_hash()}-{name}".replace(".", "_")


def _init(cfg: StudyConfig, run_id: str, name: str, job_type: str, tags: list[str], extra: dict, log=print):
    def init(mode: str):
        return wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            mode=mode,
            group=cfg.study,
            name=name,
            job_type=job_type,
            tags=tags,
            id=_run_id(cfg, run_id),
            resume="allow",
            dir=str(Path(cfg.output_dir).resolve()),
            config={**cfg.model_dump(mode="json"), **extra},
            settings=wandb.Settings(silent=True),
        )

    if cfg.wandb.mode != "online":
        return init(cfg.wandb.mode)
    try:
        return init("online")
    except wandb.Error as e:  # no network, a bad key, a server down: the study goes on, W&B offline
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log(
            f"warning: W&B online failed for run {name} ({first}); logging offline under "
            f"{Path(cfg.output_dir) / 'wandb'}: `wandb sync` uploads it later"
        )
        wandb.teardown()  # the failed run's id stays taken in W&B's service until it restarts
        return init("offline")


def trajectory_run(cfg: StudyConfig, arm: str, seed: int, log=print):
    """The (arm, seed) run, or None when W&B is disabled."""
    if cfg.wandb.mode == "disabled":
        return None
    extra = {"arm": arm, "seed": seed}
    dose = cfg.sweep.value_of(arm) if cfg.sweep else None
    if dose is not None:
        extra |= {"sweep_key": cfg.sweep.key, "sweep_value": dose}
    run = _init(cfg, f"{arm}-seed{seed}", f"{arm}/seed{seed}", arm, [arm, f"seed{seed}", cfg.study], extra, log)
    run.define_metric("generation")
    run.define_metric("*", step_metric="generation")
    return run


def log_generation(
    run, g: int, metrics: dict, articles: pd.DataFrame, scores: pd.DataFrame | None, losses: pd.DataFrame | None
) -> None:
    """Generation g's metrics (with their CIs), a table of sample articles with their scores, and
    the loss per optimizer step of G0..Gg (`losses`: generation, step, loss), at step g."""
    row = {"generation": g, **metrics}
    sample = articles.head(SAMPLE_ARTICLES)[["article_id", "title", "text", "source_label", "n_tokens"]]
    if scores is not None:
        sample = sample.merge(
            scores[["article_id", "label", "p_left", "p_center", "p_right", *MEASURES, "ppl"]],
            on="article_id",
            how="left",
        )
    row["articles"] = wandb.Table(dataframe=sample.assign(text=sample["text"].str.slice(0, 1000)))
    if losses is not None and len(losses):
        # Every generation so far in one table, one line each: a chart keyed once per run keeps only
        # its last version, so the last generation's chart draws them all.
        curves = wandb.Table(dataframe=losses[["generation", "step", "loss"]].reset_index(drop=True))
        row["train_loss_curve"] = wandb.plot.line(
            curves, "step", "loss", stroke="generation", title="training loss per optimizer step, by generation"
        )
    run.log(row, step=g)


def log_study_tables(cfg: StudyConfig, job_type: str, tables: dict[str, pd.DataFrame], log=print) -> None:
    """A study-level stage's tables (e.g. arm contrasts, neuron counts, summaries) in the study's group."""
    if cfg.wandb.mode == "disabled":
        return
    run_id = _run_id(cfg, job_type)
    # Each invocation one step on: W&B keeps a run's folders (one per invocation, online or offline)
    # in OUT/wandb, so their count is the next step, and an offline rerun never logs a step twice.
    step = len(list((Path(cfg.output_dir) / "wandb").glob(f"*run-*-{run_id}")))
    run = _init(cfg, job_type, job_type, job_type, [job_type, cfg.study], {}, log)
    tables = {name: wandb.Table(dataframe=df.reset_index(drop=True)) for name, df in tables.items() if df is not None}
    run.log({"invocation": step, **tables}, step=step)
    run.finish()


def log_artifacts(run, cfg: StudyConfig, arm: str, seed: int, g: int, checkpoint: Path, files: list[Path]) -> None:
    """Generation g's checkpoint folder and tables as one artifact (wandb.artifacts: true only)."""
    art = wandb.Artifact(
        f"{cfg.study}-{arm}-seed{seed}-gen{g}",
        type="generation",
        metadata={"study": cfg.study, "arm": arm, "seed": seed, "generation": g, "science_hash": cfg.science_hash()},
    )
    art.add_dir(str(checkpoint), name="checkpoint")
    for f in files:
        if f.exists():
            art.add_file(str(f), name=f"{f.parent.name}/{f.name}")
    run.log_artifact(art)
