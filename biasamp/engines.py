"""Scale-out engines around the plain science code: DeepSpeed fine-tuning on Ray Train workers.

Why Ray Train's TorchTrainer and not a hand-made worker group: it places the N workers (a placement
group of its own, so a trajectory's trainer queues until the cluster has room for all of them),
sets up torch.distributed (NCCL on GPUs, gloo on CPUs), and restarts a failed worker group. Inside each
worker runs the very Trainer of biasamp.train with a DeepSpeed ZeRO config, so the optimizer,
schedule and data order are the ones of the single-process run.

Weights travel as ordinary HF safetensors folders under `workdir` (storage all workers see: the
study's output folder, which on a multi-node cluster is shared storage).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from biasamp.config import TrainConfig

# One per environment: DeepSpeed recompiles (under a file lock) for another interpreter or torch.
EXTENSIONS_CACHE = (Path.home() / ".cache" / "biasamp" / "torch_extensions"
                    / f"torch{torch.__version__}-{hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]}")


def deepspeed_config(cfg: TrainConfig) -> dict:
    """The ZeRO config; "auto" values are filled by transformers from the TrainingArguments, so
    batch sizes, learning rate, weight decay and clipping have one source: the study config."""
    d = cfg.deepspeed
    zero = {"stage": d.zero_stage}
    if d.zero_stage == 3:  # gather the sharded weights on save so the checkpoint is a plain HF folder
        zero["stage3_gather_16bit_weights_on_model_save"] = True
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
    import ray.train
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from biasamp.train import make_trainer, tokenized, train_metrics

    cfg = TrainConfig.model_validate(config["train"])
    init = Path(config["init"])
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    ds = tokenized(tokenizer, config["texts"], cfg.max_length)
    d = cfg.deepspeed
    accumulation = cfg.batch_size // (d.workers * d.micro_batch)
    trainer = make_trainer(model, tokenizer, ds, cfg, config["seed"], str(init.parent / "trainer"),
                           deepspeed=deepspeed_config(cfg), micro_batch=d.micro_batch, accumulation=accumulation)
    result = trainer.train()
    metrics = train_metrics(trainer, result, ds, cfg)
    trainer.save_model(config["out"])  # every rank takes part (ZeRO-3 gathers); rank 0 writes
    if ray.train.get_context().get_world_rank() == 0:
        (Path(config["out"]) / "metrics.json").write_text(json.dumps(metrics))


def fine_tune_deepspeed(model, tokenizer, texts: list[str], cfg: TrainConfig, seed: int, workdir: Path | None) -> dict:
    """Fine-tune `model` in place on cfg.deepspeed.workers Ray Train workers with DeepSpeed ZeRO."""
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
        train_loop_config={"train": cfg.model_dump(), "init": str(init), "out": str(out), "seed": seed,
                           "texts": texts, "gpu": gpu},
        scaling_config=ScalingConfig(num_workers=cfg.deepspeed.workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cfg.deepspeed.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        # A failed worker restarts the whole group from the generation's starting weights.
        run_config=RunConfig(name="train", storage_path=str(workdir / "ray"), failure_config=FailureConfig(max_failures=2)),
    )
    trainer.fit()
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.load_state_dict(trained.state_dict())
    model.eval()
    metrics = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    return metrics



# ---- vLLM generation engines ----------------------------------------------------------------------

class VLLMEngine:
    """One vLLM engine (a Ray actor in `vllm_continuations`): greedy continuations of token prompts
    from a checkpoint folder. Loaded once per generation: the safetensors checkpoint is the handoff
    (simple, resumable); live weight sync would only pay off when a generation's load time rivals its
    decoding time, i.e. for multi-billion-parameter models over short corpora."""

    def __init__(self, checkpoint: str, max_model_len: int):
        from vllm import LLM

        gpu = torch.cuda.is_available()
        # On vLLM's CPU backend gpu_memory_utilization is the share of host RAM reserved for the KV cache.
        self.llm = LLM(model=checkpoint, tokenizer=checkpoint, dtype="auto" if gpu else "float32",
                       max_model_len=max_model_len, enforce_eager=True, seed=0,
                       gpu_memory_utilization=0.85 if gpu else 0.15)

    def continuations(self, prompts: list[list[int]], new_tokens: int, eos_id: int | None) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=eos_id is None, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        result = []
        for o in outs:  # vLLM returns outputs in prompt order
            seq = list(o.outputs[0].token_ids)
            if eos_id is not None and eos_id in seq:
                seq = seq[: seq.index(eos_id)]
            result.append(seq)
        return result


def vllm_continuations(checkpoint: Path, prompts: list[list[int]], new_tokens: int, eos_id: int | None,
                       engines: int, gpus_per_engine: float) -> list[list[int]]:
    """Greedy continuations from `engines` data-parallel vLLM engines, each a Ray actor holding
    `gpus_per_engine` GPUs and every engines-th prompt; inside a trajectory's placement group
    (biasamp.orchestrate.trajectory_bundles) each engine takes its own bundle."""
    import ray

    longest = max((len(p) for p in prompts), default=1) + new_tokens
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(num_gpus=gpus_per_engine, num_cpus=1)(VLLMEngine)
    pg = ray.util.get_current_placement_group()  # the trajectory's: bundles 1.. are the engines'
    shards = [prompts[i::engines] for i in range(engines)]  # strided: similar lengths in every shard
    place = [{"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1 + i)}
             if pg is not None else {} for i in range(engines)]
    handles = [actor.options(**place[i]).remote(str(checkpoint), longest) for i in range(engines)]
    results = ray.get([h.continuations.remote(s, new_tokens, eos_id) for h, s in zip(handles, shards)])
    for h in handles:
        ray.kill(h)
    out: list[list[int]] = [[] for _ in prompts]
    for i, res in enumerate(results):
        out[i::engines] = res
    return out
