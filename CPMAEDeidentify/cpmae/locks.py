"""Advisory file locks on Linux, macOS and Windows: the one place that knows how.

Slicer runs on all three and its panel reads batch folders (``cpmae.review.cases``), so no module
may import ``fcntl`` (POSIX only) at top level. POSIX uses ``flock`` (released when the file is
closed or the process dies, even by ``kill -9``); Windows uses ``msvcrt.locking`` on one byte far
past the data, so a locked manifest stays readable and appendable by its holder, and other
processes still read it. Windows has no shared lock: a shared request takes an exclusive one,
which is all the probes here need (they unlock at once).
"""
from __future__ import annotations

import os
import time

# POSIX can rename a new file over one that is open (and locked); Windows refuses, so writers that
# replace a locked file must close it first there (``cpmae.review.cases.decide``).
REPLACE_WHILE_OPEN = os.name != "nt"
_WINDOWS_OFFSET = 1 << 30  # the locked byte: past any manifest, never read or written

if os.name == "nt":  # pragma: no cover - exercised with a stand-in msvcrt in Testing/test_locks.py
    import msvcrt

    def _lock(fh, exclusive: bool, blocking: bool) -> None:
        pos = fh.tell()
        try:
            while True:
                fh.seek(_WINDOWS_OFFSET)
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                    return
                except OSError:
                    if not blocking:
                        raise
                    time.sleep(0.05)
        finally:
            fh.seek(pos)

    def _unlock(fh) -> None:
        pos = fh.tell()
        try:
            fh.seek(_WINDOWS_OFFSET)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        finally:
            fh.seek(pos)
else:
    import fcntl

    def _lock(fh, exclusive: bool, blocking: bool) -> None:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        fcntl.flock(fh.fileno(), flags if blocking else flags | fcntl.LOCK_NB)

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def lock(fh, exclusive: bool = True, blocking: bool = False) -> None:
    """Lock open file ``fh``; raises ``OSError`` when another holder has it and ``blocking`` is False."""
    _lock(fh, exclusive, blocking)


def unlock(fh) -> None:
    """Release a lock taken with ``lock`` (closing the file releases it too)."""
    _unlock(fh)
