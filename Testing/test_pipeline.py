"""Privacy invariants of the pipeline on a phantom.

These hold for ANY weights (they are properties of the blend and the grid mapping), so they use a
randomly initialised bundle: fast, and independent of how well the demo weights are trained.
Tests with the shipped weights on the real sample head are in test_real_head.py.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cpmae.errors import InputError, OutputError, WeightsError
from cpmae.models import PriorConfig, Tokenizer, TokenizerConfig, TokenPrior
from cpmae.pipeline import deidentify, deidentify_file
from cpmae.weights import load_bundle, save_bundle
from phantoms import phantom_image

PHANTOM_LIMITS = {"min_cm3": 1}


@pytest.fixture(scope="session")
def random_bundles(tmp_path_factory):
    """Random-init bundles for both grids (same architecture as the shipped ones)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for res in (128, 256):
        out[res] = save_bundle(root / f"random-{res}", Tokenizer(TokenizerConfig(in_size=res)),
                               Tokenizer(TokenizerConfig(in_size=res)), TokenPrior(PriorConfig()), res,
                               {"training_data": "none: random initialisation for invariant tests"})
    return out


def arrays(img, mask):
    return sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(mask) > 0


def run(img, mask, bundle_path, res=128, seed=0, steps=2):
    return deidentify(img, mask, weights=bundle_path, resolution=res, steps=steps, seed=seed,
                      mask_limits=PHANTOM_LIMITS)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_brain_bit_identical_and_geometry_kept(random_bundles, dtype):
    img, mask = phantom_image(dtype=dtype, direction=(0, 1, 0, -1, 0, 0, 0, 0, 1), origin=(10.0, -20.0, 5.0))
    if dtype == np.uint8:
        img = sitk.Cast(sitk.RescaleIntensity(img, 0, 255), sitk.sitkUInt8)
    res = run(img, mask, random_bundles[128])
    x, b = arrays(img, mask)
    y = sitk.GetArrayFromImage(res.image)
    assert y.dtype == x.dtype
    assert y.shape == x.shape
    assert x[b].tobytes() == y[b].tobytes()  # bit-identical, not just close
    assert res.image.GetOrigin() == img.GetOrigin()
    assert res.image.GetSpacing() == img.GetSpacing()
    assert res.image.GetDirection() == img.GetDirection()


def test_no_original_nonbrain_voxel_survives(random_bundles, phantom):
    img, mask = phantom
    res = run(img, mask, random_bundles[128])
    x, b = arrays(img, mask)
    y = sitk.GetArrayFromImage(res.image)
    head_not_brain = (x > 100) & ~b
    assert head_not_brain.sum() > 1000
    same = np.mean(y[head_not_brain] == x[head_not_brain])
    assert same < 0.05, f"{same:.1%} of non-brain head voxels equal the input"
    assert res.info["changed_voxels"] == int(np.count_nonzero(y != x))


def test_seed_determinism_and_seed_changes_face(random_bundles, phantom):
    img, mask = phantom
    a = sitk.GetArrayFromImage(run(img, mask, random_bundles[128], seed=3).image)
    a2 = sitk.GetArrayFromImage(run(img, mask, random_bundles[128], seed=3).image)
    c = sitk.GetArrayFromImage(run(img, mask, random_bundles[128], seed=4).image)
    assert np.array_equal(a, a2)
    x, b = arrays(img, mask)
    head = (x > 100) & ~b
    assert np.mean(a[head] != c[head]) > 0.2


def test_256_grid_runs(random_bundles, phantom):
    img, mask = phantom
    res = run(img, mask, random_bundles[256], res=256, steps=1)
    x, b = arrays(img, mask)
    assert np.array_equal(sitk.GetArrayFromImage(res.image)[b], x[b])
    assert res.info["resolution"] == 256


def test_weights_for_other_resolution_refused(random_bundles, phantom):
    img, mask = phantom
    with pytest.raises(WeightsError, match="for 128³, not 256³"):
        deidentify(img, mask, weights=random_bundles[128], resolution=256, mask_limits=PHANTOM_LIMITS)


def test_tampered_weights_refused(random_bundles, tmp_path):
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(random_bundles[128], bad)
    f = bad / "prior.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_bundle(bad, 128)


def write_identifying_nifti(path, img):
    """A NIfTI whose header fields carry identifying text, as scanner exports often do."""
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    affine = np.diag([-4.0, -4.0, 4.0, 1.0])
    affine[:3, 3] = [126.0, 126.0, -126.0]
    ni = nib.Nifti1Image(arr, affine)
    ni.header["descrip"] = b"PatientName=Jane Doe;Time=153152"
    ni.header["aux_file"] = b"MRN123456"
    ni.header["intent_name"] = b"JDOE"
    ni.header["db_name"] = b"StMarysHosp"
    ni.to_filename(str(path))


def test_header_text_not_carried_over(random_bundles, phantom, tmp_path):
    img, mask = phantom
    src = tmp_path / "in.nii.gz"
    write_identifying_nifti(src, img)
    mask_path = tmp_path / "mask.nii.gz"
    read_back = sitk.ReadImage(str(src))
    m = sitk.GetImageFromArray(sitk.GetArrayFromImage(mask))
    m.CopyInformation(read_back)
    sitk.WriteImage(m, str(mask_path))
    out = tmp_path / "out.nii.gz"
    from cpmae import brainmask

    limits = (brainmask.MIN_BRAIN_CM3,)
    brainmask.MIN_BRAIN_CM3 = 1  # the phantom's brain is small
    try:
        deidentify_file(src, out, mask_path=mask_path, weights=random_bundles[128], resolution=128, steps=1)
    finally:
        brainmask.MIN_BRAIN_CM3 = limits[0]
    raw = gzip.decompress(out.read_bytes())
    for text in (b"Jane", b"153152", b"MRN123456", b"JDOE", b"StMarys"):
        assert text not in raw
    prov = (tmp_path / "out.nii.gz.provenance.json").read_text(encoding="utf-8")
    for text in ("Jane", "153152", "MRN123456", "JDOE", "StMarys"):
        assert text not in prov
    assert json.loads(prov)["seed"] == 0


def test_output_never_overwrites_input(random_bundles, phantom, tmp_path):
    img, _ = phantom
    src = tmp_path / "in.nii.gz"
    sitk.WriteImage(img, str(src))
    before = src.read_bytes()
    with pytest.raises(OutputError):
        deidentify_file(src, src, weights=random_bundles[128], resolution=128)
    assert src.read_bytes() == before


def test_cli_json_progress_and_exit_codes(random_bundles, phantom, tmp_path):
    img, mask = phantom
    src, mpath, out = tmp_path / "in.nrrd", tmp_path / "mask.nrrd", tmp_path / "out.nrrd"
    sitk.WriteImage(img, str(src))
    sitk.WriteImage(mask, str(mpath))
    env_code = ("import sys; from cpmae import brainmask; brainmask.MIN_BRAIN_CM3 = 1; "
                "from cpmae.cli import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", env_code, "deidentify", str(src), str(out), "--mask", str(mpath),
           "--weights", str(random_bundles[128]), "--resolution", "128", "--steps", "2", "--progress", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = {e["event"] for e in events}
    assert {"stage", "progress", "stage_done", "result"} <= kinds
    assert [e["step"] for e in events if e["event"] == "progress" and e["stage"] == "sample"] == [1, 2]
    assert events[-1]["event"] == "result" and events[-1]["output"] == str(out)
    assert out.is_file()
    # a second run refuses to overwrite: exit code 3, one line naming the file, no traceback
    proc2 = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc2.returncode == 3
    assert "Traceback" not in proc2.stderr and str(out) in proc2.stderr
    # a missing input: exit code 2
    proc3 = subprocess.run([sys.executable, "-m", "cpmae", "deidentify", str(tmp_path / "nope.nii.gz"),
                            str(tmp_path / "o.nii.gz")], capture_output=True, text=True, timeout=120)
    assert proc3.returncode == 2 and "Traceback" not in proc3.stderr and "nope.nii.gz" in proc3.stderr
