"""Write small text files so that a reader never sees half of one.

Batch runs are killed by schedulers at any moment. Every JSON the batch writes (sidecars,
provenance records, dataset_description.json) goes to a temporary file in the target folder,
is flushed to disk, and is renamed over the target; a kill leaves either the old file or the
new one, plus at worst a stale ``.<name>.cpmae-tmp-*`` file that ``remove_stale_temps`` clears.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from cpmae.errors import OutputError

TEMP_MARK = ".cpmae-tmp-"


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a same-folder temporary file and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write here ({exc.strerror or exc})", path=path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
