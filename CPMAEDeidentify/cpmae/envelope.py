"""The head as a solid, and CP-GAN's convex-hull head envelope.

CP-GAN's privacy transform replaces the head by its convex hull: the hull keeps the metric
extent of the head (a weak cue the remodeled face must respect) while smoothing away eyes,
nose and mouth. The same hull later suppresses noise that a decoder paints into the air.

CP-GAN approximates the hull by ray casting at random rotations; here it is exact and
deterministic. Every vertex of the hull of a voxel set is the first or last foreground voxel of
some x-row, so the hull is built from those row extremes only (tens of thousands of points,
not millions), and because the hull is convex each x-row meets it in a single interval, so the
volume is filled by evaluating the hull's half-spaces once per row instead of once per voxel.
For big volumes the head component is found on a 2x-pooled grid (labelling is otherwise most of
the cost); measured on the 2-core build machine: ~0.2 s at 128³, ~0.8 s at 256³.

``head_mask`` is the "head" of the face-present metrics: the largest connected foreground
component, with enclosed cavities (ventricles, sinuses cut off from the air) filled.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from cpmae.errors import InputError

HISTOGRAM_BINS = 256
OTSU_SUBSAMPLE = 2  # every 2nd voxel per axis is plenty for a 256-bin histogram
HALFSPACE_TOLERANCE = 1e-3  # voxels; hull vertices are voxel centres, keep them inside
POOL_ABOVE_VOXELS = 96 ** 3  # larger volumes find the head component on a 2x-pooled grid


def foreground_threshold(array: np.ndarray) -> float:
    """Intensity separating air from head: Otsu's threshold over the whole volume.

    Air and head tissue are the two dominant classes of any head scan, so Otsu lands near the
    middle of the skin's partial-volume ramp, whatever the scanner's intensity unit.
    """
    v = np.asarray(array)[::OTSU_SUBSAMPLE, ::OTSU_SUBSAMPLE, ::OTSU_SUBSAMPLE]
    v = v[np.isfinite(v)].astype(np.float64, copy=False)
    if v.size == 0:
        return 0.0
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=HISTOGRAM_BINS, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty in, empty out)."""
    labels, n = ndi.label(mask)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every background region that does not reach the volume's border.

    Same result as ``scipy.ndimage.binary_fill_holes`` (6-connected background) with one
    labelling pass instead of an iterated dilation: ~5x faster on a 256³ head.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    reaches_border = np.zeros(n + 1, dtype=bool)
    for axis in range(3):
        for index in (0, -1):
            reaches_border[np.take(labels, index, axis=axis)] = True
    reaches_border[0] = True  # label 0 is the mask itself
    return mask | ~reaches_border[labels]


def _foreground(array: np.ndarray, threshold: Optional[float], fast: bool = False) -> np.ndarray:
    """Largest connected component above ``threshold``; ``fast``: a pooled superset for big volumes."""
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InputError(f"expected a 3D volume, got an array of shape {arr.shape}")
    thr = foreground_threshold(arr) if threshold is None else float(threshold)
    fg = arr > thr
    if fast and fg.size > POOL_ABOVE_VOXELS:
        return _pooled_largest_component(fg)
    return largest_component(fg)


def head_mask(array: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
    """Solid head: largest connected foreground component with enclosed holes filled.

    ``threshold`` is in the array's intensity unit; by default ``foreground_threshold``.
    """
    return fill_holes(_foreground(array, threshold))


def _row_extremes(mask: np.ndarray) -> np.ndarray:
    """First and last foreground voxel of every x-row, as (z, y, x) index points."""
    has = mask.any(axis=2)
    zz, yy = np.nonzero(has)
    first = mask.argmax(axis=2)[zz, yy]
    last = mask.shape[2] - 1 - mask[:, :, ::-1].argmax(axis=2)[zz, yy]
    lo = np.stack([zz, yy, first], axis=1)
    hi = np.stack([zz, yy, last], axis=1)
    return np.concatenate([lo, hi]).astype(np.float64)  # one-voxel rows repeat a point: qhull copes


def hull_of_mask(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull (in index space) of the voxel centres of a boolean mask.

    Convexity is preserved by the index-to-physical affine map, so the index-space hull is the
    physical hull whatever the spacing. Degenerate masks (a plane, a line) fall back to the
    mask's bounding box, which is what a hull of such a thin set amounts to on a voxel grid.
    """
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    points = _row_extremes(mask)
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        lo = points.min(axis=0).astype(int)
        hi = points.max(axis=0).astype(int) + 1
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        return out
    _fill_slices(out, hull)
    return out


def _fill_slices(out: np.ndarray, hull: ConvexHull) -> None:
    """Set out[z, y, x] inside the hull, one z-slice at a time.

    A slice of a convex polytope is the convex polygon bounded by the facets that cross the
    slice, so each slice only tests the ~100-200 facets whose z-range covers it, and each x-row
    meets the polygon in one interval [lower, upper]. With qhull's a.p + b <= 0 inside, a facet
    with a_x != 0 bounds x on a row by a linear function of y, (tol - b - a_z z - a_y y) / a_x.
    """
    nx = out.shape[2]
    a_z, a_y, a_x, off = hull.equations.T  # outward unit normals over (z, y, x)
    corner_z = hull.points[hull.simplices, 0]
    f_zmin, f_zmax = corner_z.min(axis=1), corner_z.max(axis=1)
    tol = HALFSPACE_TOLERANCE
    kinds = {"upper": a_x > 1e-12, "lower": a_x < -1e-12, "flat": np.abs(a_x) <= 1e-12}
    y_lo, y_hi = int(hull.min_bound[1]), int(hull.max_bound[1])
    ys = np.arange(y_lo, y_hi + 1, dtype=np.float64)[:, None]
    x_index = np.arange(nx, dtype=np.float64)
    for z in range(int(hull.min_bound[0]), int(hull.max_bound[0]) + 1):
        crossing = (f_zmin <= z + tol) & (f_zmax >= z - tol)
        bounds = {}
        for kind in ("upper", "lower"):
            f = crossing & kinds[kind]
            slope = -a_y[f] / a_x[f]
            intercept = (tol - off[f] - a_z[f] * z) / a_x[f]
            bounds[kind] = intercept[None, :] + ys * slope[None, :]
        upper = bounds["upper"].min(axis=1) if bounds["upper"].shape[1] else np.full(len(ys), np.inf)
        lower = bounds["lower"].max(axis=1) if bounds["lower"].shape[1] else np.full(len(ys), -np.inf)
        f = crossing & kinds["flat"]
        if f.any():  # planes parallel to x: a row is either wholly outside or unconstrained
            outside = ((off[f] + a_z[f] * z)[None, :] + ys * a_y[f][None, :] > tol).any(axis=1)
            upper = np.where(outside, -np.inf, upper)
        out[z, y_lo:y_hi + 1, :] = (x_index >= lower[:, None]) & (x_index <= upper[:, None])


def _pooled_largest_component(fg: np.ndarray) -> np.ndarray:
    """Voxels of ``fg`` inside the largest component of its 2x-pooled (any) grid.

    A superset of the exact largest component (it may keep specks within a voxel or two of the
    head), found by labelling an 8x smaller grid: the hull does not notice the difference,
    the clock does (labelling a 256³ mask is most of the envelope's time).
    """
    even = [n + n % 2 for n in fg.shape]
    padded = np.zeros(even, dtype=bool)
    padded[:fg.shape[0], :fg.shape[1], :fg.shape[2]] = fg
    pooled = padded[0::2] | padded[1::2]
    pooled = pooled[:, 0::2] | pooled[:, 1::2]
    pooled = pooled[:, :, 0::2] | pooled[:, :, 1::2]
    keep = largest_component(pooled)
    keep = keep.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    return fg & keep[:fg.shape[0], :fg.shape[1], :fg.shape[2]]


def head_envelope(array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  threshold: Optional[float] = None) -> np.ndarray:
    """CP-GAN's head envelope: the filled convex hull of the head foreground, bool [z, y, x].

    ``spacing`` (x, y, z in mm, SimpleITK order) is accepted for API symmetry with the rest of
    the engine; the hull of a voxel set does not depend on it because scaling preserves
    convexity. ``threshold`` as in ``head_mask``.
    """
    if len(tuple(spacing)) != 3 or min(float(s) for s in spacing) <= 0:
        raise InputError(f"spacing must be three positive numbers, got {tuple(spacing)}")
    return hull_of_mask(_foreground(array, threshold, fast=True))
