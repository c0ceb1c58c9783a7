"""vLLM generation engines as Ray actors, data-parallel over a generation's prompt blocks
(`generation.backend: vllm`); the plain science code (biasamp.stages.generate) calls
`vllm_continuations` in place of its own batched generator."""

from __future__ import annotations

from pathlib import Path

import torch

from biasamp.stages.generate import register_generator


class VLLMEngine:
    """One vLLM engine (a Ray actor in `vllm_continuations`): greedy continuations of token prompts
    from a checkpoint folder. Loaded once per generation: the safetensors checkpoint is the handoff
    (simple, resumable); live weight sync would only pay off when a generation's load time rivals its
    decoding time, i.e. for multi-billion-parameter models over short corpora."""

    def __init__(self, checkpoint: str, max_model_len: int):
        from vllm import LLM

        gpu = torch.cuda.is_available()
        # On vLLM's CPU backend gpu_memory_utilization is the share of host RAM reserved for the KV cache.
        self.llm = LLM(
            model=checkpoint,
            tokenizer=checkpoint,
            dtype="auto" if gpu else "float32",
            max_model_len=max_model_len,
            enforce_eager=True,
            seed=0,
            gpu_memory_utilization=0.85 if gpu else 0.15,
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
) -> list[list[int]]:
    """Greedy continuations from `engines` data-parallel vLLM engines, each a Ray actor holding
    `gpus_per_engine` GPUs and every engines-th prompt; inside a trajectory's placement group
    (biasamp.backends.ray_cluster.trajectory_bundles) each engine takes its own bundle."""
    import ray

    longest = max((len(p) for p in prompts), default=1) + new_tokens
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(num_gpus=gpus_per_engine, num_cpus=1)(VLLMEngine)
    pg = ray.util.get_current_placement_group()  # the trajectory's: bundles 1.. are the engines'
    shards = [prompts[i::engines] for i in range(engines)]  # strided: similar lengths in every shard
    place = [
        {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1 + i)}
        if pg is not None
        else {}
        for i in range(engines)
    ]
    handles = [actor.options(**place[i]).remote(str(checkpoint), longest) for i in range(engines)]
    results = ray.get([h.continuations.remote(s, new_tokens, eos_id) for h, s in zip(handles, shards)])
    for h in handles:
        ray.kill(h)
    out: list[list[int]] = [[] for _ in prompts]
    for i, res in enumerate(results):
        out[i::engines] = res
    return out


@register_generator("vllm")
def _vllm(model, tokenizer, prompts, cfg, eos_id, progress, checkpoint):
    return vllm_continuations(
        checkpoint, prompts, cfg.new_tokens, eos_id, cfg.backend.engines, cfg.backend.gpus_per_engine
    )
