"""The thin Ray layer: one Ray task per (arm, seed) trajectory, run concurrently.

`execute` is what biasamp.study.run_study runs the pending trajectories with: it starts (or joins)
Ray, places each trajectory's group, and streams progress; each task runs the plain-Python
`run_trajectory` with torch limited to its CPU allotment, after importing the backends that register
the DeepSpeed trainer and the vLLM generator.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import traceback
from datetime import datetime

from biasamp import artifacts
from biasamp.config import StudyConfig
from biasamp.preflight import check_resources, deepspeed_workers, trajectory_bundles
from biasamp.progress import study_status, summary_line

SUMMARY_EVERY = 60  # seconds between the driver's one-line summaries of the study (biasamp.progress)


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

    # What the imports made is never garbage: frozen, it is not walked by the full collection that
    # accelerate runs at each training's start and end (0.37 s each on 2 cores, a quarter of a tiny
    # generation's training).
    gc.freeze()
    logfile = cfg.output_dir / "logs" / f"{arm}__seed{seed}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        with logfile.open("a") as fh:  # milliseconds: biasamp.progress times tiny stages from these lines
            fh.write(f"{datetime.now().isoformat(sep=' ', timespec='milliseconds')} {message}\n")
        try:  # best effort: the log file is the record; the driver's console must not fail the trajectory
            progress.put(message, timeout=5)
        except Exception:
            pass

    import ray

    # Which node a trajectory ran on, in its log: where to look when a node's death or disk failed it.
    log(f"[{arm}/seed{seed}] on node {ray.get_runtime_context().get_node_id()[:12]} ({ray.util.get_node_ip_address()})")
    with artifacts.scratch_space(cfg.output_dir):  # on another node too: its temp files under the study's scratch
        try:
            return arm, seed, run_trajectory(cfg, arm, seed, log=log)
        except Exception:
            with logfile.open("a") as fh:
                fh.write(traceback.format_exc())
            raise


def execute(cfg: StudyConfig, pending: list[tuple[str, int]], log=print) -> tuple[int, list[str]]:
    """Run the pending (arm, seed) trajectories as Ray tasks; returns how many generations were run
    and, for each trajectory that failed, one line (its error's first line and its log file). A
    failure stops only its own trajectory: the others run to the end."""
    address = cfg.resources.ray_address
    if address is None or address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
        # On Linux Ray binds a "local" cluster to the machine's outward address, and resolves a
        # loopback address to it too (a driver then waits minutes for a cluster it cannot reach); this
        # makes it use 127.0.0.1 (read when ray is first imported, inherited by the workers it starts).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    started_here = not ray.is_initialized()
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if started_here:
        # Workers' own output stays in Ray's session logs; their progress lines come through
        # the queue below, one line per stage, and go to OUT/logs/{arm}__seed{seed}.log too.
        common = dict(logging_level="ERROR", log_to_driver=False, runtime_env={"env_vars": _worker_env()})
        if cfg.resources.ray_address is None:
            # A private single-machine Ray, on loopback only, no dashboard.
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **common)
        else:
            ray.init(address=cfg.resources.ray_address, **common)
        # Ray's core worker puts in a handler that dumps C++ frames and aborts on SIGTERM: the caller's
        # goes back, so a stop ends in its `finally` below (groups removed, Ray shut down).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)
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
    # A trajectory whose worker or node died is run again (it resumes from its last finished stage);
    # one that raises anything else is not: the same input fails the same way.
    # A vLLM engine's death (RayActorError inside the trajectory) counts as a lost worker too.
    task = ray.remote(max_retries=res.max_retries, retry_exceptions=[ray.exceptions.RayActorError])(_trajectory_task)
    t0 = summarized = time.time()
    ran, failed = 0, []
    groups, names = {}, {}  # task ref -> its trajectory's placement group, its name
    try:
        # The progress queue is an actor: pinned to the driver's node, with no CPU, so that no other
        # node's death takes it (Ray would otherwise place it anywhere, e.g. on a worker of a 0-CPU head).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        queued, remaining = list(pending), []
        while queued or remaining:
            while queued and len(remaining) < in_flight:
                arm, seed = queued.pop(0)
                pg = placement_group(bundles, strategy="PACK", name=f"{cfg.study}/{arm}/seed{seed}")
                # Bundle 0 holds the trajectory itself; vLLM engines take the others (vllm_engines).
                # A trajectory whose group does not fit yet waits: trajectories queue when the cluster is full.
                strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
                ref = task.options(
                    num_cpus=res.cpus_per_trajectory, num_gpus=res.gpus_per_trajectory, scheduling_strategy=strategy
                ).remote(cfg, arm, seed, res.cpus_per_trajectory, progress)
                groups[ref] = pg
                names[ref] = f"{arm}__seed{seed}"
                remaining.append(ref)
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=1.0)
            for message in progress.get_nowait_batch(progress.qsize()):
                log(f"{time.time() - t0:6.0f}s {message}")
            if time.time() - summarized >= SUMMARY_EVERY:
                summarized = time.time()
                log(f"{summarized - t0:6.0f}s {summary_line(study_status(cfg))}")
            for ref in ready:
                remove_placement_group(groups.pop(ref))  # its resources go to the next queued trajectory
                done = len(pending) - len(queued) - len(remaining)
                try:
                    arm, seed, n = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker's traceback is in its log file
                    failed.append(f"{names[ref]}: {_first_line(e)} (log: {cfg.output_dir / 'logs' / names[ref]}.log)")
                    log(f"{time.time() - t0:6.0f}s [{names[ref]}] failed ({done}/{len(pending)} trajectories)")
                    continue
                ran += n
                log(f"{time.time() - t0:6.0f}s [{arm}/seed{seed}] finished ({done}/{len(pending)} trajectories)")
    finally:
        for pg in groups.values():
            remove_placement_group(pg)
        if started_here:
            ray.shutdown()
    return ran, failed


def _first_line(e: Exception) -> str:
    """What went wrong, in one line: the trajectory's own exception where it raised one (a file and
    its error for an OSError), else Ray's (a worker or node lost after every retry)."""
    cause = getattr(e, "cause", None) or e
    what = f"{cause.filename}: {cause.strerror}" if getattr(cause, "filename", None) else str(cause)
    lines = [line.strip() for line in what.strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:300]


def _worker_env() -> dict[str, str]:
    """Environment for the workers: offline hubs stay offline, W&B settings pass through.
    WANDB_API_KEY is read by wandb from the worker's own environment, never from here."""
    keep = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "WANDB_MODE", "WANDB_DIR", "WANDB_ENTITY")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
