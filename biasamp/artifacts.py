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
import platform
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from biasamp.config import HASH_EXCLUDES, StudyConfig
from biasamp.files import atomic, check_regular_file
from biasamp.tables import TABLES


def checkpoint_dir(out: Path, arm: str, seed: int, generation: int) -> Path:
    return out / "checkpoints" / arm / f"seed{seed}" / f"gen{generation}"


# Every temp name in a study folder is hidden and ends in ".tmp" (files.temp_path; tables.write_parquet adds
# a random part): what an interrupted writer leaves is recognisable and removed by the next owner.
SCRATCH = ".scratch"  # OUT/.scratch: the temp space of the processes working on the folder
SCRATCH_ENV = ("TMPDIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")  # tempfile, W&B media/sockets, W&B logs and staging


def scratch_dir(out: Path) -> Path:
    """OUT/.scratch, or where OUT's absolute path is too long for the Unix sockets W&B's service puts
    in TMPDIR (107 bytes with its own ~45), a folder in the system temp dir named after OUT."""
    out = Path(out).resolve()
    if len(str(out / SCRATCH)) <= 60:
        return out / SCRATCH
    return Path(tempfile.gettempdir()) / f"biasamp-{hashlib.sha256(str(out).encode()).hexdigest()[:12]}"


@contextmanager
def scratch_space(out: Path):
    """This process's temp files (tempfile, training scratch, W&B's media, sockets, debug logs and
    artifact staging) go to the study's scratch folder while inside; Ray's session folder stays in
    the system temp dir (its sockets need a short path)."""
    root = scratch_dir(out)
    saved = {k: os.environ.get(k) for k in (*SCRATCH_ENV, "RAY_TMPDIR")}
    os.environ.setdefault("RAY_TMPDIR", tempfile.gettempdir())
    for key in SCRATCH_ENV:
        (root / key.lower()).mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(root / key.lower())
    tempfile.tempdir = None  # gettempdir() caches its answer
    try:
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        tempfile.tempdir = None


def is_study_folder(out: Path) -> bool:
    return (Path(out) / "manifest.json").is_file()


def remove_stale(out: Path) -> int:
    """Remove what interrupted biasamp writers left in the study folder OUT: hidden temp files at its
    top and inside the parts it writes (tables, checkpoints, logs), and its scratch folder. Nothing in
    a folder that is not a study (no manifest.json) or in a part the study does not own (a user's
    notes, W&B's files) is touched. Only the folder's owner calls this. Returns how many were removed."""
    out = Path(out)
    if not is_study_folder(out):
        return 0
    stale = list(out.glob(".*.tmp"))
    for part in sorted(STUDY_PARTS - {"wandb", "manifest.json"}):
        if (out / part).is_dir() and not (out / part).is_symlink():
            stale += (out / part).rglob(".*.tmp")
    if scratch_dir(out).exists():
        stale.append(scratch_dir(out))
    for p in stale:  # a temp file inside a temp folder is gone with its folder
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    return len(stale)


def check_not_foreign(out: Path) -> None:
    """A folder that is not a study may be anything: biasamp's own names in it (its scratch folder,
    its lock file) must be absent or biasamp's, or the command would use and then delete them."""
    if not out.is_dir() or is_study_folder(out):
        return
    scratch, lock = scratch_dir(out), out / ".lock"
    if scratch.exists() and scratch.parent == out.resolve():
        raise ValueError(
            f"{scratch} exists and {out} is not a study folder (no manifest.json): biasamp keeps its temp "
            "files there and removes it when done; move it, or use another folder"
        )
    if lock.is_symlink() or (
        lock.exists() and not (lock.is_file() and lock.read_text(errors="replace").strip().isdigit())
    ):
        raise ValueError(
            f"{lock} exists and is not a biasamp lock (a process id), and {out} is not a study folder; "
            "move it, or use another folder"
        )


def check_output_dir(out: Path) -> None:
    """OUT is a folder, or can be made one: every existing part of its path is a folder we can write in."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: a file, not a folder (--out)")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing}: a file, not a folder (--out {out})")
    try:  # root may write where the mode bits say no, and a read-only mount says no to everyone: try it
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".biasamp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{existing}: cannot write here ({e.strerror}; --out {out})") from None


# What a study folder holds that another command's output must never land in or replace.
STUDY_PARTS = {*(t.path.split("/")[0] for t in TABLES.values()), "checkpoints", "logs", "wandb", "manifest.json"}


def check_output_path(out: Path, kind: str, flag: str = "--out") -> None:
    """`out`, where a command writes a `kind` ("file" or "folder"), neither lands in a study folder's
    tables, checkpoints or logs (nor replaces one), nor is a folder where a file is meant or the reverse."""
    out = Path(out)
    if out.exists():  # a FIFO or device would be replaced by the rename (as root, /dev/null itself)
        try:
            check_regular_file(out)
        except ValueError as e:
            raise ValueError(f"{flag} {e}; a {kind} is written here") from None
    if kind == "file" and out.is_dir():
        raise ValueError(f"{flag} {out}: a folder; a file is written here")
    if kind == "folder" and out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out}: a file; a folder is written here")
    absolute = out.resolve()
    for study in absolute.parents:
        if is_study_folder(study):
            part = absolute.relative_to(study).parts[0]
            if part in STUDY_PARTS:
                raise ValueError(
                    f"{flag} {out}: inside the study folder {study} ({part}), whose tables it would "
                    f"make unreadable; write it beside the study's tables, e.g. {study / 'report'}"
                )
            return


@contextmanager
def own_output_dir(out: Path, log=print):
    """One writer per study folder: an OS lock on OUT/.lock, released when the holder exits or dies.
    A second `run`, `score` or `analyze` on a folder in use stops at once, in one line. The owner
    first removes what an interrupted run left (temp files, scratch), works with its temp space in
    the scratch folder, and removes that on the way out."""
    check_output_dir(out)
    check_not_foreign(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise ValueError(
                f"{out} is in use by another biasamp process (pid {holder}); wait for it, or use another --out"
            ) from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            if n := remove_stale(out):
                log(f"removed {n} temp file(s) an interrupted run left in {out}")
            with scratch_space(out):
                yield
        finally:
            shutil.rmtree(scratch_dir(out), ignore_errors=True)
            # Removed while still held: whoever opens OUT/.lock after this makes a new one and gets it.
            (out / ".lock").unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)
            if created and not any(out.iterdir()):  # a run that wrote nothing
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

    with atomic(path) as tmp, tmp.open("wb") as fh:  # a file object: numpy would add ".npz" to a name
        np.savez_compressed(fh, **arrays)


def write_json(obj, path: Path) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


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


def read_manifest(out: Path) -> dict | None:
    """OUT/manifest.json (None: there is none), checked to be a study's manifest."""
    path = Path(out) / "manifest.json"
    if not path.exists():
        return None
    check_regular_file(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(
            f"{path}: not JSON (damaged? it is the study's record: restore it, or use another --out)"
        ) from None
    for key, kind in (("config", dict), ("study", str), ("science_hash", str)):
        if not isinstance(manifest, dict) or not isinstance(manifest.get(key), kind):
            raise ValueError(f"{path}: no '{key}' key: not a biasamp manifest")
    return manifest


def _check_not_shrunk(cfg: StudyConfig, out: Path, recorded_seeds) -> None:
    """A run may extend a study (more generations, more seeds), never record fewer than the folder
    holds: the manifest would claim a study that is not what is on disk."""
    seeds = {*cfg.seeds, *(s for s in recorded_seeds or [] if isinstance(s, int) and not isinstance(s, bool))}
    written = {s: max(completed_generations(out, arm, s) for arm in cfg.arms) for s in seeds}
    left_out = sorted(s for s, n in written.items() if n and s not in cfg.seeds)
    most = max(written.values(), default=0)
    if not left_out and most <= cfg.generations:
        return
    held = "G0" if most == 1 else f"G0..G{most - 1}"
    if left_out:
        held += f" of seeds {left_out}"
    raise ValueError(
        f"{out} holds {held}; generations={cfg.generations}, seeds={list(cfg.seeds)} would record less than "
        f"is there (a run extends a study, never shrinks it): give generations >= {most} and every seed "
        "written, or use another --out"
    )


def claim_output_dir(cfg: StudyConfig, out: Path, record: bool = True) -> None:
    """Check that the manifest there (if any) is for this study: results of two configs must never
    mix in one folder; then (record) write it with this config."""
    path = out / "manifest.json"
    config = cfg.model_dump(mode="json")
    old = read_manifest(out)
    if old is not None:
        try:  # the folder's config hashed by today's rule (a manifest from before a rule change still matches)
            old_hash = StudyConfig.model_validate(old["config"]).science_hash()
        except ValueError:
            old_hash = old.get("science_hash")
        if old_hash != cfg.science_hash():
            old_flat, new_flat = dict(_flat(old.get("config", {}))), dict(_flat(config))
            changed = sorted(
                k
                for k in old_flat.keys() | new_flat.keys()
                if old_flat.get(k) != new_flat.get(k)
                and k.split(".")[0] not in HASH_EXCLUDES
                and not (k.startswith("corpora.") and k.endswith(".source"))
            )
            raise ValueError(
                f"{out} holds study '{old.get('study')}' with config hash {old.get('science_hash')}; "
                f"this config hashes to {cfg.science_hash()} (differs in: {', '.join(changed[:8]) or '?'}). "
                "Use another --out."
            )
        _check_not_shrunk(cfg, out, old["config"].get("seeds"))
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
