"""What the architecture-2 prior is conditioned on besides the brain tokens, per token cell.

Computed the same way in training (``cpmae.train``) and at de-identification (``cpmae.pipeline``),
hence one module. Channel 0 is the brain-mask occupancy of each cell (0…1): it tells the prior
exactly where the pasted-back brain will be, which brain tokens say only coarsely. Face-shape
maps (a face surface drawn from a shape model, placed by the brain) follow when the prior was
trained with ``shape_channels`` > 0.
"""
from __future__ import annotations

import numpy as np

# Training shape maps: 1 = the placed MakeHuman vertices, vertex density in channel 0; 2 = those
# moved onto the subject's skin (``skin_points``), channel 0 binary; 3 = the mesh's rasterised
# outer shell (``cohort.outer_shell``: no mouth bag or eye sockets) instead of its vertices;
# 4 = only the shell's face, in front of the brain; 5 = channel 1 at voxel resolution (the share of
# each cell behind the surface), on cohort-3 subjects, whose skin is carried to the face placed as
# at de-identification; 6 = the same maps, with faces placed ``cohort.FACE_MARGIN_MM`` further
# forward, on cohort-4 subjects (that placement, the face warp spread along each displacement's
# path). Token pairs of different versions must not be mixed (``cpmae encode``, ``cpmae train
# prior``); a version-5 prior reads version-6 maps (same channels and meaning, faces 4 mm forward).
SHAPE_MAPS_VERSION = 6


def cell_fractions(mask: np.ndarray, factor: int) -> np.ndarray:
    """Fraction of each token cell (factor³ voxels) covered by ``mask`` [z,y,x] -> [T,T,T] float32."""
    t = [s // factor for s in mask.shape]
    m = np.asarray(mask, dtype=np.float32)[: t[0] * factor, : t[1] * factor, : t[2] * factor]
    return m.reshape(t[0], factor, t[1], factor, t[2], factor).mean(axis=(1, 3, 5))


def brain_maps(brain: np.ndarray, factor: int) -> np.ndarray:
    """[1,T,T,T] float32: the brain condition channel(s) of a model-grid brain mask."""
    return cell_fractions(brain > 0, factor)[None].astype(np.float32)


def shape_maps(points_zyx: np.ndarray, token_shape, factor: int) -> np.ndarray:
    """[2,T,T,T] float32 face-shape maps from surface points given as model-grid voxel indices
    (z, y, x; the face looks towards low y, ``cpmae.geometry``):
    0: 1 in token cells the surface crosses, else 0: where the skin runs. Binary, because a
       mesh's vertex density and a voxel surface's differ ~10× (mean nonzero 0.04 vs 0.36 as a
       share of the fullest cell), and training maps come from voxels, inference maps from a mesh;
    1: the share of each cell behind the surface, at voxel resolution: in each (z, x) voxel
       column the points cross, the voxels at or posterior to its most anterior point (head),
       none in front of it (air); 0 in columns they do not cross. A cell the skin runs through
       gets a fraction that says where in the cell it runs: one bit per 8 mm cell (version ≤ 4)
       could not say where a nose or lips end.
    """
    t = tuple(int(s) for s in token_shape)
    maps = np.zeros((2,) + t, np.float32)
    vox = np.rint(np.asarray(points_zyx, np.float64)).astype(np.int64)
    size = np.array(t) * factor
    vox = vox[np.all((vox >= 0) & (vox < size), axis=1)]
    if not len(vox):
        return maps
    cells = vox // factor
    maps[0][cells[:, 0], cells[:, 1], cells[:, 2]] = 1.0
    front = np.full((size[0], size[2]), size[1], np.int64)
    np.minimum.at(front, (vox[:, 0], vox[:, 2]), vox[:, 1])
    ys = np.arange(size[1])[None, :, None]
    maps[1] = cell_fractions(ys >= front[:, None, :], factor)
    return maps


def grid_reference(shape, spacing_mm: float):
    """An axis-aligned LPS reference of the model grid. Shape maps only depend on where the face
    lies relative to the brain, so any origin gives the same maps (training uses this one)."""
    import SimpleITK as sitk

    ref = sitk.Image([int(s) for s in shape[::-1]], sitk.sitkUInt8)
    ref.SetSpacing([float(spacing_mm)] * 3)
    return ref


def face_shape_maps(face_seed: int, brain: np.ndarray, reference, factor: int, rotation=None) -> np.ndarray:
    """[2,T,T,T] shape maps of MakeHuman face ``face_seed`` (``cpmae.faceshape``, CC0) placed in
    front of this brain by its position and size (``cpmae.cohort.random_face_voxels``): the same
    rule in training (the subject's own face seed) and at de-identification (a seed drawn from the
    run's seed), so the patient's outline is never an input. ``rotation``: the face turned with
    the brain (``cpmae.conform.brain_rotation``; de-identification only)."""
    from cpmae import cohort

    points = cohort.random_face_voxels(int(face_seed), brain, reference, rotation)
    t = tuple(s // factor for s in brain.shape)
    return shape_maps(points, t, factor)


def skin_points(points_zyx: np.ndarray, image: np.ndarray, reach_vox: float = 1.5) -> np.ndarray:
    """[V,3] the subject's own skin where a placed face surface says the face is: training only.

    The generated cohort carries each subject's skin only part of the way onto its MakeHuman face
    (the warp is zero near the brain and Jacobian-limited): with cohort-2, 4–7 voxels (8–13 mm at
    128³) on average between the two surfaces, and a prior trained on maps that do not say where the
    skin is learned to ignore them; with cohort-3 (faces placed as at de-identification), 2.1–5.2
    mm (held-out subjects 0–5 of seed 11). So training maps show the skin the decoder must draw:
    each face point moved to its nearest skin-surface voxel (``cohort.head_mask``), widened to the
    skin voxels within ``reach_vox`` of those, which keeps the face's coverage instead of a sparse
    point cloud. At de-identification the placed MakeHuman surface itself is the map (there is no
    skin to follow).
    """
    from scipy import ndimage

    from cpmae import cohort

    head = cohort.head_mask(image)
    surface = head & ~ndimage.binary_erosion(head)
    p = np.rint(np.asarray(points_zyx, np.float64)).astype(np.int64)
    p = p[np.all((p >= 0) & (p < np.array(image.shape)), axis=1)]  # a neck below the grid: not skin here
    if not surface.any() or not len(p):
        return np.zeros((0, 3), np.float64)
    _, nearest = ndimage.distance_transform_edt(~surface, return_indices=True)
    hit = np.zeros(image.shape, bool)
    hit[tuple(nearest[:, p[:, 0], p[:, 1], p[:, 2]])] = True
    near = ndimage.distance_transform_edt(~hit) <= reach_vox
    return np.argwhere(surface & near).astype(np.float64)


def training_shape_maps(face_seed: int, brain: np.ndarray, image: np.ndarray, reference, factor: int) -> np.ndarray:
    """[2,T,T,T] shape maps of a generated subject for training: its MakeHuman face placed as in
    ``face_shape_maps``, then moved onto its own skin (``skin_points``)."""
    from cpmae import cohort

    points = skin_points(cohort.random_face_voxels(int(face_seed), brain, reference), image)
    return shape_maps(points, tuple(s // factor for s in brain.shape), factor)


def face_seed_for(seed: int) -> int:
    """The MakeHuman face drawn for de-identification seed ``seed`` (deterministic, spread out)."""
    return int(np.random.default_rng([int(seed), 0xFACE]).integers(0, 2 ** 31 - 1))
