"""Which files of a folder are head scans, and which file is a scan's brain mask.

Batch de-identification, training preparation and the audit all read folders of scans; they
read them through this module so that the same folder means the same scans to all three.

* **Image files** end in one of ``IMAGE_SUFFIXES`` (case-insensitive, ``.nii.gz`` counts as one
  suffix); hidden files (``.name``, e.g. our own temporaries) are never scans.
* **Masks are not scans**: a file whose name, split at ``_ - .``, has a part in ``MASK_WORDS`` or
  ending in ``mask`` (``a_mask``, ``sub-01_desc-brain_mask``, ``sub-01_T1w_defacemask``,
  ``sub-01_dseg``) is a mask or a label map, never a head with a face.
* **Layout**: BIDS when the folder has ``dataset_description.json`` or ``sub-*`` folders; scans
  are then ``sub-*/[ses-*/]anat/*`` (``derivatives/`` is not searched). Otherwise flat: the
  image files directly in the folder (sub-folders are not searched).
* **A scan's mask** (``find_mask``), first found of: ``<stem>_mask``, ``<stem>_brainmask``,
  ``<stem>_desc-brain_mask`` next to the scan; in BIDS, ``derivatives/*/<same folders>/
  <entities>_desc-brain_mask`` (entities = the stem without its ``_T1w``-like suffix); in a flat
  folder, the shortest mask-named file starting with ``<stem>_`` or ``<stem>-``; in ``mask_dir``
  a file named like the scan (with or without the suffixes above). Any image suffix.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

from cpmae.errors import InputError

PathLike = Union[str, Path]

#: every readable image format, by file suffix (``cpmae.io`` maps each format to its reader)
IMAGE_FORMATS = {".nii.gz": "NIfTI", ".nii": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage",
                 ".mhd": "MetaImage"}
IMAGE_SUFFIXES = tuple(IMAGE_FORMATS)
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
DETACHED_HEADER_SUFFIXES = (".mhd", ".nhdr")  # a text header naming a separate data file  # what ``cpmae.io.write_image`` writes; others become NRRD
_LONGEST_FIRST = tuple(sorted(IMAGE_SUFFIXES, key=len, reverse=True))
MASK_WORDS = ("mask", "brainmask", "defacemask", "seg", "dseg", "probseg", "label", "labels")
MASK_NAME_SUFFIXES = ("_mask", "_brainmask", "_desc-brain_mask")
BIDS_MASK = "_desc-brain_mask"
_NAME_PARTS = re.compile(r"[_\-.]")


def image_suffix(name: PathLike) -> str:
    """The image suffix of a file name, lower-case (``.nii.gz`` is one); '' when not an image."""
    low = Path(name).name.lower()
    return next((s for s in _LONGEST_FIRST if low.endswith(s)), "")


def strip_image_suffix(name: PathLike) -> Optional[str]:
    """File name without its image suffix (case kept), or None when it is not an image file."""
    name = Path(name).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else None


def is_mask_name(name: PathLike) -> bool:
    """True when a file name (with or without suffix) names a mask or label map, not a head."""
    stem = strip_image_suffix(name) or Path(name).name
    return any(p in MASK_WORDS or p.endswith("mask") for p in _NAME_PARTS.split(stem.lower()) if p)


def is_image_file(path: Path) -> bool:
    """A visible regular file with an image suffix."""
    return not path.name.startswith(".") and bool(image_suffix(path.name)) and path.is_file()


def is_bids(folder: PathLike) -> bool:
    """A BIDS dataset has a dataset_description.json or ``sub-*`` folders at its root."""
    folder = Path(folder)
    return (folder / "dataset_description.json").is_file() or any(p.is_dir() for p in folder.glob("sub-*"))


def find_scans(folder: PathLike, contrast: Optional[str] = None, what: str = "input folder") -> Tuple[str, List[Path]]:
    """(layout, scan paths sorted) of ``folder``: ``"bids"`` or ``"flat"`` (rules in the module docstring).

    ``contrast`` (e.g. ``"T1w"``) keeps only BIDS scans whose stem ends in ``_<contrast>`` (a flat
    folder's names carry no contrast: all its scans are kept): training and the audit use
    T1-weighted scans; batch de-identification takes every anatomical image, since every one of
    them shows the face. Missing folder / not a folder are ``InputError``s naming
    ``what``; an empty result is the caller's to judge.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{what} does not exist", path=folder)
    if not folder.is_dir():
        raise InputError(f"{what} is not a folder", path=folder)
    layout = "bids" if is_bids(folder) else "flat"
    if layout == "bids":
        candidates = list(folder.glob("sub-*/anat/*")) + list(folder.glob("sub-*/ses-*/anat/*"))
    else:
        candidates = list(folder.iterdir())
    scans = [p for p in candidates if is_image_file(p) and not is_mask_name(p.name)]
    if contrast is not None and layout == "bids":
        scans = [p for p in scans if strip_image_suffix(p.name).endswith(f"_{contrast}")]
    return layout, sorted(scans)


def _first_image(folder: Path, stems) -> Optional[Path]:
    for stem in stems:
        for suffix in IMAGE_SUFFIXES:
            p = folder / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def find_mask(scan: PathLike, root: Optional[PathLike] = None, mask_dir: Optional[PathLike] = None) -> Optional[Path]:
    """The brain mask the user supplied for ``scan`` (rules in the module docstring), or None."""
    scan = Path(scan)
    stem = strip_image_suffix(scan.name) or scan.name
    found = _first_image(scan.parent, [stem + s for s in MASK_NAME_SUFFIXES])
    if found is None and root is not None:
        root = Path(root)
        if is_bids(root):
            entities = stem.rsplit("_", 1)[0] if "_" in stem else stem
            rel_dir = scan.parent.relative_to(root)
            for deriv in sorted(root.glob("derivatives/*")):
                found = found or _first_image(deriv / rel_dir, [entities + BIDS_MASK, stem + BIDS_MASK])
        else:
            near = [p for p in scan.parent.iterdir() if p != scan and is_image_file(p) and is_mask_name(p.name)
                    and strip_image_suffix(p.name).startswith((stem + "_", stem + "-"))]
            found = min(near, key=lambda p: (len(p.name), p.name)) if near else None
    if found is None and mask_dir is not None:
        found = _first_image(Path(mask_dir), [stem] + [stem + s for s in MASK_NAME_SUFFIXES])
    return found
