"""One (arm, seed) trajectory: G0 .. G_{n-1}, each fine-tuned then writing its dataset D_g.

Plain Python: the Ray layer (biasamp.orchestrate) only decides where this runs.
Resumable: generations whose articles exist are skipped; a generation whose checkpoint exists
but whose articles do not is not retrained, only regenerated.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from biasamp import artifacts
from biasamp.tables import TABLES
from biasamp.config import LABELS, MIXES_READING_SCORES, StudyConfig, TrainConfig
from biasamp.data import training_set
from biasamp.generate import write_articles
from biasamp.models import load_base_model, load_checkpoint, load_tokenizer, save_checkpoint
from biasamp.neurons import capture
from biasamp.score import load_instruments, score_articles
from biasamp.train import fine_tune, training_text


def run_trajectory(cfg: StudyConfig, arm_name: str, seed: int, log: Callable[[str], None] = print) -> int:
    """Run the missing generations of one trajectory; returns how many were run."""
    out = cfg.output_dir
    arm = cfg.arms[arm_name]
    n = cfg.generations
    tag = f"[{arm_name}/seed{seed}]"
    done = artifacts.completed_generations(out, arm_name, seed)
    if done >= n:
        log(f"{tag} complete: G0..G{n - 1} already written")
        return 0
    real = pd.read_parquet(TABLES["corpus"].file(out, corpus=arm.corpus))
    probe_df = pd.read_parquet(TABLES["corpus"].file(out, corpus=cfg.probe_corpus))
    probe = [training_text(t, b) for t, b in zip(probe_df["title"], probe_df["text"])]
    synthetic = [pd.read_parquet(TABLES["articles"].file(out, **_at(arm_name, seed, g))) for g in range(done)]
    if done == 0:
        tokenizer = load_tokenizer(cfg.model)
        model = load_base_model(cfg.model, len(tokenizer), seed)
    else:
        log(f"{tag} resuming after G{done - 1}")
        model, tokenizer = load_checkpoint(artifacts.checkpoint_dir(out, arm_name, seed, done - 1))
    instruments = None
    if cfg.scoring.enabled:
        log(f"{tag} loading the scoring instruments")
        instruments = load_instruments(cfg.scoring, cfg.model)
    run = _wandb_run(cfg, arm_name, seed)
    for g in range(done, n):
        t0 = time.time()
        ckpt = artifacts.checkpoint_dir(out, arm_name, seed, g)
        metrics: dict = {}
        if ckpt.exists():
            log(f"{tag} G{g}/{n - 1}: checkpoint found, skipping training")
            model, tokenizer = load_checkpoint(ckpt)
        else:
            if g > 0 and arm.train.init == "base":
                model = load_base_model(cfg.model, len(tokenizer), seed)
            previous_scores = None
            if g > 0 and arm.mix.kind in MIXES_READING_SCORES:
                previous_scores = pd.read_parquet(TABLES["scores"].file(out, **_at(arm_name, seed, g - 1)))
            train_df = training_set(arm, g, real, synthetic, seed, previous_scores)
            log(f"{tag} G{g}/{n - 1}: training on {len(train_df)} articles "
                f"({', '.join(f'{k} {v}' for k, v in train_df['source'].value_counts(sort=False).items())})")
            torch.manual_seed(seed * 100_003 + g)
            metrics = fine_tune(model, tokenizer, train_df, arm.train, seed * 100_003 + g,
                                workdir=ckpt.with_name(ckpt.name + ".train"))
            # What G_g trained on and how the loss went, before the checkpoint that marks training done.
            TABLES["training"].write(_addressed(train_df[["article_id", "source"]].copy(), cfg.study, arm_name, seed, g),
                                     out, **_at(arm_name, seed, g))
            TABLES["train_metrics"].write(_train_metrics(metrics, arm.train, cfg.study, arm_name, seed, g),
                                          out, **_at(arm_name, seed, g))
            metrics.pop("loss_curve")
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(model, tokenizer, ckpt)
        if cfg.neurons.capture and not TABLES["neurons"].file(out, **_at(arm_name, seed, g)).exists():
            log(f"{tag} G{g}/{n - 1}: capturing neurons on {len(probe)} probe articles")
            rows = _addressed(capture(model, tokenizer, probe, cfg.neurons), cfg.study, arm_name, seed, g)
            per_layer = int((rows["layer"] == 0).sum())  # one Parquet row group per layer
            TABLES["neurons"].write(rows, out, row_group_size=per_layer, **_at(arm_name, seed, g))
        prompts = real if cfg.generation.prompt_source == "real" or g == 0 else _with_real_titles(synthetic[-1], real)
        log(f"{tag} G{g}/{n - 1}: writing {len(prompts)} articles")
        t1 = time.time()
        model.eval()
        written = write_articles(model, tokenizer, prompts, cfg.generation, _every_minute(log, f"{tag} G{g}/{n - 1}"),
                                 checkpoint=ckpt)
        gen_seconds = time.time() - t1
        table = _addressed(written.merge(real[["article_id", "source_label"]], on="article_id", how="left"),
                           cfg.study, arm_name, seed, g)
        scored = {}
        if instruments is not None:
            log(f"{tag} G{g}/{n - 1}: scoring {len(table)} articles")
            scores = score_articles(instruments, table, own=(model, tokenizer))
            TABLES["scores"].write(scores, out, **_at(arm_name, seed, g))
            scored = {f"share_{lab}": float((scores["label"] == lab).mean()) for lab in LABELS}
            scored.update(tqi_mean=float(scores["tqi"].mean()), ppl_mean=float(scores["ppl"].mean()))
        TABLES["articles"].write(table, out, **_at(arm_name, seed, g))
        synthetic.append(table)
        summary = {
            **metrics,
            "gen_tokens": int(table["n_tokens"].sum()),
            "gen_tokens_per_s": float(table["n_tokens"].sum() / max(gen_seconds, 1e-9)),
            "mean_article_tokens": float(table["n_tokens"].mean()),
            "generation_seconds": time.time() - t0,
            **scored,
        }
        log(
            f"{tag} G{g}/{n - 1}: done in {summary['generation_seconds']:.0f}s "
            f"(loss {metrics.get('train_loss', float('nan')):.3f}, {summary['gen_tokens_per_s']:.0f} tok/s)"
        )
        if run is not None:
            run.log({"generation": g, **summary})
    if run is not None:
        run.finish()
    return n - done


def _every_minute(log, prefix: str):
    """A progress callback that logs at most once a minute: long generations show they move."""
    t0 = last = time.time()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.time()
        if now - last >= 60 and done < total:
            last = now
            log(f"{prefix}: {done}/{total} prompts, {(now - t0) / done * (total - done) / 60:.0f} min left")

    return report


def _at(arm: str, seed: int, g: int) -> dict:
    return {"arm": arm, "seed": seed, "generation": g}


def _train_metrics(metrics: dict, train: TrainConfig, study: str, arm: str, seed: int, g: int) -> pd.DataFrame:
    """The train_metrics table: one row per optimizer step, the generation's totals and settings on each."""
    curve = metrics["loss_curve"]
    df = pd.DataFrame({"step": range(1, len(curve) + 1), "loss": pd.Series(curve, dtype=float)})
    for key in ("train_loss", "train_articles", "train_tokens", "train_seconds"):
        df[key] = metrics[key]
    for key in ("epochs", "batch_size", "lr", "weight_decay", "max_length", "init", "backend"):
        df[key] = getattr(train, key)
    df["epochs"] = df["epochs"].astype(float)
    return _addressed(df, study, arm, seed, g)


def _addressed(df: pd.DataFrame, study: str, arm: str, seed: int, g: int) -> pd.DataFrame:
    """Prefix the (study, arm, seed, generation) address columns."""
    for col, value in (("generation", g), ("seed", seed), ("arm", arm), ("study", study)):
        df.insert(0, col, value)
    return df


def _with_real_titles(previous: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """prompt_source=previous: the previous generation's text under the real article's title."""
    return real[["article_id", "title"]].merge(previous[["article_id", "text"]], on="article_id")


def _wandb_run(cfg: StudyConfig, arm: str, seed: int):
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    # Only the config goes to W&B: the API key stays in the environment (WANDB_API_KEY).
    return wandb.init(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        mode=cfg.wandb.mode,
        group=cfg.study,
        name=f"{arm}/seed{seed}",
        id=f"{cfg.study}-{cfg.science_hash()}-{arm}-seed{seed}".replace(".", "_"),
        resume="allow",
        dir=str(Path(cfg.output_dir).resolve()),
        config={**cfg.model_dump(mode="json"), "arm": arm, "seed": seed},
        settings=wandb.Settings(silent=True),
    )
