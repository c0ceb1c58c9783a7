"""Scale-out engines around the plain science code: DeepSpeed fine-tuning on Ray Train workers.

Why Ray Train's TorchTrainer and not a hand-made worker group: it places the N workers (a placement
group of its own, so a trajectory's trainer queues until the cluster has room for all of them),
sets up torch.distributed (NCCL on GPUs, gloo on CPUs), and restarts a failed worker group. Inside each
worker runs the very Trainer of biasamp.stages.train with a DeepSpeed ZeRO config, so the optimizer,
schedule and data order are the ones of the single-process run.

Weights travel as ordinary HF safetensors folders under `workdir` (storage all workers see: the
study's output folder, which on a multi-node cluster is shared storage).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shutil
import sys
from pathlib import Path

import torch

from biasamp.config import TrainConfig
from biasamp.stages.train import make_trainer, register_trainer, tokenized, train_metrics, training_arguments
from biasamp.text import training_text

# One per environment: DeepSpeed recompiles (under a file lock) for another interpreter or torch.
EXTENSIONS_CACHE = (
    Path.home()
    / ".cache"
    / "biasamp"
    / "torch_extensions"
    / f"torch{torch.__version__}-{hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]}"
)


def deepspeed_config(cfg: TrainConfig, hidden_size: int) -> dict:
    """The ZeRO config; "auto" values are filled by transformers from the TrainingArguments, so
    batch sizes, learning rate, weight decay and clipping have one source: the study config."""
    d = cfg.deepspeed
    zero = {"stage": d.zero_stage}
    if d.zero_stage >= 2:
        # Buckets sized by the model, as transformers' "auto" does: DeepSpeed's defaults (5e8 elements)
        # are 2 GB per bucket in fp32, as much as a 0.5B model's states per worker (bench/zero_memory.py).
        bucket = hidden_size * hidden_size
        zero |= {"reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if d.zero_stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": int(0.9 * bucket),
            "stage3_param_persistence_threshold": 10 * hidden_size,
            "stage3_gather_16bit_weights_on_model_save": True,  # the checkpoint is a plain HF folder
        }
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": d.precision == "bf16"},
        "fp16": {"enabled": d.precision == "fp16"},
    }


def _worker(config: dict) -> None:
    """One Ray Train worker: load the handed-over weights, train, rank 0 writes weights + curve."""
    # Before DeepSpeed is first imported: its CPU ops compile once into a persistent cache.
    EXTENSIONS_CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS_CACHE))
    if not config["gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # glibc keeps freed buffers below its mmap threshold (up to 32 MB: a layer's weights, which
        # ZeRO-3 gathers and frees at every forward) in its arenas, so a CPU worker's memory only
        # grows: from 64 KiB up, take memory from the OS and give it back. Measured on the
        # Qwen2.5-0.5B architecture, ZeRO-3 x 2 workers: 8.3 -> 6.2 GiB per worker above its start.
        ctypes.CDLL(None).mallopt(-3, 1 << 16)  # -3: M_MMAP_THRESHOLD
    import deepspeed
    import psutil
    import ray.train
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = TrainConfig.model_validate(config["train"])
    init = Path(config["init"])
    d = cfg.deepspeed
    # Before the model: under ZeRO-3 these arguments make from_pretrained load each worker's shard
    # (deepspeed.zero.Init), so no worker ever holds the whole model.
    args = training_arguments(
        cfg,
        config["seed"],
        str(init.parent / "trainer"),
        deepspeed=deepspeed_config(cfg, AutoConfig.from_pretrained(init).hidden_size),
        micro_batch=d.micro_batch,
        accumulation=cfg.batch_size // (d.workers * d.micro_batch),
    )
    deepspeed.init_distributed()  # over Ray Train's process group: zero.Init reads the world size there
    tokenizer = AutoTokenizer.from_pretrained(init)
    before_model = psutil.Process().memory_info().rss
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    ds = tokenized(tokenizer, config["texts"], cfg.max_length)
    trainer = make_trainer(model, tokenizer, ds, args)
    result = trainer.train()
    metrics = train_metrics(trainer, result, ds, cfg)
    trainer.save_model(config["out"])  # every rank takes part (ZeRO-3 gathers); rank 0 writes
    rank = ray.train.get_context().get_world_rank()
    # Each worker's high-water resident memory (Linux: KiB) and what it held before the model: the
    # difference is the model states and activations (bench/zero_memory.py measures with it).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memory = {"peak_rss": peak, "rss_before_model": before_model}
    (Path(config["out"]) / f"memory_rank{rank}.json").write_text(json.dumps(memory))
    if rank == 0:
        (Path(config["out"]) / "metrics.json").write_text(json.dumps(metrics))


@register_trainer("deepspeed")
def fine_tune_deepspeed(model, tokenizer, articles, cfg: TrainConfig, seed: int, workdir: Path | None = None) -> dict:
    """Fine-tune `model` in place on `articles` (title, text) on cfg.deepspeed.workers Ray Train workers
    with DeepSpeed ZeRO; `workdir` (on storage every worker sees) carries the weights there and back."""
    texts = [training_text(t, b) for t, b in zip(articles["title"], articles["text"])]
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoModelForCausalLM

    if workdir is None:
        raise ValueError("train.backend deepspeed needs a workdir on storage every worker sees")
    workdir = Path(workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    init, out = workdir / "init", workdir / "out"
    model.save_pretrained(init, safe_serialization=True)
    tokenizer.save_pretrained(init)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    gpu = torch.cuda.is_available()
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "train": cfg.model_dump(),
            "init": str(init),
            "out": str(out),
            "seed": seed,
            "texts": texts,
            "gpu": gpu,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.deepspeed.workers, use_gpu=gpu, resources_per_worker={"CPU": cfg.deepspeed.cpus_per_worker}
        ),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        # A failed worker restarts the whole group from the generation's starting weights.
        run_config=RunConfig(
            name="train", storage_path=str(workdir / "ray"), failure_config=FailureConfig(max_failures=2)
        ),
    )
    trainer.fit()
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.load_state_dict(trained.state_dict())
    model.eval()
    metrics = json.loads((out / "metrics.json").read_text())
    ranks = [json.loads((out / f"memory_rank{r}.json").read_text()) for r in range(cfg.deepspeed.workers)]
    metrics["worker_memory"] = ranks  # per rank: peak_rss, rss_before_model (bytes)
    shutil.rmtree(workdir, ignore_errors=True)
    return metrics
