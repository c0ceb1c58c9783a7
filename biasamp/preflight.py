"""What a study needs from the world, checked before anything is written or Ray starts: the output
folder, its manifest and scores, the corpora, the model and its limits, the instruments.
`biasamp run` and `biasamp validate` run the same checks (ray_cluster.check_before_ray); each problem is
one ValueError naming the key, file or flag.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from biasamp.artifacts import check_output_dir, claim_output_dir, read_manifest
from biasamp.config import StudyConfig
from biasamp.corpus import read_source, sample_corpus
from biasamp.stages.summarize import check_scores_settings, scoring_settings
from biasamp.tables import TABLES


def draw_corpora(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    """The corpora the folder does not hold yet, drawn from their sources. A corpus the folder holds
    is not read again, unless the config names another source than the folder's manifest (the data
    moved): then that source is drawn and must give the same articles."""
    out = cfg.output_dir
    recorded = ((read_manifest(out) or {}).get("config") or {}).get("corpora") or {}
    drawn = {}
    for name in sorted({arm.corpus for arm in cfg.arms.values()} | {cfg.probe_corpus}):
        corpus, written = cfg.corpora[name], TABLES["corpus"].file(out, corpus=name)
        old_source = (recorded.get(name) or {}).get("source", corpus.source)
        if written.exists() and old_source == corpus.source:
            continue
        new = sample_corpus(read_source(corpus.source), corpus, name)
        if not written.exists():
            drawn[name] = new
            continue
        cols = ["article_id", "title", "text", "source_label"]
        if not new[cols].reset_index(drop=True).equals(pd.read_parquet(written, columns=cols)):
            raise ValueError(f"corpora.{name}.source: {corpus.source} gives other articles than {old_source}, "
                             f"which this study in {out} was drawn from; use another --out")
    return drawn


def _available(load, name: str, key: str):
    """`load(name)`, or one line saying that `key` names something that cannot be loaded here."""
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # not a line per retry of an unreachable hub: the one below says it
    try:
        return load(name)
    except (OSError, ValueError) as e:
        offline = " (HF_HUB_OFFLINE=1: only local folders and the Hugging Face cache)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{key}: '{name}' is not available{offline}: {first}") from None


def model_positions(cfg: StudyConfig) -> int:
    """The study model's positions, from its config (no weights loaded); its tokenizer is loaded too."""
    from transformers import AutoConfig

    from biasamp.models import _gguf_location, load_tokenizer

    m = cfg.model
    if m.tokenizer is not None or m.kind != "gguf":
        _available(lambda _: load_tokenizer(m), m.tokenizer or m.name, "model.tokenizer" if m.tokenizer else "model.name")
    if m.kind == "tiny_gpt2":
        return m.tiny.n_positions
    if m.kind == "gguf":
        name, gguf = _gguf_location(m)
        if not (Path(name) / gguf).is_file():
            raise ValueError(f"model.gguf_file: {Path(name) / gguf}: no such file")
        conf = _available(lambda n: AutoConfig.from_pretrained(n, gguf_file=gguf), name, "model.name")
    else:
        conf = _available(AutoConfig.from_pretrained, m.name, "model.name")
    return int(getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None) or 10**9)


def check_lengths(cfg: StudyConfig, positions: int) -> None:
    """Every token budget of the study fits the model's positions (perplexity reads at most the
    model's positions by itself)."""
    budgets = {"train.max_length": cfg.train.max_length, "neurons.max_length": cfg.neurons.max_length}
    budgets |= {f"arms.{a}.train.max_length": arm.train.max_length for a, arm in cfg.arms.items()}
    for key, n in budgets.items():
        if n > positions:
            raise ValueError(f"{key}: {n} tokens, but the model has {positions} positions")
    g = cfg.generation
    if g.block_tokens + g.new_tokens > positions:
        raise ValueError(f"generation: a prompt of up to block_tokens={g.block_tokens} tokens plus new_tokens="
                         f"{g.new_tokens} needs {g.block_tokens + g.new_tokens} positions, the model has {positions}")


def check_instruments(cfg: StudyConfig) -> None:
    """Each scoring instrument and calibration file the config names exists (hub ones: can be loaded)."""
    from transformers import AutoConfig

    from biasamp.instruments import leaning, quality

    for key, inst, file_of in (("classifier", cfg.scoring.classifier, leaning.model_file),
                               ("quality", cfg.scoring.quality, quality.proxy_file)):
        name = inst.name
        if inst.kind == "offline" and not file_of(name).is_file():
            if name.count("/") == 1 and not name.startswith((".", "/", "~")) and not name.endswith(".npz"):
                raise ValueError(f"scoring.{key}.name: '{name}' looks like a hub id; kind offline takes "
                                 f"'bundled' or a file made by `biasamp {key} train` (or set kind: hf)")
            raise ValueError(f"scoring.{key}.name: {name}: no such file")
        if inst.kind == "hf":
            _available(AutoConfig.from_pretrained, name, f"scoring.{key}.name")
    cal = cfg.scoring.classifier.calibration
    if cal and not Path(cal).is_file():
        raise ValueError(f"scoring.classifier.calibration: {cal}: no such file")


def check_study(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    """Everything `run` needs that can be known before it writes or starts Ray (resources: see
    ray_cluster.check_before_ray). Returns the corpora drawn for a folder that lacks them."""
    out = cfg.output_dir
    check_output_dir(out)
    claim_output_dir(cfg, out, record=False)  # the folder holds this study, or nothing
    if cfg.scoring.enabled:  # new scores must not mix with others
        check_scores_settings(out, scoring_settings(cfg.scoring))
    drawn = draw_corpora(cfg)
    check_lengths(cfg, model_positions(cfg))
    if cfg.scoring.enabled:
        check_instruments(cfg)
    return drawn
