"""Batched block generator vs the authors' one-`generate`-call-per-block loop.

Same model, same prompt blocks (title + 64-token body blocks of the bundled real articles),
greedy, `--new-tokens` each, EOS ignored so both sides write the same number of tokens.
Prints tokens/s of each, the ratio, and whether the outputs match token for token.

    python bench/generation.py                      # SmolLM2-135M (offline), 2 threads
    python bench/generation.py --model gpt2         # a hub id or local dir (kind hf)
"""

from __future__ import annotations

import argparse
import time

import torch

from biasamp.config import ModelConfig
from biasamp.stages.corpus import read_source
from biasamp.stages.generate import article_prompts, greedy_continuations
from biasamp.models import load_base_model, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (offline GGUF) or an HF id/dir")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--baseline-prompts", type=int, default=12, help="the slow loop runs on the first N prompts")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = ModelConfig(kind="gguf", name="smollm2") if args.model == "smollm2" else ModelConfig(kind="hf", name=args.model)
    tok = load_tokenizer(cfg)
    model = load_base_model(cfg, len(tok)).eval()
    arts = read_source("bundled")
    prompts = [p for t, b in zip(arts["title"], arts["text"]) for p in article_prompts(tok, t, b, 64, None)]
    prompts = prompts[: args.prompts]
    n_base = min(args.baseline_prompts, len(prompts))

    t = time.perf_counter()
    baseline = []
    with torch.no_grad():
        for p in prompts[:n_base]:
            ids = torch.tensor([p])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_length=len(p) + args.new_tokens,
                                 min_length=len(p) + args.new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            baseline.append(out[0, len(p):].tolist())
    base_tps = n_base * args.new_tokens / (time.perf_counter() - t)

    t = time.perf_counter()
    batched = greedy_continuations(model, prompts, args.new_tokens, args.batch_size, tok.pad_token_id, None)
    batch_tps = len(prompts) * args.new_tokens / (time.perf_counter() - t)

    same = sum(a == b for a, b in zip(baseline, batched[:n_base]))
    print(f"model {args.model}, {args.threads} threads, {args.new_tokens} new tokens per block")
    print(f"one call per block : {base_tps:8.1f} tokens/s  ({n_base} blocks)")
    print(f"batched (bs {args.batch_size:3d})  : {batch_tps:8.1f} tokens/s  ({len(prompts)} blocks)")
    print(f"ratio              : {batch_tps / base_tps:8.1f}x")
    print(f"identical outputs  : {same}/{n_base} blocks")


if __name__ == "__main__":
    main()
