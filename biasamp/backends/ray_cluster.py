"""The thin Ray layer: one Ray task per (arm, seed) trajectory, run concurrently.

`prepare_study` does the driver-side, once-per-study work (manifest, corpora); each task runs
the plain-Python `run_trajectory` with torch limited to its CPU allotment.
"""

from __future__ import annotations

import os
import time
import traceback

import numpy as np

from biasamp import artifacts
from biasamp.config import StudyConfig
from biasamp.instruments.leaning import load_calibration
from biasamp.preflight import check_study
from biasamp.stages.summarize import SETTINGS_KEY, write_summaries
from biasamp.tables import MEASURES, TABLES, file_metadata

# The model stack (torch, transformers: about 8 s) is imported inside the functions that use it, so
# that `biasamp run` on a finished study, or one that fails its checks, answers at once, and a
# trajectory task sets torch's threads before loading it.


def check_before_ray(cfg: StudyConfig) -> dict:
    """Everything `run` checks before it writes anything or starts Ray (`biasamp validate` runs the
    same): preflight.check_study, and for a private local Ray this machine's CPUs and GPUs. Returns
    the corpora drawn for a folder that lacks them."""
    drawn = check_study(cfg)
    if cfg.resources.ray_address is None:  # a private Ray gets this machine: check it now, not after Ray's start
        check_resources(cfg, local_machine())
    return drawn


def prepare_study(cfg: StudyConfig, log=print) -> list[tuple[str, int]]:
    """Check everything that can be checked before Ray (check_before_ray), then claim the output
    folder, write the corpora once, and list the unfinished trajectories. Nothing is written before
    the checks pass: a run that fails them leaves no manifest behind to refuse the corrected config."""
    out = cfg.output_dir
    drawn = check_before_ray(cfg)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.claim_output_dir(cfg, out)
    for name, corpus in drawn.items():
        path = TABLES["corpus"].write(corpus, out, corpus=name)
        log(f"corpus '{name}': {len(corpus)} articles -> {path}")
    pending = []
    for arm in cfg.arms:
        for seed in cfg.seeds:
            done = artifacts.completed_generations(out, arm, seed)
            if done < cfg.generations:
                pending.append((arm, seed))
    return pending


def local_machine() -> dict[str, float]:
    """The CPUs and GPUs a private local Ray would see."""
    gpus = 0
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
        import torch

        gpus = torch.cuda.device_count()
    return {"CPU": float(len(os.sched_getaffinity(0))), "GPU": float(gpus)}


def check_resources(cfg: StudyConfig, have: dict) -> None:
    """A trajectory's placement group (and its DeepSpeed workers) fits a machine with `have`: on a
    fixed local machine a group that cannot fit would wait forever."""
    bundles = trajectory_bundles(cfg)
    workers = deepspeed_workers(cfg, gpus=have.get("GPU", 0) > 0)
    for key, unit in (("cpus_per_trajectory", "CPU"), ("gpus_per_trajectory", "GPU")):
        need = sum(b.get(unit, 0) for b in bundles) + workers.get(unit, 0)
        if need > have.get(unit, 0):
            extra = " (with its vLLM engines / DeepSpeed workers)" if len(bundles) > 1 or workers else ""
            raise ValueError(f"resources.{key}: a trajectory{extra} asks for {need:g} {unit}, this machine has "
                             f"{have.get(unit, 0):g}; e.g. --set resources.{key}={have.get(unit, 0):g}")


def trajectory_bundles(cfg: StudyConfig) -> list[dict]:
    """The placement group of one trajectory: its own process (training with the plain backend,
    neuron capture, scoring, HF generation), plus one bundle per vLLM engine. DeepSpeed workers are
    gang-scheduled by Ray Train in a placement group of their own, sized by train.deepspeed."""
    res, gen = cfg.resources, cfg.generation
    bundles = [{"CPU": res.cpus_per_trajectory, **({"GPU": res.gpus_per_trajectory} if res.gpus_per_trajectory else {})}]
    if gen.backend.kind == "vllm":
        gpus = gen.backend.gpus_per_engine
        bundles += [{"CPU": 1, **({"GPU": gpus} if gpus else {})}] * gen.backend.engines
    return bundles


def deepspeed_workers(cfg: StudyConfig, gpus: bool) -> dict:
    """CPUs and GPUs of the largest DeepSpeed worker group among the arms ({} without that backend)."""
    groups = [a.train.deepspeed for a in cfg.arms.values() if a.train.backend == "deepspeed"]
    if not groups:
        return {}
    return {"CPU": max(d.workers * d.cpus_per_worker for d in groups),
            "GPU": max(d.workers for d in groups) if gpus else 0}


def _trajectory_task(cfg: StudyConfig, arm: str, seed: int, cpus: float, progress) -> tuple[str, int, int]:
    import torch
    import transformers

    # Each trajectory uses only its own cores: two trajectories each using every core of a
    # 2-core machine run many times slower than side by side.
    torch.set_num_threads(max(1, int(cpus)))
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from biasamp.backends import deepspeed_train, vllm_engines  # noqa: F401 (they register train/generation backends)
    from biasamp.stages.trajectory import run_trajectory

    logfile = cfg.output_dir / "logs" / f"{arm}__seed{seed}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        with logfile.open("a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        progress.put(message)

    with artifacts.scratch_space(cfg.output_dir):  # on another node too: its temp files under the study's scratch
        try:
            return arm, seed, run_trajectory(cfg, arm, seed, log=log)
        except Exception:
            with logfile.open("a") as fh:
                fh.write(traceback.format_exc())
            raise


def run_study(cfg: StudyConfig, log=print) -> int:
    """Run every unfinished trajectory of the study (one writer per folder); returns how many
    generations were run."""
    with artifacts.own_output_dir(cfg.output_dir, log):
        return _run_study(cfg, log)


def _run_study(cfg: StudyConfig, log) -> int:
    pending = prepare_study(cfg, log)
    total = len(cfg.arms) * len(cfg.seeds)
    if not pending:
        log(f"nothing to do: all {total} trajectories of '{cfg.study}' have G0..G{cfg.generations - 1} "
            f"in {cfg.output_dir}")
        if cfg.scoring.enabled and not all((cfg.output_dir / f).exists() for f in ("summary.parquet", "summary_arms.parquet")):
            _summaries(cfg, log)  # a run killed after its last trajectory: finish the study-level stage
        return 0
    log(f"study '{cfg.study}': {len(pending)} of {total} trajectories to run, "
        f"{cfg.resources.cpus_per_trajectory:g} CPU / {cfg.resources.gpus_per_trajectory:g} GPU each")

    if cfg.resources.ray_address is None:
        # On Linux Ray binds a "local" cluster to the machine's outward address; this makes it use
        # 127.0.0.1 (read when ray is first imported, and inherited by the workers it starts).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    started_here = not ray.is_initialized()
    if started_here:
        # Workers' own output stays in Ray's session logs; their progress lines come through
        # the queue below, one line per stage, and go to OUT/logs/{arm}__seed{seed}.log too.
        common = dict(logging_level="ERROR", log_to_driver=False, runtime_env={"env_vars": _worker_env()})
        if cfg.resources.ray_address is None:
            # A private single-machine Ray, on loopback only, no dashboard.
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **common)
        else:
            ray.init(address=cfg.resources.ray_address, **common)
    res = cfg.resources
    have = ray.cluster_resources()
    log(f"Ray at {ray.get_runtime_context().gcs_address}, {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs")
    bundles = trajectory_bundles(cfg)
    workers = deepspeed_workers(cfg, gpus=have.get("GPU", 0) > 0)
    if cfg.resources.ray_address is None:  # Ray may see less than the machine (e.g. a container's CPU quota)
        try:
            check_resources(cfg, have)
        except ValueError:
            if started_here:
                ray.shutdown()
            raise
    # Ray Train places DeepSpeed workers in a placement group of its own (it cannot use the
    # trajectory's), so trajectories holding their groups could starve each other's workers: with
    # that backend, only as many run at once as the cluster holds together with their workers.
    in_flight = len(pending)
    if workers:
        whole = {u: sum(b.get(u, 0) for b in bundles) + workers.get(u, 0) for u in ("CPU", "GPU")}
        in_flight = max(1, int(min(have.get(u, 0) // n for u, n in whole.items() if n)))
        log(f"DeepSpeed workers outside the trajectories' groups: at most {in_flight} trajectories at once")
    # A failed trajectory (its worker died) is retried once; it resumes from its last finished stage.
    task = ray.remote(max_retries=1)(_trajectory_task)
    t0 = time.time()
    ran = 0
    groups, names = {}, {}  # task ref -> its trajectory's placement group, its name
    try:
        progress = Queue()
        queued, remaining = list(pending), []
        while queued or remaining:
            while queued and len(remaining) < in_flight:
                arm, seed = queued.pop(0)
                pg = placement_group(bundles, strategy="PACK", name=f"{cfg.study}/{arm}/seed{seed}")
                # Bundle 0 holds the trajectory itself; vLLM engines take the others (vllm_engines).
                # A trajectory whose group does not fit yet waits: trajectories queue when the cluster is full.
                strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
                ref = task.options(num_cpus=res.cpus_per_trajectory, num_gpus=res.gpus_per_trajectory,
                                   scheduling_strategy=strategy).remote(cfg, arm, seed, res.cpus_per_trajectory, progress)
                groups[ref] = pg
                names[ref] = f"{arm}__seed{seed}"
                remaining.append(ref)
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=1.0)
            for message in progress.get_nowait_batch(progress.qsize()):
                log(f"{time.time() - t0:6.0f}s {message}")
            for ref in ready:
                remove_placement_group(groups.pop(ref))  # its resources go to the next queued trajectory
                try:
                    arm, seed, n = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the worker's traceback is in its log file
                    if isinstance(e.cause, (ValueError, OSError)):
                        log_file = cfg.output_dir / "logs" / f"{names[ref]}.log"
                        raise ValueError(f"{names[ref]}: {str(e.cause).strip().splitlines()[0]} "
                                         f"(traceback in {log_file})") from None
                    raise
                ran += n
                done = len(pending) - len(queued) - len(remaining)
                log(f"{time.time() - t0:6.0f}s [{arm}/seed{seed}] finished ({done}/{len(pending)} trajectories)")
    finally:
        for pg in groups.values():
            remove_placement_group(pg)
        if started_here:
            ray.shutdown()
    log(stage_split(cfg.output_dir))
    if cfg.scoring.enabled:
        _summaries(cfg, log)
    return ran


def stage_split(out) -> str:
    """Where the study's time went: each stage's total over every generation written (train_metrics'
    train/capture/generate/score_seconds), its share, and its median per generation."""
    per_generation = TABLES["train_metrics"].read(out).drop_duplicates(["arm", "seed", "generation"])
    seconds = {c.removesuffix("_seconds"): per_generation[c] for c in TABLES["train_metrics"].columns
               if c.endswith("_seconds") and c in per_generation}  # a study begun before they were recorded
    total = sum(s.sum() for s in seconds.values())
    parts = [f"{stage} {s.sum():.0f} s ({s.sum() / total:.0%}, median {s.median():.1f} s)"
             for stage, s in seconds.items() if s.notna().any()]
    return f"time by stage over {len(per_generation)} generations: {', '.join(parts)}"


MAX_PRINTED_CI = 0.5  # a prevalence CI wider than this is not printed in the closing lines


def _summaries(cfg: StudyConfig, log) -> None:
    # Imported here, inside the study's scratch space: importing wandb makes a temp folder, which a
    # killed driver would leave in the system temp dir.
    from biasamp.tracking import log_study_tables

    out = cfg.output_dir
    c = cfg.scoring.classifier
    per_seed, per_arm = write_summaries(out, TABLES["scores"].read(out), cfg.scoring.bootstrap,
                                        load_calibration(c), c.prevalence)
    log_study_tables(cfg, "summary", {"summary_arms": per_arm, "summary": per_seed}, log)
    last = per_arm.sort_values("generation").groupby("arm").tail(1)
    for r in last.itertuples():
        # A prevalence whose CI spans most of [0, 1] says nothing: it is not printed (it stays in the table).
        prev = (f", prevalence ({c.prevalence}) {r.prev_right:.1%} [{r.prev_right_lo:.1%}, {r.prev_right_hi:.1%}]"
                if np.isfinite(r.prev_right) and r.prev_right_hi - r.prev_right_lo < MAX_PRINTED_CI else "")
        log(f"[{r.arm}] G{r.generation}: right (argmax) {r.share_right:.1%} [{r.share_right_lo:.1%}, "
            f"{r.share_right_hi:.1%}] (degradation alone: {r.null_share_right:.1%}), lean index "
            f"{r.lean_index:+.3f} [{r.lean_index_lo:+.3f}, {r.lean_index_hi:+.3f}] (degradation alone: "
            f"{r.null_lean_index:+.3f}){prev}, " + ", ".join(f"{m} {getattr(r, f'{m}_mean'):.2f}" for m in MEASURES))
    log(f"summaries -> {out / 'summary.parquet'}, {out / 'summary_arms.parquet'}")


def rescore_study(cfg: StudyConfig, log=print) -> None:
    """Score every written generation again (e.g. with another classifier) and redo the summaries.
    Plain Python, one trajectory after another."""
    with artifacts.own_output_dir(cfg.output_dir, log):
        _rescore(cfg, log)


def _rescore(cfg: StudyConfig, log) -> None:
    import json

    import pandas as pd
    import torch

    from biasamp.models import load_checkpoint
    from biasamp.stages.score import load_instruments, score_articles

    out = cfg.output_dir
    artifacts.claim_output_dir(cfg, out, record=False)  # the same trajectories are required
    versions = [(arm, seed, g) for arm in cfg.arms for seed in cfg.seeds
                for g in range(artifacts.completed_generations(out, arm, seed))]
    # A generation's perplexity under its own model needs that model; where its checkpoint was not
    # kept (keep_checkpoints: last) the perplexities already scored carry over, if made with this
    # perplexity_max_tokens (they do not depend on the instruments).
    carried = {}
    for arm, seed, g in versions:
        if not artifacts.checkpoint_dir(out, arm, seed, g).is_dir():
            old = TABLES["scores"].file(out, arm=arm, seed=seed, generation=g)
            made = json.loads(file_metadata(old, SETTINGS_KEY) or "{}") if old.exists() else {}
            if made.get("perplexity_max_tokens") != cfg.scoring.perplexity_max_tokens:
                raise ValueError(f"{out}: checkpoints/{arm}/seed{seed}/gen{g} is not kept (keep_checkpoints: "
                                 f"{cfg.keep_checkpoints}) and no perplexities with perplexity_max_tokens="
                                 f"{cfg.scoring.perplexity_max_tokens} were scored from it: cannot rescore")
            carried[arm, seed, g] = pd.read_parquet(old, columns=["article_id", "ppl"])
    inst = load_instruments(cfg.scoring, cfg.model)
    for arm, seed, g in versions:
        articles = pd.read_parquet(TABLES["articles"].file(out, arm=arm, seed=seed, generation=g))
        real = pd.read_parquet(TABLES["corpus"].file(out, corpus=cfg.arms[arm].corpus))
        with torch.no_grad():
            if (arm, seed, g) in carried:
                scores = score_articles(inst, articles, real)
                scores["ppl"] = scores[["article_id"]].merge(carried[arm, seed, g], how="left")["ppl"].to_numpy()
            else:
                model, tok = load_checkpoint(artifacts.checkpoint_dir(out, arm, seed, g))
                scores = score_articles(inst, articles, real, own=(model.eval(), tok))
        TABLES["scores"].write(scores, out, metadata={SETTINGS_KEY: inst.settings}, arm=arm, seed=seed, generation=g)
        note = " (own perplexity carried over: checkpoint not kept)" if (arm, seed, g) in carried else ""
        log(f"[{arm}/seed{seed}] G{g}: scored {len(scores)} articles{note}")
    artifacts.claim_output_dir(cfg, out)  # the manifest now says how every score was made
    _summaries(cfg, log)


def _worker_env() -> dict[str, str]:
    """Environment for the workers: offline hubs stay offline, W&B settings pass through.
    WANDB_API_KEY is read by wandb from the worker's own environment, never from here."""
    keep = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "WANDB_MODE", "WANDB_DIR", "WANDB_ENTITY")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
