"""Audit methods, utility metrics and scan discovery on the head phantom (milliseconds each)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cpmae.audit import dataset, methods, utility
from cpmae.errors import InputError
from phantoms import phantom_image


def _arrays(img, mask):
    return sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(mask) > 0


def test_registry_has_the_papers_methods_and_accepts_new_ones():
    for name in ("ORIGINAL", "BLACK", "BLURRED", "QUICKSHEAR", "FACE_BLUR", "SKULL_STRIP", "CPMAE"):
        assert name in methods.METHODS
    assert [m.name for m in methods.resolve_methods(["face-blur", "original"])] == ["FACE_BLUR", "ORIGINAL"]
    with pytest.raises(InputError, match="unknown method"):
        methods.resolve_methods(["deface9000"])
    try:
        methods.register_method("mine", methods.skull_strip, description="test")
        assert methods.resolve_methods(["MINE"])[0].volume is methods.skull_strip
    finally:
        methods.METHODS.pop("MINE", None)


@pytest.mark.parametrize("name", ["QUICKSHEAR", "FACE_BLUR", "SKULL_STRIP"])
def test_removal_methods_keep_brain_grid_and_dtype(phantom, name):
    img, mask = phantom
    out = methods.METHODS[name].volume(img, mask, 0)
    assert out.GetPixelID() == img.GetPixelID()
    assert utility.same_grid(img, out)
    a, b = _arrays(img, mask)
    assert np.array_equal(sitk.GetArrayFromImage(out)[b], a[b])


def test_quickshear_removes_the_face(phantom):
    img, mask = phantom
    ref = utility.reference_for(img, mask)
    assert ref.face.sum() > 500  # the phantom's nose and chin are in the face region
    out = methods.METHODS["QUICKSHEAR"].volume(img, mask, 0)
    arr = sitk.GetArrayFromImage(out)
    assert np.count_nonzero(arr[ref.face]) < 0.2 * ref.face.sum()  # face-region voxels zeroed
    m = utility.utility_metrics(ref, out)
    assert m["face_present"] < 0.2
    assert m["brain_identical"] and m["brain_max_abs_diff"] == 0


def test_quickshear_follows_orientation():
    """A scan stored with flipped axes is defaced on the same physical side (the face)."""
    img, mask = phantom_image(direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(img)[:, ::-1, ::-1].copy())
    fmask = sitk.GetImageFromArray(sitk.GetArrayFromImage(mask)[:, ::-1, ::-1].copy())
    for im in (flipped, fmask):
        im.CopyInformation(img)
    ref = utility.reference_for(flipped, fmask)
    assert ref.face.sum() > 500
    out = methods.METHODS["QUICKSHEAR"].volume(flipped, fmask, 0)
    assert utility.utility_metrics(ref, out)["face_present"] < 0.2


def test_face_blur_smooths_face_but_keeps_it(phantom):
    img, mask = phantom
    ref = utility.reference_for(img, mask)
    out = methods.METHODS["FACE_BLUR"].volume(img, mask, 0)
    a, o = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(out)
    changed = a != o
    assert changed[ref.face].mean() > 0.5
    behind = methods.anterior_coordinate(img) > methods.anterior_coordinate(img)[ref.brain].min()
    assert not changed[behind].any()  # nothing behind the front of the brain moves
    assert utility.utility_metrics(ref, out)["face_present"] > 0.8


def test_skull_strip_keeps_only_brain(phantom):
    img, mask = phantom
    out = sitk.GetArrayFromImage(methods.METHODS["SKULL_STRIP"].volume(img, mask, 0))
    b = sitk.GetArrayFromImage(mask) > 0
    assert not out[~b].any()
    m = utility.utility_metrics(utility.reference_for(img, mask), methods.skull_strip(img, mask, 0))
    assert m["face_present"] == 0.0 and m["envelope_dice"] < 0.8


def test_render_filters_black_is_constant_blur_is_smooth():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(2))
    assert np.array_equal(methods.black_rendering(a), methods.black_rendering(b))
    blurred = methods.blur_rendering(a)
    assert blurred.dtype == np.uint8 and blurred.shape == a.shape
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < 0.5 * np.abs(np.diff(a.astype(int), axis=1)).mean()


def test_brain_change_is_detected(phantom):
    img, mask = phantom
    arr = sitk.GetArrayFromImage(img)
    b = sitk.GetArrayFromImage(mask) > 0
    touched = arr.copy()
    idx = tuple(np.argwhere(b)[len(np.argwhere(b)) // 2])
    touched[idx] += 7
    res = utility.brain_preservation(arr, touched, b)
    assert res == {"brain_identical": False, "brain_max_abs_diff": 7.0}
    assert utility.brain_preservation(arr, arr.copy(), b)["brain_identical"]
    # same values in another dtype are not bit-identical
    assert not utility.brain_preservation(arr, arr.astype(np.float32), b)["brain_identical"]


def test_gmm_tissue_labels_order_classes_by_intensity():
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, size=(20, 20, 20))
    means = np.array([0, 100.0, 250.0, 400.0])
    arr = means[truth] + rng.normal(0, 12, truth.shape)
    labels = utility.gmm_tissue_labels(arr, np.ones(truth.shape, bool))
    assert (labels == truth).mean() > 0.97
    assert utility.dice(labels == 2, truth == 2) > 0.95
    assert not utility.gmm_tissue_labels(arr, np.zeros(truth.shape, bool)).any()


def test_other_grid_is_an_error_not_a_number(phantom):
    img, mask = phantom
    ref = utility.reference_for(img, mask)
    other = sitk.Image(img)
    other.SetOrigin((1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="different voxel grid"):
        utility.utility_metrics(ref, other)


def _write(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def test_discover_bids_and_flat(tmp_path, phantom):
    img, mask = phantom
    bids = tmp_path / "bids"
    for s in ("sub-001", "sub-002"):
        _write(img, bids / s / "anat" / f"{s}_T1w.nii.gz")
    _write(mask, bids / "derivatives" / "brainmask" / "sub-002" / "anat" / "sub-002_desc-brain_mask.nii.gz")
    scans = dataset.discover_scans(bids)
    assert [s.id for s in scans] == ["sub-001", "sub-002"]
    assert scans[0].mask is None and scans[1].mask.name == "sub-002_desc-brain_mask.nii.gz"

    flat = tmp_path / "flat"
    _write(img, flat / "a.nii.gz")
    _write(mask, flat / "a_mask.nii.gz")
    _write(img, flat / "b.nrrd")
    (flat / "notes.txt").write_text("not a scan", encoding="utf-8")
    scans = dataset.discover_scans(flat)
    assert [(s.id, s.mask and s.mask.name) for s in scans] == [("a", "a_mask.nii.gz"), ("b", None)]


def test_discover_bad_folders(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        dataset.discover_scans(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no head scans"):
        dataset.discover_scans(tmp_path / "empty")
    (tmp_path / "f.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="not a folder"):
        dataset.discover_scans(tmp_path / "f.txt")


def test_cpmae_method_keeps_brain_bit_identical(phantom, tmp_path):
    """The audit's CPMAE step (any weights, here random) leaves every brain voxel unchanged."""
    import torch

    from cpmae.models import PriorConfig, Tokenizer, TokenizerConfig, TokenPrior
    from cpmae.weights import save_bundle

    torch.manual_seed(0)
    weights = save_bundle(tmp_path / "random-128", Tokenizer(TokenizerConfig(in_size=128)),
                          Tokenizer(TokenizerConfig(in_size=128)), TokenPrior(PriorConfig()), 128,
                          {"training_data": "none: random initialisation for invariant tests"})
    fn = methods.make_cpmae(str(weights), resolution=128, steps=1, device="cpu", mask_limits={"min_cm3": 1})
    cpmae = methods.resolve_methods(["CPMAE"], cpmae=fn)[0]
    img, mask = phantom
    ref = utility.reference_for(img, mask)
    out = cpmae.volume(img, mask, 0)
    m = utility.utility_metrics(ref, out)
    assert m["brain_identical"] and m["brain_max_abs_diff"] == 0.0
    assert (sitk.GetArrayFromImage(out) != ref.array)[~ref.brain].any()  # it did change the rest
