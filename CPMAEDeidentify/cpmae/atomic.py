"""Write files so that a reader never sees half of one.

Jobs are killed by schedulers, by the Slicer panel's Cancel, or by a full disk at any moment.
Every file the engine writes (images, renders, JSON records, caches) goes to a temporary file in
the target folder and is renamed over the target only when complete: a kill leaves either the old
file or the new one, plus at worst a stale ``.<name>.cpmae-tmp-*`` file that ``remove_stale_temps``
clears. One implementation, so every writer gets the same guarantees and permissions.

"Complete" is checked, not assumed: a full disk does not always raise (ITK's NIfTI writer prints
"wrote only 0 of N bytes" and carries on), so each temporary file is fsync'ed (where a delayed
ENOSPC surfaces) and, when the writer gives a ``verify`` callable, read back before it is renamed.
Files that belong together (an image and its provenance record) are published as one group: all
are written and verified before the first rename, and a failure removes every one of them.
"""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Union

from cpmae.errors import OutputError

TEMP_MARK = ".cpmae-tmp-"
#: OSErrors that mean "the storage could not take the bytes": reported as one OutputError line
STORAGE_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG, errno.EIO,
                                       errno.EROFS) if e is not None)

Verify = Callable[[Path], None]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def storage_error(exc: OSError, path: Union[str, Path]) -> OutputError:
    """One user-facing line for an OSError raised while writing ``path``."""
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", -1):
        return OutputError("no space left on the device (disk or quota full); nothing was written", path=path)
    return OutputError(f"cannot write ({exc.strerror or exc}); nothing was written", path=path)


def fsync_file(path: Union[str, Path]) -> None:
    """Flush a written file to the device; a full disk can first show up here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Union[str, Path]) -> None:
    """Make renames in ``path`` durable (best effort: some file systems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_paths(paths: Sequence[Union[str, Path]], suffixes: Optional[Sequence[str]] = None,
                 verify: Optional[Sequence[Optional[Verify]]] = None, private: bool = False) -> Iterator[List[Path]]:
    """Temporary paths for files that are published together, in the order given.

    After the block, each temporary file is fsync'ed and checked with its ``verify`` callable
    (which raises ``OutputError`` for a file that does not read back whole); only when all pass
    are they renamed onto ``paths`` in order, so the last path is the "done" marker. On any
    failure no temporary file remains and the files of the group already renamed are removed.
    """
    paths = [Path(p) for p in paths]
    suffixes = list(suffixes) if suffixes is not None else [""] * len(paths)
    verify = list(verify) if verify is not None else [None] * len(paths)
    temps: List[Path] = []
    placed: List[Path] = []
    try:
        for path, suffix in zip(paths, suffixes):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=suffix, dir=path.parent)
            except OSError as exc:
                raise OutputError(f"cannot write here ({exc.strerror or exc})", path=path) from None
            os.close(fd)
            temps.append(Path(name))
            if not private:
                os.chmod(name, 0o666 & ~current_umask())
        yield list(temps)
        for path, tmp, check in zip(paths, temps, verify):
            try:
                fsync_file(tmp)
            except OSError as exc:
                raise storage_error(exc, path) from None
            if check is not None:
                check(tmp)
        for path, tmp in zip(paths, temps):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise storage_error(exc, path) from None
            placed.append(path)
        for folder in {p.parent for p in paths}:
            fsync_dir(folder)
    except OSError as exc:
        _discard(temps, placed)
        if exc.errno in STORAGE_ERRNOS:
            raise storage_error(exc, paths[len(placed)] if len(placed) < len(paths) else paths[-1]) from None
        raise
    except BaseException:
        _discard(temps, placed)
        raise


def _discard(temps: Sequence[Path], placed: Sequence[Path]) -> None:
    for p in list(temps) + list(placed):
        try:
            p.unlink()
        except OSError:
            pass


@contextmanager
def atomic_path(path: Union[str, Path], suffix: str = "", private: bool = False,
                verify: Optional[Verify] = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success, delete it on failure.

    The temporary file gets the permissions of an ordinary new file (umask), unless ``private``.
    ``suffix`` keeps the extension for writers that choose the format by file name. ``verify``
    checks the finished temporary file before the rename (see ``atomic_paths``).
    """
    with atomic_paths([path], [suffix], [verify], private=private) as temps:
        yield temps[0]


def bytes_verifier(data: bytes) -> Verify:
    """A ``verify`` callable: the file must hold exactly ``data`` (re-read from the device)."""
    def check(tmp: Path) -> None:
        with open(tmp, "rb") as fh:
            back = fh.read(len(data) + 1)
        if back != data:
            raise OutputError(f"short write: {len(back)} of {len(data)} bytes reached the file; nothing was "
                              "written (is the disk full?)", path=tmp)
    return check


def write_into(tmp: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to an already created temporary file, flushed and fsync'ed."""
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: flushed, fsync'ed and read back before the rename."""
    path = Path(path)
    check = bytes_verifier(data)

    def verify(tmp: Path) -> None:
        try:
            check(tmp)
        except OutputError as exc:
            raise OutputError(exc.problem, path=path) from None

    with atomic_path(path, verify=verify) as tmp:
        write_into(tmp, data)
    return path


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
