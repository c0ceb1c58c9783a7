"""Neuron-level summaries of one model version, as long-format rows (layer, neuron, kind, stat, value).

A "neuron" is an output unit of a layer's FFN sublayer (GPT-2 `mlp.c_proj`, 768 per layer;
Llama-family `mlp.down_proj`). Per neuron:

- kind "weight": stat "mean" and "l2" of its incoming weight vector, "bias" where the layer has one;
- kind "activation", stat "mean": the FFN-sublayer output averaged over every non-padding token of
  a fixed probe set (the same texts for every version);
- kind "block_activation", stat "mean": the same for the whole block's output (the residual
  stream), the quantity the authors' script hooks. Their average truncates every article to the
  shortest one seen so far and divides by a zero-padded 512 tokens; here both use masked sums over
  the real tokens of every article.

Sums are streamed batch by batch (float64 accumulators), never materialising all activations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from biasamp.config import NeuronsConfig
from biasamp.text import by_length

_FFN_OUT = ("mlp.c_proj", "mlp.down_proj", "mlp.fc2", "mlp.dense_4h_to_h")


def layer_modules(model, cfg: NeuronsConfig) -> tuple[list, list]:
    """(FFN output modules, block modules), one per layer, by config pattern or found automatically."""
    named = dict(model.named_modules())
    if cfg.ffn_module and cfg.block_module:
        n = 0
        while cfg.ffn_module.format(layer=n) in named:
            n += 1
        if n == 0:
            raise ValueError(f"neurons.ffn_module: no module named {cfg.ffn_module.format(layer=0)}")
        return (
            [named[cfg.ffn_module.format(layer=i)] for i in range(n)],
            [named[cfg.block_module.format(layer=i)] for i in range(n)],
        )
    for name, module in named.items():
        if isinstance(module, torch.nn.ModuleList) and len(module) and hasattr(module[0], "mlp"):
            sub = dict(module[0].named_modules())
            out = next((p for p in _FFN_OUT if p in sub), None)
            if out is not None:
                return [dict(b.named_modules())[out] for b in module], list(module)
    raise ValueError(
        f"{type(model).__name__}: no GPT-2/Llama-style blocks found; name them in the config "
        "(neurons.ffn_module / neurons.block_module, e.g. 'model.layers.{layer}.mlp.down_proj')"
    )


def _incoming(module) -> torch.Tensor:
    """Weights as (out_features, in_features): GPT-2's Conv1D stores them transposed."""
    w = module.weight.detach()
    return w.T if type(module).__name__ == "Conv1D" else w


def weight_rows(ffn: list) -> pd.DataFrame:
    parts = []
    for layer, module in enumerate(ffn):
        w = _incoming(module).double()
        stats = {"mean": w.mean(dim=1), "l2": w.norm(dim=1)}
        if getattr(module, "bias", None) is not None:
            stats["bias"] = module.bias.detach().double()
        for stat, values in stats.items():
            parts.append(_rows(layer, "weight", stat, values.cpu().numpy()))
    return pd.concat(parts, ignore_index=True)


@torch.no_grad()
def activation_rows(model, tokenizer, texts: list[str], ffn: list, blocks: list, cfg: NeuronsConfig) -> pd.DataFrame:
    sums: dict[tuple[str, int], torch.Tensor] = {}
    mask_now: list[torch.Tensor] = []

    def hook(key):
        def fn(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            s = torch.einsum("bth,bt->h", h.double(), mask_now[0].double())
            sums[key] = sums[key] + s if key in sums else s

        return fn

    handles = [m.register_forward_hook(hook(("activation", i))) for i, m in enumerate(ffn)]
    handles += [m.register_forward_hook(hook(("block_activation", i))) for i, m in enumerate(blocks)]
    side, tokenizer.padding_side = tokenizer.padding_side, "right"  # positions start at 0 for every text
    # Never past the model's context (a tiny test model may have fewer positions than max_length).
    max_length = min(cfg.max_length, getattr(model.config, "max_position_embeddings", None) or cfg.max_length)
    n_tokens = 0
    try:
        for idx in by_length(texts, cfg.batch_size):
            batch = [texts[i] for i in idx]
            enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            mask_now[:] = [enc["attention_mask"]]
            model(**enc, use_cache=False)
            n_tokens += int(enc["attention_mask"].sum())
    finally:
        tokenizer.padding_side = side
        for h in handles:
            h.remove()
    return pd.concat(
        [_rows(layer, kind, "mean", (s / n_tokens).cpu().numpy()) for (kind, layer), s in sorted(sums.items())],
        ignore_index=True,
    )


def capture(model, tokenizer, probe_texts: list[str], cfg: NeuronsConfig) -> pd.DataFrame:
    """Every neuron row of one model version, sorted by (layer, kind, stat, neuron): a layer's
    rows are contiguous, so they can be stored as one Parquet row group."""
    ffn, blocks = layer_modules(model, cfg)
    model.eval()
    rows = pd.concat([weight_rows(ffn), activation_rows(model, tokenizer, probe_texts, ffn, blocks, cfg)])
    return rows.sort_values(["layer", "kind", "stat", "neuron"], kind="stable").reset_index(drop=True)


def _rows(layer: int, kind: str, stat: str, values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"layer": layer, "neuron": np.arange(len(values)), "kind": kind, "stat": stat, "value": values})
