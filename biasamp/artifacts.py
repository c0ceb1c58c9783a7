"""Where a study's non-table artifacts live (checkpoints, manifest), addressed by (study, arm, seed,
generation); the tables are declared in biasamp.tables.

    OUT/manifest.json                        config, its hash, library versions
    OUT/checkpoints/{arm}/seed{seed}/gen{g}/ safetensors + config + tokenizer

An articles file is written last in a generation, so its presence marks the generation done.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from biasamp.config import HASH_EXCLUDES, StudyConfig
from biasamp.tables import TABLES


def checkpoint_dir(out: Path, arm: str, seed: int, generation: int) -> Path:
    return out / "checkpoints" / arm / f"seed{seed}" / f"gen{generation}"


@contextmanager
def output_lock(out: Path):
    """One writer per study folder: an OS lock on OUT/.lock, released when the holder exits or dies.
    A second `run`, `score` or `analyze` on a folder in use stops at once, in one line."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise ValueError(f"{out} is in use by another biasamp process (pid {holder}); wait for it, "
                             "or use another --out") from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            if created and [f.name for f in out.iterdir()] == [".lock"]:  # a run that wrote nothing
                (out / ".lock").unlink()
                out.rmdir()


def completed_generations(out: Path, arm: str, seed: int) -> int:
    """How many generations G0, G1, ... in a row have their articles written."""
    g = 0
    while TABLES["articles"].file(out, arm=arm, seed=seed, generation=g).exists():
        g += 1
    return g


def set_aside(path: Path) -> Path:
    """Rename a damaged artifact out of the way (never delete: it is evidence); returns the new name,
    hidden (a leading dot), so that a table read of the folder does not see it."""
    n = 1
    while (target := path.with_name(f".{path.name}.damaged-{n}")).exists():
        n += 1
    path.rename(target)
    return target


def write_npz(path: Path, **arrays) -> None:
    """Compressed arrays, written to a hidden temp name beside `path`, then renamed into place."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def claim_output_dir(cfg: StudyConfig, out: Path, record: bool = True) -> None:
    """Check that the manifest there (if any) is for this study: results of two configs must never
    mix in one folder; then (record) write it with this config."""
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
    if not record:
        return
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
