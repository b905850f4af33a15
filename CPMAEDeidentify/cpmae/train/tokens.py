"""Paired integer-token data for the prior: (brain tokens E1, non-brain tokens E2) per subject.

The prior never sees voxels, only the two tokenizers' codes of the same head. Pairs come from
a folder written by ``cpmae encode`` or are encoded on the fly from the subject source (cheap
next to a prior step, and cached: a 32³ pair is 64 KiB).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from cpmae.conditions import SHAPE_MAPS_VERSION
from cpmae.errors import InputError
from cpmae.train.data import SubjectSource, Volume

# (brain tokens, nonbrain tokens) int64 [T,T,T], and the condition maps float32 [C,T,T,T]
# (``cpmae.conditions``; None in token folders written before they existed: architecture 1 only)
Pair = Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]


@torch.no_grad()
def encode_part(tokenizer: torch.nn.Module, vol: Volume, part: str, device: str = "cpu") -> np.ndarray:
    """Token grid [T,T,T] of one subject's brain or non-brain part (whole model grid)."""
    x = torch.from_numpy(np.ascontiguousarray(vol.part(part)))[None, None].to(device)
    return tokenizer.encode(x)[0].cpu().numpy().astype(np.int64)


class PairSource:
    """Training and held-out token pairs, computed once and cached."""

    def __init__(self, load: Callable[[int], Pair], n_train: int, n_val: int, description: str,
                 token_size: int, codebook_size: int, levels: Optional[Tuple[int, ...]] = None, arch: int = 1,
                 cohort_seeds: Optional[List[int]] = None):
        self._load, self.n_train, self.n_val = load, n_train, n_val
        self._cache: Dict[int, Pair] = {}
        self.description, self.token_size, self.codebook_size = description, token_size, codebook_size
        self.levels, self.arch = (tuple(levels) if levels else None), int(arch)
        self.cohort_seeds = list(cohort_seeds or [])

    def _get(self, index: int) -> Pair:
        if index not in self._cache:
            self._cache[index] = self._load(index)
        return self._cache[index]

    def train(self, i: int) -> Pair:
        return self._get(i)

    def val(self, j: int) -> Pair:
        return self._get(self.n_train + j)


def encode_pair(brain_tok: torch.nn.Module, nonbrain_tok: torch.nn.Module, vol: Volume, device: str = "cpu") -> Pair:
    """One subject's training pair for the prior."""
    from cpmae.conditions import brain_maps

    return (encode_part(brain_tok, vol, "brain", device), encode_part(nonbrain_tok, vol, "nonbrain", device),
            brain_maps(vol.brain, nonbrain_tok.cfg.factor))


def encoded_pairs(subjects: SubjectSource, brain_tok: torch.nn.Module, nonbrain_tok: torch.nn.Module,
                  device: str = "cpu", cohort_seeds: Optional[List[int]] = None) -> PairSource:
    if brain_tok.codebook_size != nonbrain_tok.codebook_size:
        raise InputError("the brain and non-brain tokenizers have different codebook sizes")
    if brain_tok.cfg.arch != nonbrain_tok.cfg.arch:
        raise InputError(f"the brain tokenizer is architecture {brain_tok.cfg.arch}, "
                         f"the non-brain one {nonbrain_tok.cfg.arch}")

    def load(index: int) -> Pair:
        return encode_pair(brain_tok, nonbrain_tok, subjects._get(index), device)

    return PairSource(load, subjects.n_train, subjects.n_val, subjects.description + ", encoded on the fly",
                      brain_tok.cfg.token_size, brain_tok.codebook_size, brain_tok.cfg.levels, brain_tok.cfg.arch,
                      cohort_seeds)


def read_token_manifest(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise InputError("not a token dataset (no manifest.json; run `cpmae encode` first)", path=folder)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("kind") != "cpmae-tokens":
        raise InputError("manifest.json is not a token dataset written by `cpmae encode`", path=path)
    return manifest


def folder_pairs(folder: Path, resolution: int, n_train: int, n_val: int) -> PairSource:
    """Pairs written by ``cpmae encode``; the last ``n_val`` cases are held out."""
    folder = Path(folder)
    manifest = read_token_manifest(folder)
    if int(manifest["resolution"]) != resolution:
        raise InputError(f"token dataset is for the {manifest['resolution']}³ grid, not {resolution}³", path=folder)
    if manifest.get("shape_maps") and int(manifest.get("shape_maps_version", 1)) != SHAPE_MAPS_VERSION:
        raise InputError(f"token pairs carry face-shape maps of version {manifest.get('shape_maps_version', 1)}, "
                         f"this engine makes version {SHAPE_MAPS_VERSION}: re-encode with `cpmae encode` into a new "
                         "folder", path=folder)
    cases = manifest["cases"]
    if not cases:
        raise InputError("token dataset has no cases", path=folder)
    n_val = min(n_val, max(0, len(cases) - 1))
    train, val = cases[: len(cases) - n_val][:n_train], cases[len(cases) - n_val:]
    ordered = train + val

    def load(index: int) -> Pair:
        with np.load(folder / ordered[index]["file"], allow_pickle=False) as z:
            cond = z["occupancy"].astype(np.float32)[None] if "occupancy" in z.files else None
            if cond is not None and "shape" in z.files:  # face-shape maps follow the brain channel
                cond = np.concatenate([cond, z["shape"].astype(np.float32)])
            return z["brain"].astype(np.int64), z["nonbrain"].astype(np.int64), cond

    desc = f"token dataset {folder.name} ({manifest.get('data', 'unknown data')}): {len(train)} train, {len(val)} held out"
    return PairSource(load, len(train), len(val), desc, int(manifest["token_size"]), int(manifest["codebook_size"]),
                      manifest.get("levels"), int(manifest.get("arch", 1)), manifest.get("cohort_seeds"))


def is_token_folder(path: str) -> bool:
    p = Path(path) / "manifest.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("kind") == "cpmae-tokens"
    except (json.JSONDecodeError, OSError):
        return False
