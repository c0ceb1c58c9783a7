"""Neuron capture: a forward pass with biasamp's capture (weights, FFN and block activation
summaries) vs a plain forward pass on the same probe batches. GPT-2-small architecture (124M, random
weights: the cost does not depend on the values), 16 bundled articles to 256 tokens. The speedup is
below 1: its shortfall is capture's overhead. Run by `python -m bench capture`.
"""

from __future__ import annotations

import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from biasamp.config import ModelConfig, NeuronsConfig
from biasamp.corpus import read_source
from biasamp.models import load_tokenizer
from biasamp.stages.neurons import capture

ARTICLES, MAX_LENGTH, BATCH = 16, 256, 8


def measure(repeats: int) -> list[dict]:
    tok = load_tokenizer(ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe"))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok))).eval()
    texts = list(read_source("bundled")["text"].iloc[:ARTICLES])
    cfg = NeuronsConfig(max_length=MAX_LENGTH, batch_size=BATCH)

    def plain():
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.no_grad():
            for s in range(0, len(order), BATCH):
                enc = tok(
                    [texts[i] for i in order[s : s + BATCH]],
                    truncation=True,
                    max_length=MAX_LENGTH,
                    padding=True,
                    return_tensors="pt",
                )
                model(**enc, use_cache=False)

    plain()  # warm-up
    t_plain, t_cap = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        plain()
        t_plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        rows = capture(model, tok, texts, cfg)
        t_cap.append(time.perf_counter() - t)
    overhead = sorted(t_cap)[len(t_cap) // 2] / sorted(t_plain)[len(t_plain) // 2] - 1
    return [
        {
            "figure": f"neuron capture, GPT-2-small, {ARTICLES} articles to {MAX_LENGTH} tokens",
            "unit": "s",
            "ours": "forward pass with capture",
            "baseline": "plain forward pass",
            "ours_s": t_cap,
            "baseline_s": t_plain,
            "check": f"{len(rows)} neuron rows; overhead {overhead:.0%} (medians)",
        }
    ]
