"""Subject pseudonyms and the per-scan seeds derived from them.

The remodeled face of a scan is a seeded sample. Deriving the seed from the *subject*
(``sub-01``), never the session or the file, means that the same person gets the same
sampling noise in every session (so longitudinal data do not show a new face each visit),
while different subjects get different faces. The seed is ``HMAC-SHA256(key, subject)``: with
a secret ``--pseudonym-key`` nobody can recompute which seed belongs to which subject; without
one the key is derived from ``--seed`` and the mapping is reproducible by anyone (the seed alone
reveals nothing about the original face, which is never an input to the sampler).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Optional, Union

from cpmae.dataset import strip_image_suffix
from cpmae.errors import InputError

SEED_BITS = 53  # exact in JSON (IEEE double), fits torch/numpy seeds, collisions ~n^2/2^54
_SUBJECT = re.compile(r"(?:^|[_/\\])sub-([A-Za-z0-9]+)")


def subject_of(relative_path: Union[str, Path]) -> str:
    """Subject id of a case: its BIDS ``sub-<label>`` entity, else the file name without extension."""
    text = Path(relative_path).as_posix()
    m = _SUBJECT.search(text)
    if m:
        return f"sub-{m.group(1)}"
    name = Path(text).name
    return strip_image_suffix(name) or name


def resolve_key(key: Optional[str], base_seed: int) -> bytes:
    """The HMAC key: ``--pseudonym-key`` text, ``@file`` (first line), $CPMAE_PSEUDONYM_KEY, or from the seed."""
    if key is None:
        key = os.environ.get("CPMAE_PSEUDONYM_KEY") or None
    if key is None:
        return public_key(base_seed)
    if key.startswith("@"):
        path = Path(key[1:])
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read the pseudonym key file ({exc.strerror or exc})", path=path) from None
        if not key:
            raise InputError("the pseudonym key file is empty", path=path)
    if not key:
        raise InputError("the pseudonym key is empty")
    return key.encode("utf-8")


def public_key(base_seed: int) -> bytes:
    """The key of a run without a secret one: anyone who knows ``base_seed`` can recompute the seeds."""
    return f"cpmae-public-seed:{int(base_seed)}".encode()


def pseudonym(subject: str, key: bytes) -> str:
    """A stable, keyed, non-reversible label for ``subject`` (64 hex characters)."""
    return hmac.new(key, subject.encode("utf-8"), hashlib.sha256).hexdigest()


def seed_for_subject(subject: str, key: bytes) -> int:
    """The sampling seed of every scan of ``subject`` (an integer below 2**53)."""
    return int(pseudonym(subject, key), 16) >> (256 - SEED_BITS)


def shard_of(case_id: str, n_shards: int) -> int:
    """Shard (0..n-1) of a case: a hash of its id, so shards never overlap and a file added
    to the dataset between array tasks moves no other case to another shard."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def parse_shard(text: str) -> tuple:
    """``"i/n"`` -> (i, n) with 0 <= i < n; anything else is an InputError."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise InputError(f"--shard must look like i/n (e.g. 0/8), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return i, n
