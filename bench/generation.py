"""Generation: the batched greedy generator (float32 and bfloat16) vs the authors' loop, one
`generate` call per block, on the same model and prompt blocks (title + 64-token body blocks of
the bundled real articles), greedy, 64 new tokens each, EOS ignored so both write as many tokens.
Times are seconds per block; the check is how many blocks the authors' loop and ours continue
with the same tokens. On a machine with a GPU both run on it. Run by `python -m bench generation`.
"""

from __future__ import annotations

import time

import torch

from biasamp.config import ModelConfig
from biasamp.corpus import read_source
from biasamp.models import load_base_model, load_tokenizer
from biasamp.stages.generate import article_prompts, greedy_continuations

PROMPTS, BASELINE_PROMPTS, NEW_TOKENS, BATCH = 64, 8, 64, 32  # the authors' loop runs on the first 8 blocks


def authors_loop(model, prompts, pad_id, new_tokens=NEW_TOKENS):
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=model.device)
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_length=len(p) + new_tokens,
                min_length=len(p) + new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
            out.append(gen[0, len(p) :].tolist())
    return out


def _timed(fn, n_blocks):
    t = time.perf_counter()
    result = fn()
    return (time.perf_counter() - t) / n_blocks, result


def measure(repeats: int) -> list[dict]:
    cfg = ModelConfig(kind="gguf", name="smollm2")
    tok = load_tokenizer(cfg)
    model = load_base_model(cfg, len(tok)).eval().to("cuda" if torch.cuda.is_available() else "cpu")
    arts = read_source("bundled")
    prompts = [p for t, b in zip(arts["title"], arts["text"]) for p in article_prompts(tok, t, b, 64, None)][:PROMPTS]
    first = prompts[:BASELINE_PROMPTS]
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    ours = {
        d: lambda dt=dt: greedy_continuations(model, prompts, NEW_TOKENS, BATCH, tok.pad_token_id, None, dtype=dt)
        for d, dt in dtypes.items()
    }
    greedy_continuations(model, prompts[:2], 2, 2, tok.pad_token_id, None)  # warm-up (one-time allocations)
    base_s, ours_s, outputs = [], {d: [] for d in dtypes}, {}
    for _ in range(repeats):
        s, reference = _timed(lambda: authors_loop(model, first, tok.pad_token_id), len(first))
        base_s.append(s)
        for d, fn in ours.items():
            s, outputs[d] = _timed(fn, len(prompts))
            ours_s[d].append(s)
    rows = []
    for d in dtypes:
        got = outputs[d][: len(first)]
        same = sum(a == b for a, b in zip(reference, got))
        tokens = sum(x == y for a, b in zip(reference, got) for x, y in zip(a, b)) / sum(map(len, reference))
        rows.append(
            {
                "figure": f"generation, SmolLM2-135M, 64-token blocks + {NEW_TOKENS} new tokens, {d}",
                "unit": "s per block",
                "ours": f"batched ({BATCH} blocks, by length), {d}",
                "baseline": "one generate call per block, float32 (authors')",
                "ours_s": ours_s[d],
                "baseline_s": base_s,
                "check": f"{same}/{len(first)} blocks identical to the authors' loop, {tokens:.0%} of tokens",
            }
        )
    return rows
