"""A small batch output folder made by ``cpmae.batch.run_batch`` from pydeface's averaged head (128³).

Three cases with constructed outputs and real self-checks, so the review page and report have a
pass and two flags to show without running the model: ``sub-01`` remodeled (the cohort's face
warp, doubled: passes), ``sub-02`` the original passed through (flagged: identity, changed),
``sub-03`` brain only (flagged: face, seam). Only the averaged head: pictures of it may be committed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk
import torch

KINDS = {"sub-01_T1w.nii.gz": "REMODELED", "sub-02_T1w.nii.gz": "ORIGINAL", "sub-03_T1w.nii.gz": "BLACK"}


def _arrays() -> Dict[str, np.ndarray]:
    from cpmae import cohort, cohort_augment as aug

    src = cohort.load_source("pydeface-mean", 128)
    brain = src.brain > 0
    warp, _, _, frame = cohort.draw_warp(1, 128, global_part=False)
    with torch.no_grad():
        warped = aug.apply_warp(frame.volumes, aug.Warp(warp.displacement * 2.0))[0].numpy()
    return {"input": np.asarray(src.image, np.float32), "brain": src.brain.astype(np.uint8),
            "REMODELED": np.where(brain, src.image, warped).astype(np.float32),
            "ORIGINAL": np.array(src.image, np.float32),
            "BLACK": np.where(brain, src.image, 0).astype(np.float32), "reference": src.reference}


def make_review_batch(root: Path) -> Path:
    """``root/in`` (three inputs) and ``root/out`` (the batch output); returns ``root/out``."""
    from cpmae.batch import run_batch
    from cpmae.io import read_image, write_image
    from cpmae.selfcheck import self_check

    arrays = _arrays()
    ref = arrays["reference"]

    def image(a):
        img = sitk.GetImageFromArray(a)
        img.CopyInformation(ref)
        return img

    in_dir = root / "in"
    in_dir.mkdir(parents=True, exist_ok=True)
    for name in KINDS:
        write_image(image(arrays["input"]), in_dir / name)
    mask = image(arrays["brain"])

    def worker(in_path, out_path, *, seed, reporter, **_):
        x = read_image(in_path)
        y = image(arrays[KINDS[Path(in_path).name]])
        write_image(y, out_path)
        return {"seed": seed, "steps": 1, "weights_sha256": "test", "resolution": 128,
                "changed_voxels": int(np.count_nonzero(sitk.GetArrayViewFromImage(x) != sitk.GetArrayViewFromImage(y))),
                "self_check": self_check(x, y, mask)}

    out = root / "out"
    run_batch(in_dir, out, resolution=128, process_case=worker)
    return out


if __name__ == "__main__":  # python Testing/review_fixtures.py DIR: a folder to try `cpmae review` on
    import sys

    print(make_review_batch(Path(sys.argv[1])))


def phantom_batch_with_flags(root: Path, passing=("b.nii.gz",)):
    """Inputs a, b, c (phantom heads) in ``root/in`` and a stand-in batch worker: each output is the
    input + 1, and every case but ``passing`` is flagged "face" by a pretend self-check.

    Returns (in_dir, worker) for ``run_batch(in_dir, out, process_case=worker)``: the batch's
    flag bookkeeping is tested without rendering or running the model."""
    from cpmae.io import copy_geometry, read_image, write_image
    from phantoms import phantom_image

    in_dir = root / "in"
    in_dir.mkdir()
    image, _ = phantom_image()
    for name in ("a", "b", "c"):
        write_image(image, in_dir / f"{name}.nii.gz")

    def worker(in_path, out_path, *, seed, reporter, **_):
        img = read_image(in_path)
        write_image(copy_geometry(sitk.GetArrayFromImage(img) + 1, img), out_path)
        flagged = [] if in_path.name in passing else ["face"]
        checks = {"face": {"result": "flag" if flagged else "pass", "value": None if flagged else 0.9}}
        return {"seed": seed, "self_check": {"passed": not flagged, "flagged": flagged, "checks": checks}}

    return in_dir, worker
