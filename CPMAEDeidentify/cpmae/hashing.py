"""The one sha256 of a file: weights manifests, provenance records, prepared datasets and batch
manifests all compare digests made by this function, so they must agree byte for byte."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Union

CHUNK_BYTES = 1 << 20  # streamed: a scan or a weights file can be hundreds of MB


def sha256_file(path: Union[str, Path], chunk: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Iterable[Union[str, Path]], chunk: int = CHUNK_BYTES) -> str:
    """Hex sha256 of several files' bytes in the order given (a detached header, then its data)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    return h.hexdigest()
