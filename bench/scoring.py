"""Scoring: the study model's perplexity of full-length articles (the costliest instrument: the
offline leaning and quality models are sparse products), SmolLM2-135M at 512 tokens on the bundled
articles, as the score stage computes it on this machine (CPU: one article per forward pass; GPU:
batches of 8 by length) vs the other way. The check is the largest relative difference of the
perplexities. Run by `python -m bench scoring`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from biasamp.config import ModelConfig
from biasamp.corpus import read_source
from biasamp.models import load_base_model, load_tokenizer, perplexities
from biasamp.text import training_text

ARTICLES, MAX_TOKENS, BATCH = 16, 512, 8


def measure(repeats: int) -> list[dict]:
    df = read_source("bundled").head(ARTICLES)
    texts = [training_text(t, b) for t, b in zip(df["title"], df["text"])]
    cfg = ModelConfig(kind="gguf", name="smollm2")
    tok = load_tokenizer(cfg)
    lm = load_base_model(cfg, len(tok)).eval().to("cuda" if torch.cuda.is_available() else "cpu")
    perplexities(lm, tok, texts[:2], 16, 2)  # warm-up
    ours, other = (BATCH, 1) if torch.cuda.is_available() else (1, BATCH)  # biasamp.stages.score's choice
    name = {1: "one article per forward pass", BATCH: f"batched ({BATCH} articles, by length)"}
    times = {1: [], BATCH: []}
    ppl = {}
    for _ in range(repeats):
        for bs in (1, BATCH):
            t = time.perf_counter()
            ppl[bs] = perplexities(lm, tok, texts, MAX_TOKENS, bs)
            times[bs].append((time.perf_counter() - t) / len(texts))
    diff = float(np.max(np.abs(ppl[BATCH] / ppl[1] - 1)))
    return [
        {
            "figure": f"perplexity, SmolLM2-135M, full articles to {MAX_TOKENS} tokens",
            "unit": "s per article",
            "ours": name[ours],
            "baseline": name[other],
            "ours_s": times[ours],
            "baseline_s": times[other],
            "check": f"max relative difference {diff:.0e}",
        }
    ]
