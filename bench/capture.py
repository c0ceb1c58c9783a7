"""Overhead of neuron capture over a plain forward pass on the same probe batches.

GPT-2-small architecture (124M, random weights: the cost does not depend on the values),
bundled articles truncated to --max-length tokens. Prints both times and the ratio.

    python bench/capture.py [--articles 16] [--max-length 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from biasamp.config import ModelConfig, NeuronsConfig
from biasamp.stages.corpus import read_source
from biasamp.models import load_tokenizer
from biasamp.stages.neurons import capture


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--articles", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    tok = load_tokenizer(ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe"))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok))).eval()
    texts = list(read_source("bundled")["text"].iloc[: args.articles])
    cfg = NeuronsConfig(max_length=args.max_length, batch_size=args.batch_size)

    def plain():
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.no_grad():
            for s in range(0, len(order), cfg.batch_size):
                enc = tok([texts[i] for i in order[s:s + cfg.batch_size]], truncation=True,
                          max_length=cfg.max_length, padding=True, return_tensors="pt")
                model(**enc, use_cache=False)

    plain()  # warm-up
    t_plain, t_cap = [], []
    for _ in range(args.repeats):  # alternate, keep the fastest of each: less noise from the machine
        t = time.perf_counter(); plain(); t_plain.append(time.perf_counter() - t)
        t = time.perf_counter(); rows = capture(model, tok, texts, cfg); t_cap.append(time.perf_counter() - t)
    t_plain, t_cap = min(t_plain), min(t_cap)
    print(f"{len(texts)} articles x <= {cfg.max_length} tokens, GPT-2-small, {torch.get_num_threads()} threads")
    print(f"plain forward : {t_plain:7.2f} s")
    print(f"with capture  : {t_cap:7.2f} s  ({len(rows)} neuron rows: weights, FFN and block activations)")
    print(f"overhead      : {100 * (t_cap / t_plain - 1):6.1f} %")


if __name__ == "__main__":
    main()
