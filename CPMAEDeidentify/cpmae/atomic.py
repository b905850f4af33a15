"""Write files so that a reader never sees half of one.

Jobs are killed by schedulers, by the Slicer panel's Cancel, or by a full disk at any moment.
Every file the engine writes (images, renders, JSON records, caches) goes to a temporary file in
the target folder and is renamed over the target only when complete: a kill leaves either the old
file or the new one, plus at worst a stale ``.<name>.cpmae-tmp-*`` file that ``remove_stale_temps``
clears. One implementation, so every writer gets the same guarantees and permissions.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from cpmae.errors import OutputError

TEMP_MARK = ".cpmae-tmp-"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Union[str, Path], suffix: str = "", private: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success, delete it on failure.

    The temporary file gets the permissions of an ordinary new file (umask), unless ``private``.
    ``suffix`` keeps the extension for writers that choose the format by file name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write here ({exc.strerror or exc})", path=path) from None
    os.close(fd)
    tmp = Path(name)
    try:
        if not private:
            os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temps(folder: Union[str, Path]) -> int:
    """Delete temporary files this module left in ``folder`` (after a kill); return how many."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if p.name.startswith(".") and TEMP_MARK in p.name and p.is_file():
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n


def ensure_output_dir(path: Union[str, Path], what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove it is writable, before any long work starts.

    Writability is tested by creating a file: ``os.access`` says yes to root on read-only mounts.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError("exists and is not a folder", path=path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".probe{TEMP_MARK}", dir=path)
    except OSError as exc:
        raise OutputError(f"cannot create or write in the {what} ({exc.strerror or exc})", path=path) from None
    os.close(fd)
    os.unlink(probe)
    return path
