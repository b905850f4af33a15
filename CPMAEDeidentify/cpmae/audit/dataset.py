"""Which scans an audit evaluates: a BIDS-like cohort or any flat folder of head scans.

BIDS-like: ``sub-*/[ses-*/]anat/*_T1w.<ext>``, with optional brain masks under
``derivatives/*/sub-*/[ses-*/]anat/*desc-brain_mask.<ext>`` (what ``cpmae generate-cohort``
writes). Flat: every image file directly in the folder; a file whose name contains ``mask``
is taken as the mask of the scan whose name it starts with (``a.nii.gz`` + ``a_mask.nii.gz``
or ``a_desc-brain_mask.nii.gz``), never as a scan. Scans without a mask get deepbet's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from cpmae.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Scan:
    """One evaluated scan: an id unique within the audit, its image and (optional) brain mask."""

    id: str
    image: Path
    mask: Optional[Path] = None


def _stem(path: Path) -> Optional[str]:
    """File name without its image suffix, or None when it is not an image file."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _is_mask_name(stem: str) -> bool:
    return "mask" in stem.lower()


def _bids_scans(root: Path) -> List[Scan]:
    masks = {}
    for m in sorted(root.glob("derivatives/*/sub-*/**/anat/*")):
        stem = _stem(m)
        if stem and "desc-brain_mask" in stem:
            key = stem.split("_desc-brain_mask")[0]
            masks.setdefault(key, m)
    scans = []
    for p in sorted(root.glob("sub-*/**/anat/*")):
        stem = _stem(p)
        if not stem or not stem.endswith("_T1w") or _is_mask_name(stem):
            continue
        entity = stem[: -len("_T1w")]
        mask = masks.get(entity) or masks.get(stem)
        scans.append(Scan(id=entity, image=p, mask=mask))
    return scans


def _flat_scans(root: Path) -> List[Scan]:
    files = sorted(p for p in root.iterdir() if p.is_file() and _stem(p) is not None and not p.name.startswith("."))
    images = [p for p in files if not _is_mask_name(_stem(p))]
    masks = [p for p in files if _is_mask_name(_stem(p))]
    scans = []
    for p in images:
        stem = _stem(p)
        candidates = [m for m in masks if _stem(m).startswith(stem + "_") or _stem(m).startswith(stem + "-")]
        scans.append(Scan(id=stem, image=p, mask=min(candidates, key=lambda m: len(m.name)) if candidates else None))
    return scans


def discover_scans(folder) -> List[Scan]:
    """The scans of ``folder`` (BIDS-like if it has ``sub-*`` folders, else flat), sorted by id."""
    root = Path(folder)
    if not root.exists():
        raise InputError("no such folder", path=root)
    if not root.is_dir():
        raise InputError("is not a folder (cpmae audit takes a folder of scans)", path=root)
    scans = _bids_scans(root) if any(root.glob("sub-*")) else _flat_scans(root)
    if not scans:
        raise InputError("no head scans found (expected sub-*/anat/*_T1w.nii.gz or image files "
                         f"ending in {', '.join(IMAGE_SUFFIXES)})", path=root)
    ids = [s.id for s in scans]
    if len(set(ids)) != len(ids):
        raise InputError("two scans share one id; give every scan a distinct file name", path=root)
    return sorted(scans, key=lambda s: s.id)
