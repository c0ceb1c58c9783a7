import errno
import multiprocessing
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from biasamp import models
from biasamp.config import GenerationConfig, ModelConfig
from biasamp.corpus import read_source
from biasamp.files import sha256
from biasamp.models import load_base_model, load_checkpoint, load_tokenizer, save_checkpoint
from biasamp.stages import generate
from biasamp.stages.generate import article_prompts, greedy_continuations, write_articles

TINY = ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def trained(tok):
    """A tiny GPT-2 whose greedy outputs vary with the prompt: random weights with a wide init
    (at the default 0.02 every prompt continues with one repeated token)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=256, initializer_range=0.2)
    return GPT2LMHeadModel(config).eval()


def test_real_gpt2_vocabulary(tok):
    assert len(tok) == 50257 and tok.eos_token == "<|endoftext|>"
    assert tok.encode("Hello world, the Senate") == [15496, 995, 11, 262, 3845]


def test_block_protocol_hand_checked(tok, monkeypatch):
    # Title "Hi" is one token (17250); the body is 5 tokens, so 2-token blocks are
    # [15496, 995] [11, 262] [3845]. The stand-in model "continues" a prompt with its last token twice.
    assert article_prompts(tok, "Hi", "Hello world, the Senate", 2, None) == [[17250], [15496, 995], [11, 262], [3845]]
    assert article_prompts(tok, "Hi", "Hello world, the Senate", 2, 2) == [[17250], [15496, 995], [11, 262]]
    assert article_prompts(tok, "", "Hello world", 64, None) == [[15496, 995]]  # no empty title prompt

    def echo(model, prompts, new_tokens, batch_size, pad_id, eos_id, progress=None, dtype=None):
        return [[p[-1]] * 2 for p in prompts]

    monkeypatch.setattr(generate, "greedy_continuations", echo)
    src = pd.DataFrame({"article_id": ["a", "b"], "title": ["Hi", "Hi"], "text": ["Hello world, the Senate", "Hello"]})
    out = write_articles(None, tok, src, GenerationConfig(block_tokens=2, new_tokens=2))
    assert list(out["text"]) == ["HiHi world world the the Senate Senate", "HiHiHelloHello"]
    assert list(out["n_tokens"]) == [8, 4]
    assert list(out["article_id"]) == ["a", "b"] and list(out["title"]) == ["Hi", "Hi"]


def _one_call_per_block(model, tok, prompt, new_tokens):
    """The authors' call: one prompt, greedy, max_length = len(prompt) + new tokens, cut at EOS."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_length=len(prompt) + new_tokens,
        do_sample=False,
        pad_token_id=tok.eos_token_id,
    )[0, len(prompt) :].tolist()
    return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out


def test_batched_equals_one_call_per_block(tok, trained):
    arts = read_source("bundled").iloc[1::20]
    prompts = [p for t, b in zip(arts["title"], arts["text"]) for p in article_prompts(tok, t, b, 64, 2)]
    assert len({len(p) for p in prompts}) > 3  # several lengths: padding is exercised
    reference = [_one_call_per_block(trained, tok, p, 24) for p in prompts]
    assert len({tuple(r) for r in reference}) == len(reference)  # every prompt continues differently
    assert sum(len(set(r)) for r in reference) > 10 * len(reference)
    seen = []
    batched = greedy_continuations(
        trained,
        prompts,
        24,
        batch_size=8,
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert batched == reference
    assert seen[-1] == (len(prompts), len(prompts)) and len(seen) == -(-len(prompts) // 8)


def test_bfloat16_generates_from_a_copy_and_mostly_agrees(tok, trained):
    """dtype bfloat16 generates from a bf16 copy: the fp32 model (which trains on) is untouched, and
    the greedy tokens are mostly, not all, those of fp32 (the bench prints the agreement on SmolLM2)."""
    arts = read_source("bundled").iloc[1::20]
    prompts = [p for t, b in zip(arts["title"], arts["text"]) for p in article_prompts(tok, t, b, 64, 2)]
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    fp32 = greedy_continuations(trained, prompts, 24, 8, tok.pad_token_id, None)
    bf16 = greedy_continuations(trained, prompts, 24, 8, tok.pad_token_id, None, dtype=torch.bfloat16)
    assert trained.dtype == torch.float32 and all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())
    assert [len(c) for c in bf16] == [24] * len(prompts)
    first = [a[0] == b[0] for a, b in zip(fp32, bf16)]  # the first token, before any divergence compounds
    assert sum(first) >= 0.8 * len(prompts), sum(first)
    assert bf16 != fp32  # it did generate in bf16


def test_no_eos_stop_gives_full_length(tok, trained):
    prompts = [tok.encode("The Senate"), tok.encode("Breaking news from Washington today")]
    out = greedy_continuations(trained, prompts, 12, batch_size=2, pad_id=tok.pad_token_id, eos_id=None)
    assert [len(o) for o in out] == [12, 12]


def test_checkpoint_round_trip_and_hub_path_on_a_local_dir(tok, trained, tmp_path):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(trained, tok, ckpt)
    assert (ckpt / "model.safetensors").exists() and not (tmp_path / "ckpt.tmp").exists()
    model, tok2 = load_checkpoint(ckpt)
    for a, b in zip(trained.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    # The hub-loading path (kind hf) on a local directory, as a hub id would be.
    local = ModelConfig(kind="hf", name=str(ckpt))
    tok3 = load_tokenizer(local)
    model3 = load_base_model(local, len(tok3))
    assert tok3.encode("Hello world, the Senate") == [15496, 995, 11, 262, 3845]
    p = [tok.encode("The Senate voted")]
    assert greedy_continuations(model3.eval(), p, 6, 1, tok.pad_token_id, None) == greedy_continuations(
        trained, p, 6, 1, tok.pad_token_id, None
    )


@pytest.mark.slow
def test_smollm2_gguf_loads_and_generates_and_its_cached_copy_is_the_dequantized_model(tmp_path, monkeypatch):
    """The real GGUF file: converted into an empty cache, loaded from it, and compared with the weights
    and tokenizer transformers de-quantizes from the file itself: identical tensors, logits, encodings."""
    monkeypatch.setenv("BIASAMP_CACHE", str(tmp_path / "cache"))
    cfg = ModelConfig(kind="gguf", name="smollm2")
    tok = load_tokenizer(cfg)  # converts
    model = load_base_model(cfg, len(tok)).eval()  # from the cache
    folder = models.gguf_converted(cfg)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) > 100e6
    out = greedy_continuations(model, [tok.encode("The president said")], 8, 1, tok.pad_token_id, tok.eos_token_id)
    assert len(tok.decode(out[0]).split()) >= 2
    name, gguf = models._gguf_location(cfg)
    reference = models.dequantized(name, gguf).eval()
    ref_tok = models._with_pad(AutoTokenizer.from_pretrained(name, gguf_file=gguf))
    cached, direct = model.state_dict(), reference.state_dict()
    assert cached.keys() == direct.keys() and all(torch.equal(cached[k], direct[k]) for k in cached)
    text = "The Senate voted 52-48 on Tuesday. Café “quotes”, naïve\n\nA new paragraph"
    ids = torch.tensor([tok.encode(text)])
    assert tok.encode(text) == ref_tok.encode(text) and (tok.pad_token, len(tok)) == (ref_tok.pad_token, len(ref_tok))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def _tiny_gguf(folder, monkeypatch, conversions=None):
    """A GGUF model config whose conversion is a tiny GPT-2 (the real file's takes a minute: the slow
    test above converts it); `conversions`: a file each conversion appends a line to."""
    (folder / "m").mkdir(parents=True)
    (folder / "m" / "x.gguf").write_bytes(b"GGUF file bytes")  # hashed for the cache key

    def dequantized(name, gguf):
        if conversions is not None:
            with open(conversions, "a") as fh:
                fh.write("converted\n")
        time.sleep(1)  # long enough for a second process to arrive while the first converts
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=8, n_head=2, n_positions=32))

    tok = load_tokenizer(TINY)
    monkeypatch.setattr(models, "dequantized", dequantized)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", lambda *a, gguf_file=None, **k: tok)
    return ModelConfig(kind="gguf", name=str(folder / "m"), gguf_file="x.gguf", tokenizer=None)


def _converted(cfg, queue):
    queue.put(str(models.gguf_converted(cfg)))


def test_the_gguf_cache_converts_once_when_two_processes_start_together(tmp_path, monkeypatch):
    monkeypatch.setenv("BIASAMP_CACHE", str(tmp_path / "cache"))
    conversions = tmp_path / "conversions"
    cfg = _tiny_gguf(tmp_path, monkeypatch, conversions)
    fork = multiprocessing.get_context("fork")  # the children keep the stand-in conversion
    queue = fork.Queue()
    procs = [fork.Process(target=_converted, args=(cfg, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    folders = {queue.get(timeout=5), queue.get(timeout=5)}
    assert conversions.read_text() == "converted\n"  # one conversion; the other process waited for it
    (folder,) = folders
    assert models.checkpoint_damage(Path(folder)) is None
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    key = sha256(tmp_path / "m" / "x.gguf")[:24]
    assert Path(folder).name == f"{key}-transformers{transformers.__version__}"
    assert models.gguf_converted(cfg) == Path(folder) and conversions.read_text() == "converted\n"


def test_the_gguf_cache_on_a_full_disk_is_one_error_and_leaves_nothing(small_disk, tmp_path, monkeypatch):
    monkeypatch.setenv("BIASAMP_CACHE", str(small_disk / "cache"))
    cfg = _tiny_gguf(tmp_path, monkeypatch)
    with pytest.raises(OSError) as e:
        load_tokenizer(cfg)
    assert e.value.errno == errno.ENOSPC and "needs about" in e.value.strerror and "BIASAMP_CACHE" in e.value.strerror
    assert e.value.filename.startswith(str(small_disk / "cache" / "gguf"))
    assert [p.name for p in (small_disk / "cache" / "gguf").iterdir()] == [Path(e.value.filename).name + ".lock"]
