"""The canonical model grid and the exact way back to the scanner's grid.

Networks see every head in the same frame: axis-aligned in LPS (direction = identity, so an
array ``[z, y, x]`` runs ``[S, P, L]`` and the face sits at low ``y``), a cube of
``size * spacing`` = 256 mm, centred on the head. Both directions of the mapping go through
physical space with SimpleITK's resampler, so ``to_native`` is the exact inverse of
``to_model`` up to interpolation, whatever the native direction, spacing or origin.

Centring rule (``plan_model_grid``):

* head foreground = voxels above ``FOREGROUND_FRACTION * intensity_scale(volume)`` (the same
  threshold ``cpmae.intensity`` uses to separate head from air);
* its physical extent along L-R, A-P and S-I runs over the ``SLAB_MM`` slabs whose foreground
  cross-section is at least ``MIN_SLAB_AREA_MM2`` (a nose tip is hundreds of mm², a stray bright
  voxel in the air one), so noise does not move the frame and the nose is not trimmed;
* L-R and A-P: the frame is centred on that extent (a head is < 256 mm deep and wide, so the
  nose and the back of the head both fit);
* S-I: centred on the extent when it fits; when it does not (a scan with a long neck), the
  frame keeps the vertex ``VERTEX_MARGIN_MM`` below its top and crops the neck, never the face;
* with a brain mask the vertex is taken no higher than ``BRAIN_TO_VERTEX_MAX_MM`` above the
  top of the brain, so bright artefacts above the head cannot push the face out of the frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from cpmae.intensity import FOREGROUND_FRACTION, intensity_scale

SLAB_MM = 2.0  # thickness of the slabs that measure the head's extent along each axis
MIN_SLAB_AREA_MM2 = 30.0  # a slab with less foreground cross-section than this is air + noise
VERTEX_MARGIN_MM = 8.0  # air kept above the vertex when the neck must be cropped
BRAIN_TO_VERTEX_MAX_MM = 40.0  # skull + scalp above the brain is never thicker than this
MAX_FOREGROUND_SAMPLES = 2_000_000  # subsample foreground positions: the extent does not need them all

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


@dataclass(frozen=True)
class ModelGrid:
    """A cubic model grid: ``size`` voxels of ``spacing`` mm along each axis."""

    size: int
    spacing: float

    @property
    def fov_mm(self) -> float:
        return self.size * self.spacing


GRIDS: Dict[int, ModelGrid] = {128: ModelGrid(128, 2.0), 256: ModelGrid(256, 1.0)}  # every grid, by side
# The grid a user gets without asking: the one whose shipped weights draw a face. Since 2026-12-01
# that is the 2 mm grid (demo-128, architecture 2); demo-256 is still the 2026-11 architecture-1
# bundle, which draws no face and whose outline identifies (README). `--resolution 256` keeps the
# 1 mm grid; make it the default again when 256³ weights that draw a face ship.
DEFAULT_RESOLUTION = 128
QUICK_RESOLUTION = min(GRIDS)  # the 2 mm grid: where time counts more than detail (training on CPUs,
# the audit, the Slicer panel's training default, face placement of the cohort)


def describe_grids(default: Optional[int] = None) -> str:
    """``128 (128³ at 2 mm, default) or 256 (256³ at 1 mm)``: the grids for a --help text."""
    parts = [f"{g.size} ({g.size}³ at {g.spacing:g} mm{', default' if g.size == default else ''})"
             for g in GRIDS.values()]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _interpolator(interp: str) -> int:
    try:
        return _INTERPOLATORS[interp]
    except KeyError:
        raise ValueError(f"interp must be one of {sorted(_INTERPOLATORS)}, not {interp!r}") from None


def _physical_points(img: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """Physical LPS positions (N, 3) of voxel indices given as (N, 3) ``[z, y, x]`` rows.

    Written out per axis: a (N, 3) @ (3, 3) product goes through BLAS, whose threads cost more
    than the 9 multiply-adds per point (~0.2 s of CPU for a head's foreground on 2 cores).
    """
    affine = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())[None, :]
    columns = [zyx[:, 2 - k].astype(np.float64) for k in range(3)]  # x, y, z index
    out = np.empty((len(zyx), 3))
    for row, origin in enumerate(img.GetOrigin()):
        out[:, row] = origin + columns[0] * affine[row, 0] + columns[1] * affine[row, 1] + columns[2] * affine[row, 2]
    return out


def _foreground_points(img: sitk.Image, mask: Optional[np.ndarray] = None):
    """Physical positions of the foreground voxels on a ~``SLAB_MM`` sub-grid, and the mm³ each stands for.

    The foreground threshold is the one ``cpmae.intensity`` uses to tell head from air. The
    extent is measured in ``SLAB_MM`` slabs, so sampling every voxel of a 1 mm scan would only
    cost time (seconds on 2 cores for a 256³ head).
    """
    strides = [max(1, int(SLAB_MM // s)) for s in img.GetSpacing()]  # x, y, z
    view = (slice(None, None, strides[2]), slice(None, None, strides[1]), slice(None, None, strides[0]))
    if mask is None:
        arr = sitk.GetArrayViewFromImage(img)[view]
        mask = arr > FOREGROUND_FRACTION * intensity_scale(arr)
    else:
        mask = np.asarray(mask[view]) > 0
    zyx = np.argwhere(mask) * np.asarray(strides[::-1])
    step = max(1, int(np.ceil(len(zyx) / MAX_FOREGROUND_SAMPLES)))
    zyx = zyx[::step]
    return _physical_points(img, zyx), step * float(np.prod(img.GetSpacing()) * np.prod(strides))


def _robust_extent(pts: np.ndarray, mm3_per_point: float):
    """(low, high) physical extent per axis over slabs with a real foreground cross-section."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    for axis in range(3):
        edges = np.arange(lo[axis], hi[axis] + SLAB_MM, SLAB_MM)
        if len(edges) < 2:
            continue
        counts, _ = np.histogram(pts[:, axis], bins=edges)
        solid = np.nonzero(counts * mm3_per_point / SLAB_MM >= MIN_SLAB_AREA_MM2)[0]
        if len(solid):
            lo[axis], hi[axis] = edges[solid[0]], edges[solid[-1] + 1]
    return lo, hi


def _image_corners(img: sitk.Image) -> np.ndarray:
    size = np.asarray(img.GetSize()) - 1
    corners = np.array([[k, j, i] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])])
    return _physical_points(img, corners)


def head_centre(native: sitk.Image, fov_mm: float, mask: Optional[sitk.Image] = None) -> np.ndarray:
    """Physical LPS centre of the model frame for this head (the rule in the module docstring)."""
    pts, mm3 = _foreground_points(native)
    if len(pts) < 8:  # no head above the threshold: fall back to the image's centre
        pts, mm3 = _image_corners(native), 0.0
    lo, hi = _robust_extent(pts, mm3) if mm3 else (pts.min(axis=0), pts.max(axis=0))
    if mask is not None:
        brain, _ = _foreground_points(mask, sitk.GetArrayViewFromImage(mask))  # > 0 after striding
        if len(brain):
            hi[2] = min(hi[2], brain[:, 2].max() + BRAIN_TO_VERTEX_MAX_MM)
    centre = (lo + hi) / 2.0
    if hi[2] - lo[2] > fov_mm - 2 * VERTEX_MARGIN_MM:  # too tall: keep the vertex, crop the neck
        centre[2] = hi[2] + VERTEX_MARGIN_MM - fov_mm / 2.0
    return centre


def plan_model_grid(native: sitk.Image, grid: ModelGrid, mask: Optional[sitk.Image] = None) -> sitk.Image:
    """Empty float32 reference image of the model grid, axis-aligned in LPS and centred on the head."""
    if native.GetDimension() != 3:
        raise ValueError("plan_model_grid needs a 3-D image")
    centre = head_centre(native, grid.fov_mm, mask)
    ref = sitk.Image([grid.size] * 3, sitk.sitkFloat32)
    ref.SetSpacing([float(grid.spacing)] * 3)
    ref.SetDirection(np.eye(3).ravel().tolist())
    ref.SetOrigin(snap_to_native(centre - (grid.size - 1) * grid.spacing / 2.0, native, grid).tolist())
    return ref


def snap_to_native(origin: np.ndarray, native: sitk.Image, grid: ModelGrid) -> np.ndarray:
    """``origin`` moved (< half a voxel per axis) onto a native voxel centre when the native voxels
    have the model grid's spacing along LPS axes (any flips or axis order): ``to_model`` and
    ``to_native`` are then whole-voxel shifts that copy values, instead of interpolating twice
    between neighbours. Unsnapped, on the 2 mm audit cohort, the original sent there and back with
    its brain pasted in already cost deepbet Dice 0.986-0.991 against itself (docs/training.md,
    "Seventh look"). Otherwise (oblique, or another spacing) ``origin`` is returned unchanged."""
    direction = np.asarray(native.GetDirection(), float).reshape(3, 3)
    if not np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=1e-6) \
            or not np.allclose(np.abs(direction).sum(axis=0), 1.0, atol=1e-6):
        return np.asarray(origin, float)
    lps_spacing = np.abs(direction) @ np.asarray(native.GetSpacing(), float)  # native spacing along L, P, S
    if not np.allclose(lps_spacing, grid.spacing, rtol=1e-4):
        return np.asarray(origin, float)
    index = np.round(native.TransformPhysicalPointToContinuousIndex([float(v) for v in origin]))
    return np.asarray(native.TransformContinuousIndexToPhysicalPoint(index.tolist()), float)


def _nonzero_box(arr: np.ndarray):
    """(low, high) inclusive ``[z, y, x]`` index corners of the non-zero voxels, or None when all are 0."""
    rows = [np.flatnonzero(arr.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if not len(rows[0]):
        return None
    return np.array([r[0] for r in rows]), np.array([r[-1] for r in rows])


def _sub_image(arr: np.ndarray, grid: sitk.Image, low, high) -> sitk.Image:
    """``arr[low:high+1]`` as an image placed where that block sits on ``grid``'s geometry."""
    block = np.ascontiguousarray(arr[low[0]:high[0] + 1, low[1]:high[1] + 1, low[2]:high[2] + 1])
    img = sitk.GetImageFromArray(block)
    img.SetSpacing(grid.GetSpacing())
    img.SetDirection(grid.GetDirection())
    img.SetOrigin(grid.TransformIndexToPhysicalPoint([int(i) for i in low[::-1]]))
    return img


def _resample_array(arr: np.ndarray, grid: sitk.Image, onto: sitk.Image, interp: str, default: float) -> np.ndarray:
    """``arr`` (voxels of ``grid``'s geometry) resampled onto ``onto``'s grid: float32 ``[z, y, x]``.

    With ``default`` 0 only the block of ``onto`` that can see a non-zero voxel is resampled: the
    rest of the result is 0 either way (outside the source, or interpolated from zeros), so the
    answer is the one of resampling everything (up to the rounding of voxel positions, ~1e-13 mm)
    for a fraction of the work: the brain mask, a decoded head that is 0 outside its envelope, a
    scan that covers part of the model cube.
    """
    shape = tuple(reversed(onto.GetSize()))
    box = _nonzero_box(arr) if default == 0 else None
    if default == 0 and box is None:
        return np.zeros(shape, np.float32)
    if box is None:
        low, high = np.zeros(3, int), np.array(arr.shape) - 1
    else:  # one zero voxel of margin keeps the interpolation at the block's faces what it was
        low, high = np.maximum(box[0] - 1, 0), np.minimum(box[1] + 1, np.array(arr.shape) - 1)
    src = _sub_image(arr, grid, low, high)
    # onto's voxels whose point falls within half a voxel of the block (ITK's inside test), plus one
    size = np.array(src.GetSize(), float)
    corners = [[(-0.5 if c == 0 else n - 0.5) for c, n in zip(corner, size)]
               for corner in np.ndindex(2, 2, 2)]
    idx = np.array([onto.TransformPhysicalPointToContinuousIndex(src.TransformContinuousIndexToPhysicalPoint(c))
                    for c in corners])  # x, y, z
    lo_xyz = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    hi_xyz = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, np.array(onto.GetSize()) - 1)
    out = np.full(shape, default, np.float32)
    if np.any(hi_xyz < lo_xyz):
        return out
    block = sitk.Resample(src, [int(n) for n in hi_xyz - lo_xyz + 1], sitk.Transform(), _interpolator(interp),
                          onto.TransformIndexToPhysicalPoint([int(i) for i in lo_xyz]), onto.GetSpacing(),
                          onto.GetDirection(), float(default), sitk.sitkFloat32)
    out[lo_xyz[2]:hi_xyz[2] + 1, lo_xyz[1]:hi_xyz[1] + 1, lo_xyz[0]:hi_xyz[0] + 1] = sitk.GetArrayViewFromImage(block)
    return out


def to_model(img: sitk.Image, reference: sitk.Image, interp: str = "linear", default: float = 0.0) -> np.ndarray:
    """``img`` resampled onto the model grid: float32 ``[z, y, x]``, ``default`` outside the scan."""
    return _resample_array(sitk.GetArrayViewFromImage(img), img, reference, interp, default)


def to_native(model_array: np.ndarray, reference: sitk.Image, native: sitk.Image, interp: str = "linear",
              default: float = 0.0) -> np.ndarray:
    """A model-grid array mapped back onto ``native``'s grid (float32 ``[z, y, x]``).

    The inverse of ``to_model`` through physical space; native voxels outside the model FOV get
    ``default``.
    """
    arr = np.asarray(model_array, dtype=np.float32)
    expected = tuple(reversed(reference.GetSize()))
    if arr.shape != expected:
        raise ValueError(f"model array has shape {arr.shape}, the reference grid is {expected}")
    return _resample_array(arr, reference, native, interp, default)


def _lps_coordinate(image: sitk.Image, axis: int) -> np.ndarray:
    size = image.GetSize()
    m = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in size[::-1]), indexing="ij")
    return (image.GetOrigin()[axis] + m[axis, 0] * i + m[axis, 1] * j + m[axis, 2] * k).astype(np.float32)


def anterior_coordinate(image: sitk.Image) -> np.ndarray:
    """Physical LPS y (mm) of every voxel ``[z, y, x]``; smaller is more anterior (towards the face)."""
    return _lps_coordinate(image, 1)


def superior_coordinate(image: sitk.Image) -> np.ndarray:
    """Physical LPS z (mm) of every voxel ``[z, y, x]``; larger is higher (towards the vertex)."""
    return _lps_coordinate(image, 2)


def model_fov_mask(reference: sitk.Image, native: sitk.Image) -> np.ndarray:
    """bool ``[z, y, x]`` on the native grid: True where a native voxel lies inside the model FOV."""
    ones = np.ones(tuple(reversed(reference.GetSize())), np.float32)
    return to_native(ones, reference, native, interp="nearest") > 0.5
