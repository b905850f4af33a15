"""Clinical fields of view: the scan stops below the cerebellum, or cuts through it.

Real data: pydeface's averaged head, cropped from below. deepbet runs on each crop as it would
on a clinical scan; its mask then leaves through the bottom of the volume, which is accepted
when the cut is through the brainstem or cerebellum and refused when it is through the cerebrum.
deepbet runs three times (~4 s each on 2 free cores); each remodel at 128³ ~10 s.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cpmae.audit.methods import face_region
from cpmae.brainmask import compute_brain_mask, inferior_face, validate_mask
from cpmae.envelope import head_mask
from cpmae.errors import InputError
from cpmae.intensity import HEAD_FRACTION, intensity_scale  # head vs air: a share of the scale
from cpmae.io import read_image
from cpmae.pipeline import deidentify

# crop levels, in mm above the lowest brain (brainstem) voxel of the whole head's mask
BELOW_CEREBELLUM_MM = 4.0  # only the medulla is cut (section ~6 cm²)
THROUGH_CEREBELLUM_MM = 18.0  # both cerebellar hemispheres are cut (section ~35 cm²)
THROUGH_CEREBRUM_MM = 40.0  # the temporal lobes are cut


@pytest.fixture(scope="module")
def whole(mean_head):
    img = read_image(mean_head)
    mask = compute_brain_mask(img)
    axis, end = inferior_face(img)
    assert (axis, end) == (0, 0)  # this head is stored feet-first along the array's first axis
    rows = np.nonzero(sitk.GetArrayViewFromImage(mask).any(axis=(1, 2)))[0]
    return img, mask, int(rows[0])


def _crop(img: sitk.Image, lowest: int, mm: float) -> sitk.Image:
    return img[:, :, lowest + int(round(mm / img.GetSpacing()[2])):]


@pytest.fixture(scope="module", params=[BELOW_CEREBELLUM_MM, THROUGH_CEREBELLUM_MM], ids=["below", "through"])
def remodeled(request, whole):
    img, _, lowest = whole
    crop = _crop(img, lowest, request.param)
    mask = compute_brain_mask(crop)  # what a user's clinical scan gets
    return crop, mask, deidentify(crop, mask, resolution=128, seed=0)


def test_the_crop_really_cuts_the_brain(remodeled):
    _, mask, _ = remodeled
    bottom = sitk.GetArrayViewFromImage(mask)[0] > 0
    assert bottom.sum() * np.prod(mask.GetSpacing()[:2]) > 100  # mm² of brain on the inferior face


def test_brain_bit_identical_and_face_remodeled(remodeled):
    crop, mask, result = remodeled
    x, y = sitk.GetArrayFromImage(crop), sitk.GetArrayFromImage(result.image)
    b = sitk.GetArrayFromImage(mask) > 0
    assert y.dtype == x.dtype and y.shape == x.shape
    assert x[b].tobytes() == y[b].tobytes()
    assert 1000 < result.info["brain_volume_cm3"] < 1600
    thr = HEAD_FRACTION * intensity_scale(x)
    head = head_mask(x, thr) & ~b
    assert float(np.mean(y[head] == x[head])) < 0.05  # no copied non-brain voxels to speak of
    face = face_region(crop, mask) & head_mask(x, thr)
    assert face.sum() > 50_000
    # remodeled, not removed: a defaced face leaves ~0 % head here; the demo weights leave ~59 % on the
    # whole averaged head at 128³ and 50-53 % on these crops (measured, 2-core AMD EPYC)
    assert float(np.mean(head_mask(y, thr)[face])) > 0.4
    assert float(np.mean(np.abs(y[face].astype(np.float64) - x[face]))) > 0.05 * intensity_scale(x)


def test_cut_through_the_cerebrum_is_refused_in_one_line(whole):
    img, mask, lowest = whole
    crop = _crop(mask, lowest, THROUGH_CEREBRUM_MM)
    with pytest.raises(InputError) as err:
        validate_mask(crop, path="scan.nii.gz")
    text = str(err.value)
    assert "\n" not in text and text.startswith("scan.nii.gz: brain mask touches the border")
    assert "cerebrum" in text


def test_cut_through_the_top_of_the_head_is_refused(whole):
    _, mask, _ = whole
    rows = np.nonzero(sitk.GetArrayViewFromImage(mask).any(axis=(1, 2)))[0]
    with pytest.raises(InputError, match="touches the border"):
        validate_mask(mask[:, :, : int(rows[-1]) - 5])


def test_flipped_storage_order_is_the_same_decision(whole):
    """The inferior face is found from the direction matrix, not assumed to be the first slice."""
    _, mask, lowest = whole
    for mm, ok in ((THROUGH_CEREBELLUM_MM, True), (THROUGH_CEREBRUM_MM, False)):
        flipped = sitk.Flip(_crop(mask, lowest, mm), [False, False, True])
        assert inferior_face(flipped) == (0, -1)
        if ok:
            validate_mask(flipped)
        else:
            with pytest.raises(InputError):
                validate_mask(flipped)


def test_a_speck_on_the_inferior_face_is_a_wrong_mask(whole):
    _, mask, lowest = whole
    arr = sitk.GetArrayFromImage(_crop(mask, lowest, BELOW_CEREBELLUM_MM + 30))
    arr[0] = 0
    arr[0, 10:14, 10:14] = 1  # not connected to the brain
    speck = sitk.GetImageFromArray(arr)
    with pytest.raises(InputError, match="touches the border"):
        validate_mask(speck)
