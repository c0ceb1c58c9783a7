"""One (arm, seed) trajectory: G0 .. G_{n-1}, each a list of stages (train, capture, write).

Plain Python: the Ray layer (biasamp.backends.ray_cluster) only decides where this runs.
Resumable: each stage is skipped when what it writes exists. A generation is done when its articles
table exists (written last); a generation whose checkpoint exists is not retrained.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from biasamp import artifacts, tracking
from biasamp.config import SEED_STRIDE, ArmConfig, StudyConfig, TrainConfig
from biasamp.instruments.registry import MEASURES
from biasamp.models import checkpoint_damage, load_base_model, load_checkpoint, load_tokenizer, save_checkpoint
from biasamp.stages.generate import write_articles
from biasamp.stages.mix import training_set
from biasamp.stages.neurons import capture
from biasamp.stages.score import Instruments, load_instruments, score_articles
from biasamp.stages.summarize import SETTINGS_KEY, summarize
from biasamp.stages.train import trainer_for
from biasamp.tables import TABLES, parquet_damage
from biasamp.text import training_text


@dataclass
class Trajectory:
    """What the stages of one trajectory share; `g` and what follows change every generation."""

    cfg: StudyConfig
    arm_name: str
    seed: int
    log: Callable[[str], None]
    real: pd.DataFrame  # the arm's real corpus
    probe: list[str]  # the neuron probe texts
    synthetic: list[pd.DataFrame]  # D_0 .. D_{g-1}
    model: object
    tokenizer: object
    instruments: Instruments | None = None  # loaded at the first scoring: training need not wait for them
    g: int = 0
    metrics: dict = field(default_factory=dict)  # this generation's, for W&B and the log
    scores: pd.DataFrame | None = None  # this generation's, for W&B
    seconds: dict = field(default_factory=dict)  # this generation's wall time per stage run by this process

    @property
    def arm(self) -> ArmConfig:
        return self.cfg.arms[self.arm_name]

    @property
    def out(self) -> Path:
        return self.cfg.output_dir

    @property
    def at(self) -> dict:
        return {"arm": self.arm_name, "seed": self.seed, "generation": self.g}

    @property
    def ckpt(self) -> Path:
        return artifacts.checkpoint_dir(self.out, self.arm_name, self.seed, self.g)

    def say(self, message: str) -> None:
        self.log(f"[{self.arm_name}/seed{self.seed}] G{self.g}/{self.cfg.generations - 1}: {message}")

    def addressed(self, df: pd.DataFrame) -> pd.DataFrame:
        return _addressed(df, self.cfg.study, self.arm_name, self.seed, self.g)


def train_stage(t: Trajectory) -> None:
    """G_g's weights: its checkpoint if saved; else fine-tuned on the arm's mix, with the training
    and train_metrics tables written before the checkpoint (whose folder marks training done)."""
    if t.ckpt.exists():
        damage = checkpoint_damage(t.ckpt)
        if damage is None:
            t.say("checkpoint found, skipping training")
            t.model, t.tokenizer = load_checkpoint(t.ckpt)
            return
        t.say(
            f"checkpoint {t.ckpt} is damaged ({damage}): set aside as {artifacts.set_aside(t.ckpt).name}, "
            "training again"
        )
    cfg, arm, g, seed = t.cfg, t.arm, t.g, t.seed
    if g > 0 and arm.train.init == "base":
        t.model = load_base_model(cfg.model, len(t.tokenizer), seed)
    previous_scores = None
    if g > 0 and arm.mix.reads_scores:
        previous_scores = TABLES["scores"].read_one(t.out, **{**t.at, "generation": g - 1})
    train_df = training_set(arm, g, t.real, t.synthetic, seed, previous_scores)
    t.say(
        f"training on {len(train_df)} articles "
        f"({', '.join(f'{k} {v}' for k, v in train_df['source'].value_counts(sort=False).items())})"
    )
    torch.manual_seed(seed * SEED_STRIDE + g)
    start = time.time()
    metrics = trainer_for(arm.train.backend)(
        t.model,
        t.tokenizer,
        train_df,
        arm.train,
        seed * SEED_STRIDE + g,
        workdir=t.ckpt.with_name(t.ckpt.name + ".train"),
    )
    metrics["train_seconds"] = time.time() - start  # the stage's wall time, tokenizing included
    TABLES["training"].write(t.addressed(train_df[["article_id", "source"]].copy()), t.out, **t.at)
    TABLES["train_metrics"].write(t.addressed(_train_metrics(metrics, arm.train)), t.out, **t.at)
    metrics.pop("loss_curve")  # in train_metrics, one row per step
    if "worker_memory" in metrics:  # backend deepspeed: each worker's peak, for sizing a cluster's nodes
        peaks = ", ".join(f"{w['peak_rss'] / 2**30:.2f}" for w in metrics.pop("worker_memory"))
        t.say(f"training workers' peak resident memory: {peaks} GiB")
    t.metrics.update(metrics)
    t.ckpt.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(t.model, t.tokenizer, t.ckpt)


def capture_stage(t: Trajectory) -> None:
    """G_g's neuron summaries on the probe set (table neurons), unless written or not asked for."""
    if not t.cfg.neurons.capture or TABLES["neurons"].file(t.out, **t.at).exists():
        return
    t.say(f"capturing neurons on {len(t.probe)} probe articles")
    start = time.time()
    rows = t.addressed(capture(t.model, t.tokenizer, t.probe, t.cfg.neurons))
    per_layer = int((rows["layer"] == 0).sum())  # one Parquet row group per layer
    TABLES["neurons"].write(rows, t.out, row_group_size=per_layer, **t.at)
    t.seconds["capture"] = time.time() - start


def write_stage(t: Trajectory) -> None:
    """D_g: generated, scored (table scores), then written (table articles, last: G_g is done)."""
    cfg, g = t.cfg, t.g
    prompts = t.real if cfg.generation.prompt_source == "real" or g == 0 else _with_real_titles(t.synthetic[-1], t.real)
    t.say(f"writing {len(prompts)} articles")
    start = time.time()
    t.model.eval()
    written = write_articles(t.model, t.tokenizer, prompts, cfg.generation, _every_minute(t.say), checkpoint=t.ckpt)
    t.seconds["generate"] = time.time() - start
    table = t.addressed(written.merge(t.real[["article_id", "source_label"]], on="article_id", how="left"))
    t.metrics.update(
        gen_tokens=int(table["n_tokens"].sum()),
        mean_article_tokens=float(table["n_tokens"].mean()),
        gen_tokens_per_s=float(table["n_tokens"].sum() / max(t.seconds["generate"], 1e-9)),
    )
    if cfg.scoring.enabled:
        if t.instruments is None:
            t.say("loading the scoring instruments")
            t.instruments = load_instruments(cfg.scoring, cfg.model)
        t.say(f"scoring {len(table)} articles")
        start = time.time()
        scores = score_articles(t.instruments, table, t.real, own=(t.model, t.tokenizer))
        TABLES["scores"].write(scores, t.out, metadata={SETTINGS_KEY: t.instruments.settings}, **t.at)
        t.scores = scores
        row = summarize(
            scores,
            cfg.scoring.bootstrap,
            calibration=t.instruments.calibration,
            method=cfg.scoring.classifier.prevalence,
        )[0].iloc[0]  # the summary table's own statistics
        t.metrics.update(
            {
                k: float(v)
                for k, v in row.items()
                if k.startswith(("share_", "lean_", "null_", "prev_", "ppl_", *(f"{m}_" for m in MEASURES)))
            }
        )
        t.seconds["score"] = time.time() - start
    _record_stage_seconds(t)
    TABLES["articles"].write(table, t.out, **t.at)
    t.synthetic.append(table)


STAGES = [train_stage, capture_stage, write_stage]
STAGE_SECONDS = ("capture", "generate", "score")  # train_metrics' {stage}_seconds besides train_seconds


def run_trajectory(cfg: StudyConfig, arm_name: str, seed: int, log: Callable[[str], None] = print) -> int:
    """Run the missing generations of one trajectory; returns how many were run."""
    out, n, tag = cfg.output_dir, cfg.generations, f"[{arm_name}/seed{seed}]"
    arm = cfg.arms[arm_name]
    done = artifacts.completed_generations(out, arm_name, seed)
    while (ok := _verified(cfg, arm_name, seed, done, log)) < done:  # until what it builds on is whole
        done = ok
    if done >= n:
        log(f"{tag} complete: G0..G{n - 1} already written")
        return 0
    probe_df = TABLES["corpus"].read_one(out, corpus=cfg.probe_corpus)
    if done == 0:
        tokenizer = load_tokenizer(cfg.model)
        model = load_base_model(cfg.model, len(tokenizer), seed)
    else:
        log(f"{tag} resuming after G{done - 1}")
        model, tokenizer = load_checkpoint(artifacts.checkpoint_dir(out, arm_name, seed, done - 1))
        _prune_checkpoints(cfg, arm_name, seed, done - 1)  # left by a kill, or by a study that kept all
    t = Trajectory(
        cfg,
        arm_name,
        seed,
        log,
        real=TABLES["corpus"].read_one(out, corpus=arm.corpus),
        probe=[training_text(a, b) for a, b in zip(probe_df["title"], probe_df["text"])],
        synthetic=[TABLES["articles"].read_one(out, arm=arm_name, seed=seed, generation=g) for g in range(done)],
        model=model,
        tokenizer=tokenizer,
    )
    run = tracking.trajectory_run(cfg, arm_name, seed, log)
    for g in range(done, n):
        t.g, t.metrics, t.scores, t.seconds, start = g, {}, None, {}, time.time()
        for stage in STAGES:
            stage(t)
        t.metrics["generation_seconds"] = time.time() - start
        t.say(
            f"done in {t.metrics['generation_seconds']:.0f}s (loss {t.metrics.get('train_loss', float('nan')):.3f}, "
            f"{t.metrics['gen_tokens_per_s']:.0f} tok/s)"
        )
        if run is not None:
            losses = TABLES["train_metrics"].read(out, arm=arm_name, seed=seed)
            tracking.log_generation(run, g, t.metrics, t.synthetic[-1], t.scores, losses[losses.generation <= g])
            if cfg.wandb.artifacts:
                tracking.log_artifacts(
                    run,
                    cfg,
                    arm_name,
                    seed,
                    g,
                    t.ckpt,
                    [TABLES[name].file(out, **t.at) for name in ("articles", "scores", "training")],
                )
        _prune_checkpoints(cfg, arm_name, seed, g)
    if run is not None:
        run.finish()
    return n - done


def _prune_checkpoints(cfg: StudyConfig, arm: str, seed: int, newest: int) -> None:
    """keep_checkpoints: last: remove the checkpoints before G_newest, once G_newest is written."""
    if cfg.keep_checkpoints == "last":
        for g in range(newest):
            shutil.rmtree(artifacts.checkpoint_dir(cfg.output_dir, arm, seed, g), ignore_errors=True)


def _verified(cfg: StudyConfig, arm: str, seed: int, done: int, log) -> int:
    """How many generations in a row a resume can build on, after checking what it reads: every
    written generation's articles, the last one's checkpoint (and scores, for mixes that read them).
    From the first damaged generation on, its damaged files are set aside (renamed, never deleted)
    and it is run again; deterministic training rewrites them exactly."""
    out = cfg.output_dir
    for g in range(done):
        needed = {"articles": TABLES["articles"].file(out, arm=arm, seed=seed, generation=g)}
        if g == done - 1:
            needed["checkpoint"] = artifacts.checkpoint_dir(out, arm, seed, g)
            if cfg.arms[arm].mix.reads_scores:
                needed["scores"] = TABLES["scores"].file(out, arm=arm, seed=seed, generation=g)
        damaged = {
            name: (path, what)
            for name, path in needed.items()
            if (what := (checkpoint_damage if name == "checkpoint" else parquet_damage)(path)) is not None
        }
        if damaged:
            for name, (path, what) in damaged.items():
                moved = artifacts.set_aside(path).name if path.exists() else "nothing to move"
                log(f"[{arm}/seed{seed}] G{g} {name} is damaged ({what}): set aside ({moved})")
            articles = needed["articles"]
            if articles.exists():  # the generation is no longer marked done: it runs again
                artifacts.set_aside(articles)
            log(f"[{arm}/seed{seed}] running again from G{g}")
            return g
    return done


def _record_stage_seconds(t: Trajectory) -> None:
    """Add this generation's capture/generate/score wall times to its train_metrics table (written by
    training, rewritten here before the articles mark the generation done). A stage run by an earlier,
    interrupted process keeps what was recorded then (NaN: nothing was)."""
    path = TABLES["train_metrics"].file(t.out, **t.at)
    df = pd.read_parquet(path)
    for stage in STAGE_SECONDS:
        col = f"{stage}_seconds"
        df[col] = t.seconds[stage] if stage in t.seconds else df.get(col, float("nan"))  # old tables lack it
    t.metrics.update({f"{stage}_seconds": float(df[f"{stage}_seconds"].iloc[0]) for stage in STAGE_SECONDS})
    TABLES["train_metrics"].write(df, t.out, **t.at)


def _every_minute(say):
    """A progress callback that logs at most once a minute: long generations show they move."""
    t0 = last = time.time()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.time()
        if now - last >= 60 and done < total:
            last = now
            say(f"{done}/{total} prompts, {(now - t0) / done * (total - done) / 60:.0f} min left")

    return report


def _train_metrics(metrics: dict, train: TrainConfig) -> pd.DataFrame:
    """The train_metrics table: one row per optimizer step, the generation's totals and settings on each."""
    curve = metrics["loss_curve"]
    df = pd.DataFrame({"step": range(1, len(curve) + 1), "loss": pd.Series(curve, dtype=float)})
    for key in ("train_loss", "train_articles", "train_tokens", "train_seconds"):
        df[key] = metrics[key]
    for stage in STAGE_SECONDS:
        df[f"{stage}_seconds"] = float("nan")  # filled in when the generation's articles are written
    for key in ("epochs", "batch_size", "lr", "weight_decay", "max_length", "init", "backend"):
        df[key] = getattr(train, key)
    df["epochs"] = df["epochs"].astype(float)
    return df


def _addressed(df: pd.DataFrame, study: str, arm: str, seed: int, g: int) -> pd.DataFrame:
    """Prefix the (study, arm, seed, generation) address columns."""
    for col, value in (("generation", g), ("seed", seed), ("arm", arm), ("study", study)):
        df.insert(0, col, value)
    return df


def _with_real_titles(previous: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """prompt_source=previous: the previous generation's text under the real article's title."""
    return real[["article_id", "title"]].merge(previous[["article_id", "text"]], on="article_id")
