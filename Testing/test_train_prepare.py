"""``cpmae prepare`` and ``cpmae encode``: folder/BIDS discovery, masks, caching, skipped cases."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from phantoms import phantom_image  # noqa: E402

from cpmae.train.prepare import find_mask, find_scans, prepare  # noqa: E402


def write_bids(root: Path, n: int = 2) -> Path:
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "phantoms", "BIDSVersion": "1.8.0"}), encoding="utf-8")
    for i in range(n):
        anat = root / f"sub-{i:02d}" / "anat"
        anat.mkdir(parents=True)
        img, mask = phantom_image(size=48, spacing=5.0, seed=i, nose=0.7 + 0.2 * i)
        sitk.WriteImage(img, str(anat / f"sub-{i:02d}_T1w.nii.gz"))
        sitk.WriteImage(mask, str(anat / f"sub-{i:02d}_T1w_mask.nii.gz"))
    return root


def test_prepare_bids_with_masks_caches_and_reports_skipped(tmp_path):
    root = write_bids(tmp_path / "bids")
    # a broken scan and a scan whose mask is empty: both must be skipped with a reason
    bad = root / "sub-98" / "anat"
    bad.mkdir(parents=True)
    (bad / "sub-98_T1w.nii.gz").write_bytes(b"not a nifti")
    empty = root / "sub-99" / "anat"
    empty.mkdir(parents=True)
    img, mask = phantom_image(size=48, spacing=5.0)
    sitk.WriteImage(img, str(empty / "sub-99_T1w.nii.gz"))
    sitk.WriteImage(mask * 0, str(empty / "sub-99_T1w_mask.nii.gz"))
    # derivatives and masks are not scans
    assert [p.name for p in find_scans(root)] == [f"sub-{i:02d}_T1w.nii.gz" for i in (0, 1, 98, 99)]
    assert find_mask(root / "sub-00/anat/sub-00_T1w.nii.gz", None).name == "sub-00_T1w_mask.nii.gz"

    out = tmp_path / "prepared"
    path, manifest = prepare(root, out, resolutions=[128])
    assert [c["id"] for c in manifest["cases"]] == ["sub-00_T1w", "sub-01_T1w"]
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"sub-98/anat/sub-98_T1w.nii.gz", "sub-99/anat/sub-99_T1w.nii.gz"}
    assert "empty" in reasons["sub-99/anat/sub-99_T1w.nii.gz"]
    case = manifest["cases"][0]
    assert len(case["sha256"]) == 64 and case["mask"].endswith("sub-00_T1w_mask.nii.gz")
    image = np.load(out / case["grids"]["128"]["image"])
    brain = np.load(out / case["grids"]["128"]["brain"])
    assert image.shape == brain.shape == (128, 128, 128) and image.dtype == np.float32
    # brain volume on the 2 mm grid agrees with the native mask's volume (resampling kept the brain)
    assert brain.sum() * 8 / 1000 == pytest.approx(case["brain_volume_cm3"], rel=0.05)
    # rerun: unchanged cases are reused, not recomputed
    mtime = (out / case["grids"]["128"]["image"]).stat().st_mtime_ns
    _, again = prepare(root, out, resolutions=[128])
    assert (out / case["grids"]["128"]["image"]).stat().st_mtime_ns == mtime
    assert again["cases"] == manifest["cases"]
    # the training loader reads it
    from cpmae.train.data import prepared_source

    src = prepared_source(out, 128, n_train=10, n_val=1)
    assert (src.n_train, src.n_val) == (1, 1)
    assert src.val(0).image.shape == (128, 128, 128)


def test_prepare_folder_without_scans_is_one_clear_error(tmp_path):
    from cpmae.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "out"), "--progress", "none"]) == 2


def test_encode_writes_token_pairs_the_prior_can_train_on(tmp_path):
    from test_train import tiny_prior_config, tiny_tokenizer_config, write_prepared

    from cpmae.cli import main
    from cpmae.train.loop import train

    data = write_prepared(tmp_path / "prepared", n=3)
    for part in ("brain", "nonbrain"):
        train(tiny_tokenizer_config(data, part=part, steps=1, checkpoint_every=0), tmp_path / part)
    out = tmp_path / "tokens"
    assert main(["encode", "--out", str(out), "--brain-tokenizer", str(tmp_path / "brain"), "--nonbrain-tokenizer",
                 str(tmp_path / "nonbrain"), "--data", str(data), "--count", "3", "--progress", "none"]) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "cpmae-tokens" and len(manifest["cases"]) == 3
    with np.load(out / manifest["cases"][0]["file"]) as z:
        brain, nonbrain = z["brain"], z["nonbrain"]
    assert brain.shape == nonbrain.shape == (8, 8, 8)  # 32³ phantom / 4 voxels per token
    assert brain.min() >= 0 and brain.max() < 512 and not np.array_equal(brain, nonbrain)
    # two shards side by side, then a pass that finds every pair written: the same dataset
    args = ["--brain-tokenizer", str(tmp_path / "brain"), "--nonbrain-tokenizer", str(tmp_path / "nonbrain"),
            "--data", str(data), "--count", "3", "--progress", "none"]
    sharded = tmp_path / "sharded"
    assert main(["encode", "--out", str(sharded), "--shard", "1/2"] + args) == 0
    assert not (sharded / "manifest.json").exists() and len(list((sharded / "tokens").glob("*.npz"))) == 1
    assert main(["encode", "--out", str(sharded), "--shard", "0/2"] + args) == 0
    again = json.loads((sharded / "manifest.json").read_text(encoding="utf-8"))
    assert [c["file"] for c in again["cases"]] == [c["file"] for c in manifest["cases"]]
    for case in manifest["cases"]:
        with np.load(out / case["file"]) as a, np.load(sharded / case["file"]) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
    # pairs of other tokenizers are never mixed in: the folder remembers which weights made them
    assert main(["encode", "--out", str(sharded), "--brain-tokenizer", str(tmp_path / "nonbrain"),
                 "--nonbrain-tokenizer", str(tmp_path / "brain")] + args[4:]) == 2
    summary = train(tiny_prior_config(out, steps=2, val_every=2), tmp_path / "prior")
    assert summary["step"] == 2 and 0 <= summary["val_token_acc"] <= 1
    # the same prior from on-the-fly pairs, with a before/after render of a remodeled held-out head
    live = tiny_prior_config(data, steps=1, val_every=1, val_render=True, val_render_steps=2,
                             brain_tokenizer=str(tmp_path / "brain"), nonbrain_tokenizer=str(tmp_path / "nonbrain"))
    train(live, tmp_path / "prior-live")
    assert (tmp_path / "prior-live" / "samples" / "step-0000001.png").stat().st_size > 1000


@pytest.mark.slow
def test_prepare_computes_the_deepbet_mask_once(tmp_path, mean_head):
    """No mask given: deepbet runs on the first prepare, its mask is cached and reused."""
    import shutil

    data = tmp_path / "scans"
    data.mkdir()
    shutil.copy(mean_head, data / "mean.nii.gz")
    _, first = prepare(data, tmp_path / "out", resolutions=[128])
    assert first["cases"][0]["mask"] == "deepbet" and not first["skipped"]
    cached = tmp_path / "out" / "cases" / "mean" / "brain_native.nii.gz"
    stamp = cached.stat().st_mtime_ns
    (tmp_path / "out" / "cases" / "mean" / "image-128.npy").unlink()  # force the grid to be rebuilt
    _, second = prepare(data, tmp_path / "out", resolutions=[128])
    assert cached.stat().st_mtime_ns == stamp and second["cases"] == first["cases"]
