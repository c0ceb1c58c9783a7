"""The scale-out engines: DeepSpeed ZeRO-2 on 2 Ray Train CPU workers against the plain Trainer,
and (where vLLM imports) vLLM greedy continuations against the HF generator."""

import importlib.util
import os

import pytest
import torch

from biasamp.backends import deepspeed_train  # noqa: F401 (registers the deepspeed trainer)
from biasamp.config import ModelConfig, TrainConfig
from biasamp.corpus import read_source
from biasamp.models import load_base_model, load_tokenizer, save_checkpoint
from biasamp.stages.train import TRAINERS, fine_tune

TINY = ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe")
LOSS_TOLERANCE = 0.02  # nats per step; the difference is each worker averaging over its own tokens


@pytest.fixture(scope="module")
def ray_local():
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep the test cluster on 127.0.0.1
    import ray

    # address="local": a Ray of its own, never a cluster this machine already runs (or names in
    # /tmp/ray/ray_current_cluster, which a head killed without `ray stop` leaves behind).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_deepspeed_zero2_two_workers_matches_plain(ray_local, tmp_path):
    articles = read_source("bundled").head(16)
    tok = load_tokenizer(TINY)
    curves, weights = {}, {}
    for backend in ("plain", "deepspeed"):
        cfg = TrainConfig(
            epochs=3,
            batch_size=4,
            lr=1e-3,
            max_length=64,
            backend=backend,
            deepspeed={"workers": 2, "zero_stage": 2, "micro_batch": 1, "cpus_per_worker": 0.5},
        )
        model = load_base_model(TINY, len(tok), seed=0)
        metrics = TRAINERS[backend](model, tok, articles, cfg, seed=0, workdir=tmp_path / "work")
        curves[backend] = metrics["loss_curve"]
        weights[backend] = torch.cat([p.detach().flatten() for p in model.parameters()])
    plain, ds = curves["plain"], curves["deepspeed"]
    assert len(plain) == len(ds) == 12  # 16 articles / batch 4 x 3 epochs: same effective batch
    gaps = [abs(a - b) for a, b in zip(plain, ds)]
    weight_gap = (weights["plain"] - weights["deepspeed"]).abs().max().item()
    print(
        f"plain vs DeepSpeed ZeRO-2 x 2 workers: loss {plain[0]:.3f} -> {plain[-1]:.3f}, "
        f"max per-step gap {max(gaps):.4f} nats, max weight gap {weight_gap:.4f}"
    )
    assert max(gaps) < LOSS_TOLERANCE, f"plain {plain}\ndeepspeed {ds}"
    assert plain[-1] < plain[0] - 0.3  # it learned, so agreement is not two flat lines
    assert weight_gap < 0.05


def test_deepspeed_batch_must_divide():
    with pytest.raises(ValueError, match="not a multiple of workers x micro_batch = 6"):
        TrainConfig(batch_size=8, backend="deepspeed", deepspeed={"workers": 3, "micro_batch": 2})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM does not import here (separate venv)")
def test_vllm_greedy_matches_hf(ray_local, tmp_path):
    from biasamp.backends.vllm_engines import vllm_continuations
    from biasamp.stages.generate import article_prompts, greedy_continuations

    tok = load_tokenizer(TINY)
    model = load_base_model(
        ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe", tiny={"n_layer": 2, "n_embd": 128, "n_head": 2}),
        len(tok),
        seed=0,
    )
    articles = read_source("bundled").head(24)
    fine_tune(model, tok, articles, TrainConfig(epochs=2, batch_size=4, lr=2e-3, max_length=128), seed=0)
    save_checkpoint(model, tok, tmp_path / "ckpt")
    prompts = [p for t, b in zip(articles["title"], articles["text"]) for p in article_prompts(tok, t, b, 64, 1)]
    hf = greedy_continuations(model.eval(), prompts, 32, 16, tok.pad_token_id, tok.eos_token_id)
    vl = vllm_continuations(tmp_path / "ckpt", prompts, 32, tok.eos_token_id, engines=1, gpus_per_engine=0)
    exact = sum(a == b for a, b in zip(hf, vl)) / len(prompts)
    tokens = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(hf, vl)) / sum(len(a) for a in hf)
    print(f"vLLM vs HF greedy: {exact:.1%} of {len(prompts)} continuations identical, {tokens:.1%} of tokens")
    assert exact >= 0.8
