"""Reading and writing files safely: every write goes to a hidden temp name beside its target and is
renamed into place (a reader never sees half a file; what a kill leaves ends in ".tmp" and is removed
by the folder's next owner), and a full disk is one error naming the file, what it needed, what was free."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path


def check_regular_file(path: Path) -> None:
    """An input that is a FIFO, socket or device would hang the read (holding a study's lock) or never
    end: refuse it. A missing path is left to the caller, which knows what it was for."""
    mode = Path(path).stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ValueError(f"{path}: {kind}, not a regular file")


def temp_path(path: Path) -> Path:
    """Where a writer puts `path` before renaming it into place."""
    return path.with_name(f".{path.name}.tmp")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def _free(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def disk_full(path: Path, need: int | None, written: int = 0) -> OSError:
    """The one error for a full disk: which file, how much it needed (or had written), how much is free."""
    what = f"needs about {_mb(need)}" if need else f"ran out after {_mb(written)}"
    return OSError(errno.ENOSPC, f"no space left on device: {what}, {_mb(_free(path.parent))} free now", str(path))


def is_disk_full(e: BaseException, folder: Path) -> bool:
    """ENOSPC or EDQUOT, however a library wraps it (safetensors' SafetensorError says "No space left";
    torch's writer says only "file write failed", so a nearly full disk counts too)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
        return True
    try:
        return _free(folder) < 2**20
    except OSError:
        return False


@contextmanager
def atomic(path: Path, need: int | None = None):
    """Yield the temp path to write `path` (a file or a folder) at; rename it into place on success,
    remove it on any failure. With `need` (bytes), a disk with less free is refused before writing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    if need is not None and _free(path.parent) < need:
        raise disk_full(path, need)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as e:
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and is_disk_full(e, path.parent):
            raise disk_full(path, need, written) from None
        raise


def sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
