"""Property-based hardening of the two steps that carry the privacy guarantee.

* blend: for ANY mask, ANY dtype and ANY decoder output (NaN, inf, huge values included), brain
  voxels are bit-identical to the input, the dtype and geometry are the input's, no metadata is
  carried, and every non-brain voxel is a finite value inside the input's range.
* geometry: for ANY oblique native grid, a function that is linear in physical (LPS) position
  survives native -> model -> native exactly (linear interpolation reproduces linear functions),
  so an orientation, origin or spacing mistake anywhere in the mapping cannot pass.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cpmae.blend import blend
from cpmae.geometry import GRIDS, plan_model_grid, to_model, to_native

DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64]


@st.composite
def blend_cases(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6))
    native = draw(hnp.arrays(dtype, shape))  # floats include NaN/inf/-0.0/subnormals
    decoded = draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))
    brain = draw(hnp.arrays(np.bool_, shape))
    spacing = draw(st.tuples(*[st.floats(0.1, 5.0)] * 3))
    origin = draw(st.tuples(*[st.floats(-500, 500)] * 3))
    return native, decoded, brain, spacing, origin


@settings(max_examples=300, deadline=None)
@given(blend_cases())
def test_blend_keeps_brain_bits_dtype_and_geometry_for_any_mask_and_dtype(case):
    native, decoded, brain, spacing, origin = case
    img = sitk.GetImageFromArray(native)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    img.SetMetaData("descrip", "TE=2.5;Time=153152.362;phase=1")
    mask = sitk.GetImageFromArray(brain.astype(np.uint8))
    mask.CopyInformation(img)

    out = blend(img, decoded, mask)
    y = sitk.GetArrayFromImage(out)
    assert y.dtype == native.dtype and y.shape == native.shape
    assert y[brain].tobytes() == native[brain].tobytes()  # bit-identical, NaN payloads and -0.0 too
    assert out.GetSpacing() == img.GetSpacing() and out.GetOrigin() == img.GetOrigin()
    assert out.GetDirection() == img.GetDirection()
    assert out.GetMetaDataKeys() == ()
    rest = y[~brain].astype(np.float64)
    assert np.all(np.isfinite(rest))  # no NaN/inf is invented outside the brain
    finite = native[np.isfinite(native)] if native.dtype.kind == "f" else native
    if rest.size and finite.size:
        assert rest.min() >= float(finite.min()) and rest.max() <= float(finite.max())


def rotation(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def index_to_point(img: sitk.Image, idx: np.ndarray) -> np.ndarray:
    """LPS position of continuous indices ``[..., (i, j, k)]``."""
    m = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    return np.asarray(idx, np.float64) @ m.T + np.asarray(img.GetOrigin())


def point_to_index(img: sitk.Image, pts: np.ndarray) -> np.ndarray:
    m = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    return (pts - np.asarray(img.GetOrigin())) @ np.linalg.inv(m).T


def all_indices(img: sitk.Image) -> np.ndarray:
    """``[z, y, x, (i, j, k)]`` index of every voxel."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in reversed(img.GetSize())], indexing="ij")
    return np.stack([i, j, k], -1)


native_grids = st.fixed_dictionaries({
    "q": st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.2),
    "size": st.tuples(*[st.integers(12, 24)] * 3),
    "spacing": st.tuples(*[st.floats(6.0, 12.0)] * 3),
    "origin": st.tuples(*[st.floats(-150, 50)] * 3),
    "gradient": st.tuples(*[st.floats(-2.0, 2.0)] * 3),
    "offset": st.floats(-100, 100),
})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(native_grids)
def test_linear_function_of_position_survives_native_model_native(g):
    native = sitk.Image(list(g["size"]), sitk.sitkFloat32)
    native.SetSpacing(g["spacing"])
    native.SetOrigin(g["origin"])
    native.SetDirection(rotation(g["q"]).ravel().tolist())
    grad, offset = np.asarray(g["gradient"]), g["offset"]
    native_idx = all_indices(native)
    f_native = (index_to_point(native, native_idx) @ grad + offset).astype(np.float32)
    img = sitk.GetImageFromArray(f_native)
    img.CopyInformation(native)
    size = np.asarray(g["size"])

    def inside_scan(model_idx):  # model voxels whose position is strictly inside the native scan
        ci = point_to_index(img, index_to_point(ref, model_idx))
        return np.all((ci > 1e-3) & (ci < size - 1 - 1e-3), axis=-1)

    ref = plan_model_grid(img, GRIDS[128])
    model = to_model(img, ref, "linear")
    tol = 1e-4 * (np.abs(grad).sum() * 600 + abs(offset) + 1)
    rng = np.random.default_rng(0)
    sample = rng.integers(0, 128, size=(20000, 3))
    inside = inside_scan(sample)
    assert inside.sum() > 50  # the scan overlaps the frame: the test checks something
    s = sample[inside]
    np.testing.assert_allclose(model[s[:, 2], s[:, 1], s[:, 0]], index_to_point(ref, s) @ grad + offset, atol=tol)

    back = to_native(model, ref, img, "linear")
    # native voxels whose 8 model-grid neighbours all lie inside the scan come back exactly
    lo = np.floor(point_to_index(ref, index_to_point(native, native_idx))).astype(int)
    ok = np.all((lo >= 0) & (lo + 1 < 128), axis=-1)
    for corner in np.ndindex(2, 2, 2):
        ok &= inside_scan(lo + np.asarray(corner))
    assert ok.sum() > 20
    np.testing.assert_allclose(back[ok], f_native[ok], atol=tol)
