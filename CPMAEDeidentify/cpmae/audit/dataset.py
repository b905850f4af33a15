"""Which scans an audit evaluates: a BIDS-like cohort or any flat folder of head scans.

The folder is read by ``cpmae.dataset`` (the same rules as batch and prepare): BIDS
``sub-*/[ses-*/]anat/*_T1w.<ext>`` with masks next to them or under
``derivatives/*/sub-*/[ses-*/]anat/*_desc-brain_mask.<ext>`` (what ``cpmae generate-cohort``
writes); flat: every image file directly in the folder, mask-named files (``a_mask.nii.gz``)
being masks of the scan they start with, never scans. Scans without a mask get deepbet's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from cpmae import dataset
from cpmae.errors import InputError


@dataclass(frozen=True)
class Scan:
    """One evaluated scan: an id unique within the audit, its image and (optional) brain mask."""

    id: str
    image: Path
    mask: Optional[Path] = None


def discover_scans(folder) -> List[Scan]:
    """The scans of ``folder`` (BIDS-like if it has ``sub-*`` folders, else flat), sorted by id."""
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise InputError("is not a folder (cpmae audit takes a folder of scans)", path=root)
    if not root.exists():
        raise InputError("no such folder", path=root)
    layout, images = dataset.find_scans(root, contrast="T1w")
    scans = []
    for p in images:
        stem = dataset.strip_image_suffix(p.name)
        sid = stem[: -len("_T1w")] if layout == "bids" else stem
        scans.append(Scan(id=sid, image=p, mask=dataset.find_mask(p, root=root)))
    if not scans:
        raise InputError("no head scans found (expected sub-*/anat/*_T1w.nii.gz or image files "
                         f"ending in {', '.join(dataset.IMAGE_SUFFIXES)})", path=root)
    ids = [s.id for s in scans]
    if len(set(ids)) != len(ids):
        raise InputError("two scans share one id; give every scan a distinct file name", path=root)
    return sorted(scans, key=lambda s: s.id)
