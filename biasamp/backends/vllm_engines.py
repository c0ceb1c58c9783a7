"""vLLM generation engines as Ray actors, data-parallel over a generation's prompt blocks
(`generation.backend: vllm`); the plain science code (biasamp.stages.generate) calls
`vllm_continuations` in place of its own batched generator.

The engines of a trajectory start at its first generation and stay up to its end (`close_engines`,
called by the Ray layer): each later generation reloads its checkpoint's weights into them in place,
which on CPU takes about a second against an engine start of about 25 s.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from biasamp.stages.generate import register_generator

# (placement group, engines, GPUs each, dtype, prompts in flight) -> (max_model_len, the live engines)
_ENGINES: dict[tuple, list] = {}


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
    from a checkpoint folder, whose weights `reload` replaces in place."""

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
            enforce_eager=True,  # compiling took ~95 s a start on CPU against ~25 s, for ~10% faster decoding
            enable_prefix_caching=False,  # every prompt block is a different text
            seed=0,
            **kwargs,
        )

    def reload(self, checkpoint: str) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": checkpoint})

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
    its threads. Engines started by an earlier generation of the trajectory reload `checkpoint`."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    longest = max((len(p) for p in prompts), default=1) + new_tokens
    pg = ray.util.get_current_placement_group()  # the trajectory's: bundle 0 is its own
    key = (pg.id.hex() if pg else None, engines, gpus_per_engine, dtype, max_seqs)
    size, actors = _ENGINES.get(key, (0, None))
    if actors is not None and size < longest:  # a longer prompt than the engines were sized for
        close_engines()
        actors = None
    if actors is None:
        threads = max(1, torch.get_num_threads() // engines)  # the trajectory's CPU allotment (the Ray layer)
        actor = ray.remote(num_gpus=gpus_per_engine, num_cpus=1 if gpus_per_engine else 0)(VLLMEngine)
        place = [
            {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, (1 + i) if gpus_per_engine else 0)}
            if pg is not None
            else {}
            for i in range(engines)
        ]
        size = max(longest, 256)  # room for the next generations' prompts, which may be longer
        actors = [actor.options(**p).remote(str(checkpoint), size, dtype, threads, max_seqs) for p in place]
        _ENGINES[key] = (size, actors)
    else:
        ray.get([h.reload.remote(str(checkpoint)) for h in actors])
    shards = [prompts[i::engines] for i in range(engines)]  # strided: similar lengths in every shard
    results = ray.get([h.continuations.remote(s, new_tokens, eos_id) for h, s in zip(actors, shards)])
    out: list[list[int]] = [[] for _ in prompts]
    for i, res in enumerate(results):
        out[i::engines] = res
    return out


def close_engines() -> None:
    """Stop this process's engines (the Ray layer, when a trajectory ends)."""
    import ray

    for _, actors in _ENGINES.values():
        for h in actors:
            ray.kill(h)
    _ENGINES.clear()


@register_generator("vllm")
def _vllm(model, tokenizer, prompts, cfg, eos_id, progress, checkpoint):
    b = cfg.backend
    return vllm_continuations(
        checkpoint, prompts, cfg.new_tokens, eos_id, b.engines, b.gpus_per_engine, cfg.dtype, cfg.batch_size
    )
