"""model.kind architecture: the shipped architectures (no weights) build models of the published
sizes, and tiny Llama- and Qwen2-architecture models go through training, neuron capture
(`mlp.down_proj`, block discovery) and batched generation as GPT-2 does."""

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from biasamp.config import ModelConfig, from_dict
from biasamp.corpus import read_source
from biasamp.models import ARCHITECTURES, architecture_config, load_base_model, load_checkpoint, load_tokenizer
from biasamp.stages.generate import article_prompts, greedy_continuations
from biasamp.stages.trajectory import run_trajectory
from biasamp.study import prepare_study

# Parameter counts as the model cards state them (millions; tied embeddings counted once).
PUBLISHED_MILLIONS = {
    "gpt2": 124,
    "smollm2-135m": 135,
    "smollm2-360m": 362,
    "qwen2.5-0.5b": 494,
    "qwen2.5-1.5b": 1544,
    "llama-3.2-1b": 1236,
}
# Tiny versions of each family: 2 layers, 64 wide, grouped-query attention kept (4 heads, 2 KV heads).
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4}
TINY_ARCHS = {
    "llama-3.2-1b": {**TINY, "num_key_value_heads": 2, "head_dim": 16, "initializer_range": 0.2},
    "qwen2.5-0.5b": {**TINY, "num_key_value_heads": 2, "initializer_range": 0.2},
}


def test_shipped_architectures_have_the_published_sizes():
    assert {p.stem for p in ARCHITECTURES.glob("*.json")} == set(PUBLISHED_MILLIONS)
    for name, millions in PUBLISHED_MILLIONS.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                architecture_config(ModelConfig(kind="architecture", name=name, tokenizer="gpt2-bpe"))
            )
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params / millions - 1) < 0.005, (name, params)


def test_overrides_and_names_are_checked():
    with pytest.raises(ValueError, match="model.overrides: 'n_layer' is not a field of qwen2 configs"):
        architecture_config(
            ModelConfig(kind="architecture", name="qwen2.5-0.5b", tokenizer="gpt2-bpe", overrides={"n_layer": 2})
        )
    with pytest.raises(ValueError, match="neither a shipped architecture .*qwen2.5-0.5b.* nor a config.json"):
        architecture_config(ModelConfig(kind="architecture", name="qwen-7b", tokenizer="gpt2-bpe"))
    with pytest.raises(ValueError, match="only kind architecture takes them"):
        ModelConfig(kind="hf", overrides={"num_hidden_layers": 2})


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_architecture_is_seeded_with_the_study_vocabulary(arch):
    cfg = ModelConfig(kind="architecture", name=arch, tokenizer="gpt2-bpe", overrides=TINY_ARCHS[arch])
    tok = load_tokenizer(cfg)
    a, b, c = (load_base_model(cfg, len(tok), seed=s) for s in (0, 0, 1))
    assert a.config.vocab_size == len(tok) == 50257 and a.config.num_hidden_layers == 2
    assert torch.equal(a.lm_head.weight, b.lm_head.weight) and not torch.equal(a.lm_head.weight, c.lm_head.weight)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_batched_generation_equals_one_call_per_block(arch):
    """Left padding in batches: rotary positions must follow the mask, or padded rows differ."""
    cfg = ModelConfig(kind="architecture", name=arch, tokenizer="gpt2-bpe", overrides=TINY_ARCHS[arch])
    tok = load_tokenizer(cfg)
    model = load_base_model(cfg, len(tok), seed=0).eval()
    arts = read_source("bundled").iloc[1::25]
    prompts = [p for t, b in zip(arts["title"], arts["text"]) for p in article_prompts(tok, t, b, 64, 2)]
    assert len({len(p) for p in prompts}) > 3
    reference = []
    for p in prompts:
        ids = torch.tensor([p])
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id
        )
        reference.append(out[0, len(p) :].tolist())
    assert len({tuple(r) for r in reference}) == len(reference)  # the prompts lead to different tokens
    assert greedy_continuations(model, prompts, 16, 8, tok.pad_token_id, None) == reference


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_trajectory_trains_captures_down_proj_and_writes(arch, study_dict):
    model = {"kind": "architecture", "name": arch, "tokenizer": "gpt2-bpe", "overrides": TINY_ARCHS[arch]}
    cfg = from_dict(study_dict(generations=2, model=model, keep_checkpoints="all"))
    prepare_study(cfg, log=lambda m: None)
    run_trajectory(cfg, "synthetic", 0, log=lambda m: None)
    out = cfg.output_dir
    neurons = pd.read_parquet(out / "neurons")
    # every layer's down_proj: 64 outputs per layer, weight and activation rows for G0 and G1
    assert set(neurons["generation"]) == {0, 1} and sorted(neurons["layer"].unique()) == [0, 1]
    per_layer = neurons[(neurons["kind"] == "activation") & (neurons["generation"] == 0)].groupby("layer").size()
    assert per_layer.tolist() == [64, 64]
    assert neurons.groupby(["kind", "stat"]).size().index.tolist() == [
        ("activation", "mean"),
        ("block_activation", "mean"),
        ("weight", "l2"),
        ("weight", "mean"),
    ]  # down_proj has no bias
    checkpoint = next((out / "checkpoints").rglob("config.json")).parent
    trained, _ = load_checkpoint(checkpoint)
    assert type(trained).__name__ == type(load_base_model(cfg.model, 50257)).__name__
    w0 = neurons[(neurons["kind"] == "weight") & (neurons["stat"] == "l2")].pivot_table(
        index=["layer", "neuron"], columns="generation", values="value"
    )
    assert (w0[0] != w0[1]).mean() > 0.9  # training moved the down_proj weights
    train = pd.read_parquet(out / "train_metrics")
    assert len(train) and train["loss"].notna().all()
    articles = pd.read_parquet(out / "articles")
    assert (articles["n_tokens"] > 0).all() and articles["text"].str.len().gt(0).all()
