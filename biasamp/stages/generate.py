"""The authors' block-continuation protocol, served by a batched greedy generator.

For each article: the title, then each `block_tokens`-token block of the body, is a prompt;
each prompt is greedily continued for `new_tokens` tokens; the continuations' tokens are
concatenated and decoded into one synthetic article.
"""

from __future__ import annotations

import copy
from typing import Callable

import pandas as pd
import torch
from transformers import GenerationConfig

from biasamp import config as study_config
from biasamp.text import by_length


def article_prompts(tokenizer, title: str, body: str, block_tokens: int, max_blocks: int | None) -> list[list[int]]:
    """[title tokens, body block 1, body block 2, ...]; empty prompts are dropped."""
    body_ids = tokenizer.encode(body, add_special_tokens=False)
    blocks = [body_ids[i : i + block_tokens] for i in range(0, len(body_ids), block_tokens)]
    if max_blocks is not None:
        blocks = blocks[:max_blocks]
    title_ids = tokenizer.encode(title, add_special_tokens=False) if title.strip() else []
    return [p for p in [title_ids, *blocks] if p]


@torch.no_grad()
def greedy_continuations(
    model,
    prompts: list[list[int]],
    new_tokens: int,
    batch_size: int,
    pad_id: int,
    eos_id: int | None,
    progress: Callable[[int, int], None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[list[int]]:
    """Greedy continuation of every prompt, cut before the first EOS (if eos_id is given).

    Prompts are sorted by length into batches (length buckets: little padding), left-padded,
    and decoded with the KV cache by `generate` in `dtype`; results come back in the input order.
    """
    # A fresh config: greedy, and none of the checkpoint's own sampling defaults.
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id, eos_token_id=eos_id)
    if dtype != model.dtype:  # a copy: the model trains on in its own precision
        model = copy.deepcopy(model).to(dtype)
    out: list[list[int]] = [[] for _ in prompts]
    device = model.device
    done = 0
    for idx in by_length(prompts, batch_size):
        width = len(prompts[idx[-1]])
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row, i in enumerate(idx):
            seq = gen[row, width:].tolist()
            if eos_id is not None and eos_id in seq:
                seq = seq[: seq.index(eos_id)]
            out[i] = seq
        done += len(idx)
        if progress is not None:
            progress(done, len(prompts))
    return out


# generation.backend.kind -> fn(model, tokenizer, prompts, cfg, eos_id, progress, checkpoint) -> token
# lists. "hf" is this process; a scale-out backend registers its own when imported
# (biasamp.backends.vllm_engines: "vllm"), so the stages never import the backends.
GENERATORS: dict[str, Callable] = {}


def register_generator(kind: str):
    def add(fn):
        GENERATORS[kind] = fn
        return fn

    return add


@register_generator("hf")
def _hf(model, tokenizer, prompts, cfg, eos_id, progress, checkpoint):
    return greedy_continuations(
        model,
        prompts,
        cfg.new_tokens,
        cfg.batch_size,
        tokenizer.pad_token_id,
        eos_id,
        progress,
        getattr(torch, cfg.dtype),
    )


def write_articles(
    model,
    tokenizer,
    sources: pd.DataFrame,
    cfg: study_config.GenerationConfig,
    progress: Callable[[int, int], None] | None = None,
    checkpoint=None,
) -> pd.DataFrame:
    """One synthetic article per source article: columns article_id, title, text, n_tokens.
    `progress(prompts_done, prompts_total)` is called after each batch of the hf backend; the vllm
    backend generates from `checkpoint` (the same weights as `model`, saved)."""
    prompts, owner = [], []
    for k, (title, body) in enumerate(zip(sources["title"], sources["text"])):
        ps = article_prompts(tokenizer, title, body, cfg.block_tokens, cfg.max_blocks)
        prompts += ps
        owner += [k] * len(ps)
    eos = tokenizer.eos_token_id if cfg.stop_at_eos else None
    if cfg.backend.kind not in GENERATORS:
        raise ValueError(
            f"generation.backend: '{cfg.backend.kind}' is not registered in this process (the Ray "
            f"layer imports biasamp.backends, which registers it); registered: {', '.join(GENERATORS)}"
        )
    conts = GENERATORS[cfg.backend.kind](model, tokenizer, prompts, cfg, eos, progress, checkpoint)
    tokens: list[list[int]] = [[] for _ in range(len(sources))]
    for k, c in zip(owner, conts):
        tokens[k] += c
    return pd.DataFrame(
        {
            "article_id": sources["article_id"].to_numpy(),
            "title": sources["title"].to_numpy(),
            "text": [tokenizer.decode(t, skip_special_tokens=True) for t in tokens],
            "n_tokens": [len(t) for t in tokens],
        }
    )
