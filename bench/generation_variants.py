"""What was tried to make the batched generator faster on CPU, each against the shipped float32
path in the same run: a static KV cache (no concatenation per step), eager attention instead of
SDPA, bfloat16 weights with SDPA (the shipped `generation.dtype: bfloat16`) and with eager
attention. SmolLM2-135M, 64 prompt blocks of the bundled articles, 64 new tokens, batch 32. Prints
each variant's time, its ratio to float32 and how many blocks and tokens are the same as float32's.

    python bench/generation_variants.py [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from biasamp.config import ModelConfig
from biasamp.corpus import read_source
from biasamp.models import load_base_model, load_tokenizer
from biasamp.stages import generate
from biasamp.stages.generate import article_prompts, greedy_continuations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(kind="gguf", name="smollm2")
    tok = load_tokenizer(cfg)
    model = load_base_model(cfg, len(tok)).eval()
    arts = read_source("bundled")
    prompts = [p for t, b in zip(arts["title"], arts["text"]) for p in article_prompts(tok, t, b, 64, None)][:64]

    def run(m, dtype=torch.float32):
        t = time.perf_counter()
        out = greedy_continuations(m, prompts, 64, 32, tok.pad_token_id, None, dtype=dtype)
        return time.perf_counter() - t, out

    def with_attention(impl):
        m = copy.deepcopy(model)
        m.set_attn_implementation(impl)
        return m

    run(model)  # warm-up
    base_s, ref = run(model)
    print(f"SmolLM2-135M, {args.threads} threads, {len(prompts)} blocks x 64 new tokens, batch 32")
    print(f"{'float32, SDPA, dynamic cache (shipped)':44s} {base_s:6.1f} s")
    plain_config = generate.GenerationConfig
    variants = {
        "float32, static KV cache": lambda: run(model),
        "float32, eager attention": lambda: run(with_attention("eager")),
        "bfloat16, SDPA (generation.dtype)": lambda: run(model, torch.bfloat16),
        "bfloat16, eager attention": lambda: run(with_attention("eager"), torch.bfloat16),
    }
    for name, fn in variants.items():
        if "static" in name:
            generate.GenerationConfig = lambda **kw: plain_config(cache_implementation="static", **kw)
        try:
            s, out = fn()
        finally:
            generate.GenerationConfig = plain_config
        blocks = sum(a == b for a, b in zip(ref, out))
        tokens = sum(x == y for a, b in zip(ref, out) for x, y in zip(a, b)) / sum(map(len, ref))
        print(
            f"{name:44s} {s:6.1f} s  {base_s / s:5.2f}x   same as float32: {blocks}/{len(ref)} blocks, "
            f"{tokens:.0%} of tokens"
        )


if __name__ == "__main__":
    main()
