"""The GPU bench: the study's four model workloads on real architectures at random init (speed and
memory do not depend on trained weights), for one GPU window. Run by `python -m bench gpu`.

On a GPU: GPT-2 124M, SmolLM2-135M/360M, Qwen2.5-0.5B/1.5B at their published sizes (vocabulary:
the architecture's, at least GPT-2's, so every prompt token exists). Without one: 2-layer, 64-wide
versions of the same families, a check that the bench runs (what CI does), not a figure.

Per model, each timed --repeats times, interleaved:
- generation: the batched greedy generator (float32; bfloat16) vs the authors' one `generate` call
  per block (float32), 64-token prompt blocks of the bundled articles, 64 new tokens, EOS ignored;
  check: blocks continued identically and tokens/s;
- fine-tuning: AdamW steps at the paper's batch (8) and length (512 tokens) in bfloat16 autocast vs
  float32 (a bare PyTorch loop with the study's lr and weight decay; the study runs it through
  transformers' Trainer); check: tokens/s, peak GPU memory, the loss gap;
- neuron capture: a forward pass with the capture hooks (biasamp.stages.neurons) vs without them;
- perplexity: the score stage's batched perplexity vs one article per forward pass.

Imports torch, transformers and biasamp's model-level modules (pydantic, pyyaml, pandas), never Ray,
DeepSpeed, vLLM or W&B: a GPU machine with only torch and transformers needs a few wheels (README,
"Performance").
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from bench.generation import authors_loop
from biasamp.config import ModelConfig, NeuronsConfig
from biasamp.corpus import read_source
from biasamp.models import architecture_config, load_tokenizer, perplexities
from biasamp.stages.generate import article_prompts, greedy_continuations
from biasamp.stages.neurons import activation_rows, layer_modules
from biasamp.text import by_length, training_text

MODELS = ["gpt2", "smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
# Without a GPU: the same families at 2 layers x 64 wide (model_type -> overrides).
TINY = {
    "gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 2},
    "llama": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4}
    | {"num_key_value_heads": 2, "head_dim": 16},
    "qwen2": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4}
    | {"num_key_value_heads": 2},
}
# The workload on a GPU (generation as bench/generation.py, fine-tuning at the paper's batch and
# length, the study's AdamW lr and weight decay), and a small one for the CPU check.
GPU_WORK = dict(prompts=64, baseline_prompts=4, new_tokens=64, batch=32, train_batch=8, train_length=512)
GPU_WORK |= dict(train_steps=4, texts=32, text_tokens=512, text_batch=8)
CPU_WORK = dict(prompts=8, baseline_prompts=2, new_tokens=8, batch=4, train_batch=2, train_length=64)
CPU_WORK |= dict(train_steps=2, texts=4, text_tokens=64, text_batch=2)
LR, WEIGHT_DECAY = 5e-5, 0.01


def build(name: str, vocab: int, device: str):
    arch = architecture_config(ModelConfig(kind="architecture", name=name, tokenizer="gpt2-bpe"))
    overrides = {} if device == "cuda" else TINY[arch.model_type]
    cfg = ModelConfig(kind="architecture", name=name, tokenizer="gpt2-bpe", overrides=overrides)
    # A GPU runs the architecture's own vocabulary (its output layer is a large share of a small model's
    # work); the CPU check the tokenizer's.
    config = architecture_config(cfg, max(arch.vocab_size, vocab) if device == "cuda" else vocab)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 1.5B model's init on the CPU takes a minute
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str):
    _sync(device)
    t = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - t, result


def _train(model, batches, dtype, device: str) -> tuple[float, list[float], float]:
    """AdamW steps from the model's current weights (restored after): seconds, losses, peak GiB."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def steps():
        losses = []
        for ids, mask in batches:
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    seconds, losses = _timed(steps, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    model.eval()
    model.load_state_dict(start)
    return seconds, losses, peak


def _forward_only(model, tok, texts, max_length: int, batch: int):
    """The capture's batches without its hooks: the baseline of its overhead."""
    side, tok.padding_side = tok.padding_side, "right"
    with torch.no_grad():
        for idx in by_length(texts, batch):
            batch_texts = [texts[i] for i in idx]
            enc = tok(batch_texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            model(**enc.to(model.device), use_cache=False)
    tok.padding_side = side


def measure(repeats: int) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    w = GPU_WORK if device == "cuda" else CPU_WORK
    size = "" if device == "cuda" else " (2-layer x 64 stand-in: CPU check, not a figure)"
    tok = load_tokenizer(ModelConfig(kind="architecture", tokenizer="gpt2-bpe"))
    arts = read_source("bundled")
    blocks_of = [p for t, b in zip(arts["title"], arts["text"]) for p in article_prompts(tok, t, b, 64, None)]
    prompts, first = blocks_of[: w["prompts"]], blocks_of[: w["baseline_prompts"]]
    texts = [training_text(t, b) for t, b in zip(arts["title"], arts["text"])]
    enc = tok(
        texts[: w["train_batch"] * w["train_steps"]],
        truncation=True,
        max_length=w["train_length"],
        padding="max_length",
    )
    ids, mask = torch.tensor(enc["input_ids"], device=device), torch.tensor(enc["attention_mask"], device=device)
    step = w["train_batch"]
    batches = [(ids[i : i + step], mask[i : i + step]) for i in range(0, len(ids), step)]
    train_tokens = int(mask.sum())
    probe, length, text_batch = texts[: w["texts"]], w["text_tokens"], w["text_batch"]
    probe_tokens = sum(min(len(tok.encode(t)), length) for t in probe)
    neurons = NeuronsConfig(max_length=length, batch_size=text_batch)
    new = w["new_tokens"]
    rows = []
    for name in MODELS:
        started = time.perf_counter()
        model = build(name, len(tok), device)
        params = sum(p.numel() for p in model.parameters())
        label = f"{name}{size}, {params / 1e6:.0f}M params, random init"
        ffn, blocks = layer_modules(model, neurons)
        greedy_continuations(model, prompts[:2], 2, 2, tok.pad_token_id, None)  # warm-up (kernels, allocator)
        t_loop, t_gen, t_train, t_cap, t_fwd, t_ppl, t_ppl1 = [], {}, {}, [], [], [], []
        outs, losses, peaks = {}, {}, {}
        for _ in range(repeats):
            s, reference = _timed(lambda: authors_loop(model, first, tok.pad_token_id, new), device)
            t_loop.append(s / len(first))
            for dname, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
                generate = lambda: greedy_continuations(  # noqa: E731
                    model, prompts, new, w["batch"], tok.pad_token_id, None, dtype=dtype
                )
                s, outs[dname] = _timed(generate, device)
                t_gen.setdefault(dname, []).append(s / len(prompts))
                s, losses[dname], peaks[dname] = _train(model, batches, dtype, device)
                t_train.setdefault(dname, []).append(s / train_tokens * 1000)
            t_cap.append(_timed(lambda: activation_rows(model, tok, probe, ffn, blocks, neurons), device)[0])
            t_fwd.append(_timed(lambda: _forward_only(model, tok, probe, length, text_batch), device)[0])
            s, ppl = _timed(lambda: perplexities(model, tok, probe, length, text_batch), device)
            t_ppl.append(s)
            s, ppl1 = _timed(lambda: perplexities(model, tok, probe, length, 1), device)
            t_ppl1.append(s)
        for dname in ("float32", "bfloat16"):
            got = outs[dname][: len(first)]
            same = sum(a == b for a, b in zip(reference, got))
            tokens = sum(x == y for a, b in zip(reference, got) for x, y in zip(a, b)) / sum(map(len, reference))
            distinct = len({tuple(r) for r in reference})
            rows.append(
                {
                    "figure": f"generation, {label}, 64-token blocks + {new} new tokens, {dname}",
                    "unit": "s per block",
                    "ours": f"batched ({w['batch']} blocks, by length), {dname}",
                    "baseline": "one generate call per block, float32 (authors')",
                    "ours_s": t_gen[dname],
                    "baseline_s": t_loop,
                    "check": f"{same}/{len(first)} blocks identical ({distinct} distinct), {tokens:.0%} of "
                    f"tokens; {new / statistics.median(t_gen[dname]):,.0f} tok/s",
                }
            )
        gap = max(abs(a - b) for a, b in zip(losses["float32"], losses["bfloat16"]))
        memory = "" if device == "cpu" else f"; peak GPU memory {peaks['bfloat16']:.1f} / {peaks['float32']:.1f} GiB"
        rows.append(
            {
                "figure": f"fine-tuning, {label}, batch {step} x {w['train_length']} tokens, AdamW",
                "unit": "s per 1k tokens",
                "ours": "bfloat16 autocast",
                "baseline": "float32",
                "ours_s": t_train["bfloat16"],
                "baseline_s": t_train["float32"],
                "check": f"{1000 / statistics.median(t_train['bfloat16']):,.0f} / "
                f"{1000 / statistics.median(t_train['float32']):,.0f} tok/s{memory}; "
                f"loss gap {gap:.3f} over {len(batches)} steps",
            }
        )
        rows.append(
            {
                "figure": f"neuron capture, {label}, {len(probe)} articles x <={length} tokens",
                "unit": "s",
                "ours": "forward with the capture hooks (FFN outputs + blocks)",
                "baseline": "the same forward passes without hooks",
                "ours_s": t_cap,
                "baseline_s": t_fwd,
                "check": f"{len(ffn)} layers hooked; overhead "
                f"{statistics.median(t_cap) / statistics.median(t_fwd) - 1:+.0%}",
            }
        )
        rows.append(
            {
                "figure": f"perplexity, {label}, {len(probe)} articles x <={length} tokens",
                "unit": "s",
                "ours": f"batched ({text_batch} articles, by length)",
                "baseline": "one article per forward pass",
                "ours_s": t_ppl,
                "baseline_s": t_ppl1,
                "check": f"{probe_tokens / statistics.median(t_ppl):,.0f} tok/s; perplexities agree within "
                f"{abs(ppl / ppl1 - 1).max():.1e}",
            }
        )
        print(f"  {label}: {time.perf_counter() - started:.0f}s", flush=True)
        model = ffn = blocks = None  # freed before the next model is built
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows
