"""Turn a folder of scans into a training dataset on the model grids, once.

Every case is read, masked (the user's mask when one is found, otherwise deepbet, whose mask
is cached next to the case so it is computed once), resampled to the 128³ and/or 256³ model
grid exactly as ``cpmae.pipeline`` does at inference, and saved as ``.npy``. The manifest lists
every case with the sha256 of its source file and mask, and every skipped file with the reason,
so a rerun only processes new or changed files.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from cpmae.errors import CPMAEError, InputError
from cpmae.progress import NULL, Reporter

IMAGE_EXTS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MASK_WORDS = ("mask", "brainmask", "seg", "label", "dseg")
KIND = "cpmae-prepared"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ext(path: Path) -> str:
    name = path.name.lower()
    return next((e for e in IMAGE_EXTS if name.endswith(e)), "")


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(_ext(path))]


def _is_mask_name(stem: str) -> bool:
    parts = re.split(r"[_\-.]", stem.lower())
    return any(w in parts for w in MASK_WORDS)


def is_bids(folder: Path) -> bool:
    return (folder / "dataset_description.json").is_file() or any(folder.glob("sub-*/"))


def find_scans(folder: Path) -> List[Path]:
    """BIDS: every ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``; otherwise every image file (not masks)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("data folder not found", path=folder)
    if is_bids(folder):
        found = [p for p in folder.glob("sub-*/**/anat/*_T1w.nii*") if _ext(p)]
        return sorted(p for p in found if "derivatives" not in p.relative_to(folder).parts)
    return sorted(p for p in folder.rglob("*") if p.is_file() and _ext(p) and not _is_mask_name(_stem(p))
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def find_mask(scan: Path, mask_dir: Optional[Path]) -> Optional[Path]:
    """A user mask for ``scan``: ``<stem>_mask.*`` / ``<stem>_brainmask.*`` next to it, or in
    ``mask_dir`` under the scan's stem (with or without those suffixes)."""
    stem = _stem(scan)
    names = [f"{stem}_mask", f"{stem}_brainmask", f"{stem}_desc-brain_mask"]
    places = [(scan.parent, names)]
    if mask_dir is not None:
        places.append((Path(mask_dir), [stem] + names))
    for folder, stems in places:
        for s in stems:
            for ext in IMAGE_EXTS:
                p = folder / f"{s}{ext}"
                if p.is_file() and p != scan:
                    return p
    return None


def case_id(scan: Path, root: Path) -> str:
    """A file-system-safe id unique within the dataset (the relative path without extension)."""
    rel = scan.relative_to(root)
    raw = "_".join(list(rel.parts[:-1]) + [_stem(scan)]) if not is_bids(root) else _stem(scan)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    from cpmae.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def prepare_case(scan: Path, out_dir: Path, cid: str, resolutions: Sequence[int], mask_path: Optional[Path],
                 device: str = "cpu") -> Dict:
    """Preprocess one scan; reuses the cached deepbet mask and grids when the source is unchanged."""
    import SimpleITK as sitk

    from cpmae.brainmask import compute_brain_mask, load_mask, validate_mask
    from cpmae.geometry import GRIDS, plan_model_grid, to_model
    from cpmae.io import read_image

    case_dir = out_dir / "cases" / cid
    case_dir.mkdir(parents=True, exist_ok=True)
    digest = sha256_file(scan)
    mask_digest = sha256_file(mask_path) if mask_path else "deepbet"
    meta_path = case_dir / "case.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if (old.get("sha256") == digest and old.get("mask_sha256") == mask_digest
                and all(str(r) in old.get("grids", {}) and all((out_dir / f).is_file() for f in old["grids"][str(r)].values())
                        for r in resolutions)):
            return dict(old, cached=True)
    img = read_image(scan)
    cached_mask = case_dir / "brain_native.nii.gz"
    if mask_path:
        mask = load_mask(mask_path, img)
    elif meta_path.is_file() and cached_mask.is_file() and json.loads(meta_path.read_text(encoding="utf-8")).get("sha256") == digest:
        mask = sitk.ReadImage(str(cached_mask), sitk.sitkUInt8)
    else:
        mask = compute_brain_mask(img, device=device, path=scan)
        tmp = case_dir / f".brain_native.{os.getpid()}.tmp.nii.gz"
        sitk.WriteImage(mask, str(tmp), True)
        os.replace(tmp, cached_mask)
    volume = validate_mask(mask, path=mask_path or scan)
    grids = {}
    for res in resolutions:
        ref = plan_model_grid(img, GRIDS[res], mask)
        image = to_model(img, ref, "linear")
        brain = (to_model(mask, ref, "nearest") > 0.5).astype(np.uint8)
        files = {"image": f"cases/{cid}/image-{res}.npy", "brain": f"cases/{cid}/brain-{res}.npy"}
        _save_npy(out_dir / files["image"], image.astype(np.float32))
        _save_npy(out_dir / files["brain"], brain)
        grids[str(res)] = files
    meta = {"id": cid, "sha256": digest, "mask": str(mask_path) if mask_path else "deepbet",
            "mask_sha256": mask_digest, "brain_volume_cm3": round(volume, 1), "size": list(img.GetSize()),
            "spacing_mm": [round(s, 4) for s in img.GetSpacing()], "grids": grids}
    _write_json(meta_path, meta)
    return meta


def prepare(data_dir: Path, out_dir: Path, resolutions: Iterable[int] = (128, 256), mask_dir: Optional[Path] = None,
            device: str = "cpu", reporter: Reporter = NULL, limit: int = 0) -> Tuple[Path, dict]:
    """Prepare every scan of ``data_dir`` into ``out_dir``; returns (manifest path, manifest)."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    resolutions = sorted({int(r) for r in resolutions})
    scans = find_scans(data_dir)
    if limit:
        scans = scans[:limit]
    if not scans:
        raise InputError("no scans found (NIfTI/NRRD/MetaImage files, or a BIDS dataset's anat/*_T1w.nii.gz)",
                         path=data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases, skipped, seen = [], [], set()
    with reporter.stage("prepare", total=len(scans)) as stage:
        for scan in scans:
            rel = str(scan.relative_to(data_dir))
            cid = case_id(scan, data_dir)
            try:
                if cid in seen:
                    raise InputError(f"case id {cid} is not unique in this dataset")
                seen.add(cid)
                meta = prepare_case(scan, out_dir, cid, resolutions, find_mask(scan, mask_dir), device)
                cases.append(dict(meta, source=rel))
            except CPMAEError as exc:
                skipped.append({"source": rel, "reason": exc.problem})
                reporter.log(f"skipped {rel}: {exc.problem}")
            except (RuntimeError, OSError, ValueError) as exc:  # SimpleITK / file-system failures
                skipped.append({"source": rel, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                reporter.log(f"skipped {rel}: {exc}")
            stage.advance()
    manifest = {"kind": KIND, "version": 1, "source": str(data_dir), "resolutions": resolutions,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "cases": [{k: v for k, v in c.items() if k != "cached"} for c in cases], "skipped": skipped}
    path = out_dir / "manifest.json"
    _write_json(path, manifest)
    return path, manifest
