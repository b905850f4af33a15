"""Turn a folder of scans into a training dataset on the model grids, once.

Every case is read, masked (the user's mask when one is found, otherwise deepbet, whose mask
is cached next to the case so it is computed once), resampled to the 128³ and/or 256³ model
grid exactly as ``cpmae.pipeline`` does at inference, and saved as ``.npy``. The manifest lists
every case with the sha256 of its source file and mask, and every skipped file with the reason,
so a rerun only processes new or changed files.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from cpmae import dataset
from cpmae.errors import CPMAEError, InputError
from cpmae.geometry import GRIDS
from cpmae.hashing import sha256_file
from cpmae.progress import NULL, Reporter

KIND = "cpmae-prepared"


def find_scans(folder: Path) -> List[Path]:
    """The T1-weighted scans of ``folder`` as ``cpmae.dataset`` finds them (BIDS ``*_T1w``; flat: all)."""
    return dataset.find_scans(folder, contrast="T1w", what="data folder")[1]


def find_mask(scan: Path, mask_dir: Optional[Path], root: Optional[Path] = None) -> Optional[Path]:
    """The user's mask for ``scan`` (``cpmae.dataset.find_mask``): next to it, in derivatives, or in ``mask_dir``."""
    return dataset.find_mask(scan, root=root, mask_dir=mask_dir)


def case_id(scan: Path, root: Path) -> str:
    """A file-system-safe id unique within the dataset (the relative path without extension)."""
    rel = scan.relative_to(root)
    stem = dataset.strip_image_suffix(scan.name)
    raw = "_".join(list(rel.parts[:-1]) + [stem]) if not dataset.is_bids(root) else stem
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


def prepare(data_dir: Path, out_dir: Path, resolutions: Iterable[int] = tuple(GRIDS), mask_dir: Optional[Path] = None,
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
                meta = prepare_case(scan, out_dir, cid, resolutions, find_mask(scan, mask_dir, data_dir), device)
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
