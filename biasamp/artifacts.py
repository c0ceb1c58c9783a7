"""Where a study's artifacts live, addressed by (study, arm, seed, generation), and atomic writes.

    OUT/manifest.json                                   config, its hash, library versions
    OUT/corpus/{corpus}.parquet                         the real articles each corpus drew
    OUT/checkpoints/{arm}/seed{seed}/gen{g}/            safetensors + config + tokenizer
    OUT/articles/{arm}__seed{seed}__gen{g}.parquet      D_g, what G_g wrote
    OUT/neurons/{arm}__seed{seed}__gen{g}.parquet       G_g's neuron summaries, one row group per layer
    OUT/scores/{arm}__seed{seed}__gen{g}.parquet        per-article leaning, quality, perplexity of D_g
    OUT/summary.parquet, OUT/summary_arms.parquet       per generation (per seed / across seeds)

`pandas.read_parquet(OUT / "articles")` reads every generation of every trajectory at once.
An articles file is written last in a generation, so its presence marks the generation done.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from biasamp.config import HASH_EXCLUDES, StudyConfig

NEURON_COLUMNS = ["study", "arm", "seed", "generation", "layer", "neuron", "kind", "stat", "value"]
ARTICLE_COLUMNS = ["study", "arm", "seed", "generation", "article_id", "title", "text", "source_label", "n_tokens"]


def checkpoint_dir(out: Path, arm: str, seed: int, generation: int) -> Path:
    return out / "checkpoints" / arm / f"seed{seed}" / f"gen{generation}"


def articles_path(out: Path, arm: str, seed: int, generation: int) -> Path:
    return out / "articles" / f"{arm}__seed{seed}__gen{generation}.parquet"


def neurons_path(out: Path, arm: str, seed: int, generation: int) -> Path:
    return out / "neurons" / f"{arm}__seed{seed}__gen{generation}.parquet"


def scores_path(out: Path, arm: str, seed: int, generation: int) -> Path:
    return out / "scores" / f"{arm}__seed{seed}__gen{generation}.parquet"


def corpus_path(out: Path, corpus: str) -> Path:
    return out / "corpus" / f"{corpus}.parquet"


def completed_generations(out: Path, arm: str, seed: int) -> int:
    """How many generations G0, G1, ... in a row have their articles written."""
    g = 0
    while articles_path(out, arm, seed, g).exists():
        g += 1
    return g


def write_parquet(df: pd.DataFrame, path: Path, **to_parquet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False, **to_parquet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("biasamp", "torch", "transformers", "datasets", "ray", "pyarrow", "pandas", "wandb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def claim_output_dir(cfg: StudyConfig, out: Path) -> None:
    """Write the manifest, or check that the one there is for this study: results of two
    configs must never mix in one folder."""
    path = out / "manifest.json"
    config = cfg.model_dump(mode="json")
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("science_hash") != cfg.science_hash():
            old_flat, new_flat = dict(_flat(old.get("config", {}))), dict(_flat(config))
            changed = sorted(
                k for k in old_flat.keys() | new_flat.keys()
                if old_flat.get(k) != new_flat.get(k) and k.split(".")[0] not in HASH_EXCLUDES
            )
            raise ValueError(
                f"{out} holds study '{old.get('study')}' with config hash {old.get('science_hash')}; "
                f"this config hashes to {cfg.science_hash()} (differs in: {', '.join(changed[:8]) or '?'}). "
                "Use another --out."
            )
    write_json(
        {
            "study": cfg.study,
            "science_hash": cfg.science_hash(),
            "config": config,
            "versions": library_versions(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        path,
    )
