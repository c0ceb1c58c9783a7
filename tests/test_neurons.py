import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from biasamp.config import ModelConfig, NeuronsConfig, from_dict
from biasamp.corpus import read_source
from biasamp.models import load_base_model, load_tokenizer
from biasamp.stages.neurons import capture, layer_modules
from biasamp.stages.trajectory import run_trajectory
from biasamp.study import prepare_study
from biasamp.tables import TABLES

TINY = ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe", tiny={"n_layer": 2, "n_embd": 32, "n_head": 2})


@pytest.fixture(scope="module")
def gpt2():
    tok = load_tokenizer(TINY)
    return load_base_model(TINY, len(tok), seed=0).eval(), tok


def _reference_means(model, tok, texts, module, max_length):
    """One article at a time, no padding: the plain mean over all real tokens."""
    outs = []
    h = module.register_forward_hook(lambda m, i, o: outs.append((o[0] if isinstance(o, tuple) else o)[0]))
    with torch.no_grad():
        for t in texts:
            model(**tok(t, truncation=True, max_length=max_length, return_tensors="pt"))
    h.remove()
    return torch.cat(outs).double().mean(0).numpy()


def test_streamed_masked_means_equal_the_plain_mean(gpt2):
    model, tok = gpt2
    texts = list(read_source("bundled")["text"].iloc[:7].str[:400]) + ["Short one."]
    cfg = NeuronsConfig(max_length=48, batch_size=3)
    rows = capture(model, tok, texts, cfg)
    ffn, blocks = layer_modules(model, cfg)
    for kind, modules in (("activation", ffn), ("block_activation", blocks)):
        for layer, module in enumerate(modules):
            got = rows[(rows.kind == kind) & (rows.layer == layer)].sort_values("neuron")["value"].to_numpy()
            ref = _reference_means(model, tok, texts, module, 48)
            assert abs(got - ref).max() < 1e-6 * abs(ref).max()  # float32 forward, batched vs one by one


def test_weight_summaries_gpt2_conv1d(gpt2):
    model, tok = gpt2
    rows = capture(model, tok, ["a b c"], NeuronsConfig())
    w = model.transformer.h[1].mlp.c_proj.weight.detach().double()  # Conv1D: (in, out)
    l2 = rows[(rows.kind == "weight") & (rows.stat == "l2") & (rows.layer == 1)]["value"].to_numpy()
    mean = rows[(rows.kind == "weight") & (rows.stat == "mean") & (rows.layer == 1)]["value"].to_numpy()
    bias = rows[(rows.kind == "weight") & (rows.stat == "bias") & (rows.layer == 1)]["value"].to_numpy()
    assert len(l2) == 32 and abs(l2 - w.norm(dim=0).numpy()).max() < 1e-12
    assert abs(mean - w.mean(dim=0).numpy()).max() < 1e-12
    assert abs(bias - model.transformer.h[1].mlp.c_proj.bias.detach().double().numpy()).max() < 1e-12


def test_llama_family_found_and_named_patterns(gpt2):
    _, tok = gpt2
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).eval()
    rows = capture(llama, tok, ["The Senate voted.", "A longer sentence about the economy and jobs."], NeuronsConfig())
    counts = rows.groupby(["kind", "stat"]).size().to_dict()
    assert counts == {
        ("activation", "mean"): 72,
        ("block_activation", "mean"): 72,
        ("weight", "l2"): 72,
        ("weight", "mean"): 72,
    }  # down_proj has no bias
    named = NeuronsConfig(ffn_module="model.layers.{layer}.mlp.down_proj", block_module="model.layers.{layer}")
    ffn, blocks = layer_modules(llama, named)
    assert ffn[2] is llama.model.layers[2].mlp.down_proj and len(blocks) == 3
    with pytest.raises(ValueError, match="no module named model.h.0.mlp"):
        layer_modules(llama, NeuronsConfig(ffn_module="model.h.{layer}.mlp", block_module="model.h.{layer}"))
    with pytest.raises(ValueError, match="both ffn_module and block_module"):
        NeuronsConfig(ffn_module="model.layers.{layer}.mlp.down_proj")


def test_trajectory_writes_neurons_readable_by_layer(study_dict):
    cfg = from_dict(study_dict(generations=2))
    prepare_study(cfg, log=lambda m: None)
    run_trajectory(cfg, "synthetic", 0, log=lambda m: None)
    out = cfg.output_dir
    path = TABLES["neurons"].file(out, arm="synthetic", seed=0, generation=1)
    df = pd.read_parquet(out / "neurons")
    assert list(pd.read_parquet(path).columns) == list(TABLES["neurons"].columns)
    assert set(df["generation"]) == {0, 1} and df["layer"].nunique() == 1  # the tiny study has 1 layer
    one = pd.read_parquet(path, filters=[("layer", "==", 0)])
    assert len(one) == len(pd.read_parquet(path))
    import pyarrow.parquet as pq

    assert pq.ParquetFile(path).metadata.num_row_groups == df["layer"].nunique()
