import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")


ROOT = Path(__file__).parents[1]


def cli(*args, env=None):
    """`biasamp ARGS` in a child process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "biasamp.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
    )


SMOKE_KEY = "local-" + "0123456789abcdef" * 2 + "01234567"  # a W&B key in the environment


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """`biasamp run configs/smoke.yaml` (W&B offline), then `analyze` and `report`, once per session;
    tests read it and never change it. A system temp dir and a user cache of its own show what `run`
    leaves outside its folder (Ray's session folder stays in /tmp/ray, as docs/loop.md says)."""
    base = tmp_path_factory.mktemp("smoke")
    # A long folder name: the scratch folder moves to TMPDIR past 51 characters (docs/loop.md), a path tested here.
    out, systmp, cache = base / "smoke-study-with-a-long-path-a", base / "systmp", base / "cache"
    systmp.mkdir()
    env = {"WANDB_API_KEY": SMOKE_KEY, "TMPDIR": str(systmp), "XDG_CACHE_HOME": str(cache), "RAY_TMPDIR": "/tmp"}
    run = cli("run", "configs/smoke.yaml", "--out", str(out), "--set", "wandb.mode=offline", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    analyze = cli("analyze", str(out))  # (the report's matplotlib keeps its font cache in the user's cache)
    report = cli("report", str(out), "--out", str(out / "report"))
    return SimpleNamespace(out=out, systmp=systmp, cache=cache, env=env, run=run, analyze=analyze, report=report)


# The smoke study's two original arms, for tests whose cost grows with every arm (Ray jobs, DeepSpeed).
TWO_ARMS = "arms={synthetic: {mix: replace}, preservation: {mix: preserve, real_fraction: 0.25}}"


def tiny_study(tmp_path, **over) -> dict:
    """A minimal study dict: tiny GPT-2, 6 bundled articles, short generations."""
    d = {
        "study": "t",
        "generations": 2,
        "seeds": [0],
        "model": {
            "kind": "tiny_gpt2",
            "tokenizer": "gpt2-bpe",
            "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 256},
        },
        "corpora": {"main": {"source": "bundled", "per_label": {"left": 2, "center": 2, "right": 2}}},
        "train": {"epochs": 1, "batch_size": 3, "lr": 1e-3, "max_length": 96},
        "arms": {"synthetic": {"mix": "replace"}},
        "generation": {"new_tokens": 8, "max_blocks": 1, "batch_size": 16},
        "scoring": {"classifier": {"kind": "tiny_random"}, "quality": {"kind": "tiny_random"}, "bootstrap": 50},
        "wandb": {"mode": "disabled"},
        "out_dir": str(tmp_path / "out"),
    }
    for key, value in over.items():
        d[key] = value
    return d


@pytest.fixture
def study_dict(tmp_path):
    return lambda **over: tiny_study(tmp_path, **over)


@pytest.fixture(scope="session")
def local_classifier(tmp_path_factory):
    """A 3-label sequence classifier saved to a local folder, as a hub download would be: the hub
    path, offline. Its labels are the authors' (LABEL_0 right, LABEL_1 left, LABEL_2 center)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from biasamp.config import ModelConfig
    from biasamp.models import load_tokenizer

    tok = load_tokenizer(ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe"))
    torch.manual_seed(1)
    model = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tok),
            n_layer=1,
            n_embd=16,
            n_head=2,
            num_labels=3,
            pad_token_id=tok.pad_token_id,
            initializer_range=0.5,
            id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"},
        )
    )
    d = tmp_path_factory.mktemp("clf")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
