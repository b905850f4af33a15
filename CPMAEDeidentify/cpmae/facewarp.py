"""Carry a source head's skin onto a random face: the velocity field behind every cohort face.

A smooth warp of a real face is still that person (the face-shape prototype's warped subjects
were only 0.26-0.29 apart to a face recognizer). So instead of adding noise to the source face,
the *whole* skin surface of the face region is carried onto a random MakeHuman face
(``cpmae.faceshape``):

1. once per source head and grid (``fit_head``, cached): the skin points of the face region, and a
   rigid + scale fit (ICP, started at the nose tip) of MakeHuman's base head to them, which
   decides where and how large a face sits on this head;
2. per subject (``face_velocity``): the random head, normalised to the base head's pose and size,
   is placed with that fit; a coarse-to-fine non-rigid ICP finds, for every source skin point,
   where it goes on the random face (nearest points both ways, smoothed at 12 -> 2 mm); the
   displacements are spread into the volume by normalised convolution on the field's node
   grid (fine near the skin, broad into the air in front and the tissue behind it), faded out
   away from the face and multiplied by the caller's brain weight, which is exactly zero near
   the brain.

The result is a stationary velocity field; ``cpmae.cohort`` integrates it by scaling and squaring
(no folding, exact zero where the velocity is zero) together with the rest of the subject's warp.
Tissue under the skin (fat, muscle, bone, cartilage, eyes, airway) follows smoothly, fading over a
few centimetres of depth.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
import torch

from cpmae import faceshape

FACE_FRONT_MM = 30.0  # skin points this far in front of the brain centroid form the face region ...
FACE_BELOW_MM = 120.0  # ... down to this far below it (chin, upper neck)
ICP_ITERATIONS = 30
ICP_KEEP = 0.85  # fraction of closest pairs kept by the trimmed ICP
NONRIGID_SIGMAS_MM = (12.0, 8.0, 5.0, 3.0, 2.0)  # coarse-to-fine smoothing of the surface match
OUTLIER_MM = 15.0  # residuals beyond this count less (robust weight 1 / (1 + (d / OUTLIER_MM)²))
FINE_SIGMA_MM = 2.0  # spread of the displacement next to the skin
BROAD_SIGMA_MM = 10.0  # spread into the air in front and the tissue behind
PATH_SAMPLES = 4  # points per skin point's path where its displacement is spread (start and end included)
MAX_POINTS = 30000  # skin points used per source (a 256³ head is subsampled to this)


@dataclass(frozen=True)
class HeadFit:
    """Per source head and grid: face skin points and where MakeHuman's base head sits on them."""

    points: np.ndarray  # [P, 3] face-region skin points, physical LPS mm
    scale: float  # base head (faceshape mm) -> source: p = scale * rotation @ q + translation
    rotation: np.ndarray
    translation: np.ndarray
    residual_mm: float  # median distance of the fitted base face to the skin
    brain_centre: np.ndarray  # physical LPS mm

    def place(self, surface: faceshape.FaceSurface) -> np.ndarray:
        """Vertices of ``surface`` (normalised to the base head) in this head's physical frame."""
        return surface.vertices @ (self.scale * self.rotation).T + self.translation


def voxel_to_physical(reference, zyx: np.ndarray) -> np.ndarray:
    """Physical LPS points of voxel indices given as (z, y, x) rows."""
    spacing = np.asarray(reference.GetSpacing())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    return np.asarray(reference.GetOrigin()) + (zyx[:, ::-1] * spacing) @ direction.T


def physical_to_voxel(reference, points: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (z, y, x) of physical LPS points."""
    spacing = np.asarray(reference.GetSpacing())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    return (((points - np.asarray(reference.GetOrigin())) @ direction) / spacing)[:, ::-1]


def _base_face_vertices(base: np.ndarray, is_eye: np.ndarray) -> np.ndarray:
    """Indices of the base head's face (nose tip to ~6 cm behind it, brow to chin), eyes excluded."""
    nose = _nose_tip(base[~is_eye])
    rel = base - nose
    return np.nonzero(~is_eye & (rel[:, 1] < 60.0) & (rel[:, 2] > -95.0) & (rel[:, 2] < 75.0))[0]


def _nose_tip(points: np.ndarray) -> np.ndarray:
    """Most anterior point (smallest y) near the midline in the lower half of the points' height."""
    centre_x = np.median(points[:, 0])
    zlo, zhi = np.percentile(points[:, 2], [5, 70])
    sel = (np.abs(points[:, 0] - centre_x) < 20.0) & (points[:, 2] > zlo) & (points[:, 2] < zhi)
    cand = points[sel] if sel.any() else points
    return cand[np.argmin(cand[:, 1])]


def face_points(head: np.ndarray, brain: np.ndarray, reference) -> Tuple[np.ndarray, np.ndarray]:
    """(skin points of the face region, brain centroid), physical LPS mm, from boolean [z, y, x] masks."""
    skin = head & ~ndimage.binary_erosion(head)
    zyx = np.argwhere(skin).astype(np.float64)
    pts = voxel_to_physical(reference, zyx)
    centre = voxel_to_physical(reference, np.argwhere(brain).mean(axis=0)[None].astype(np.float64))[0]
    rel = pts - centre
    sel = (rel[:, 1] < -FACE_FRONT_MM) & (rel[:, 2] > -FACE_BELOW_MM)
    pts = pts[sel]
    if len(pts) > MAX_POINTS:  # evenly thinned, deterministic
        pts = pts[np.linspace(0, len(pts) - 1, MAX_POINTS).astype(np.int64)]
    return pts, centre


def fit_head(head: np.ndarray, brain: np.ndarray, reference) -> HeadFit:
    """Rigid + scale ICP of MakeHuman's base face to the head's face skin (nose tips first)."""
    pts, centre = face_points(head, brain, reference)
    base = faceshape.base_surface()
    q = base.vertices[_base_face_vertices(base.vertices, base.is_eye)]
    tree = cKDTree(pts)
    nose_src, nose_mh = _nose_tip(pts), _nose_tip(q)
    # initial scale: width of the face at the nose level, skin vs base head
    band = lambda p, z: p[np.abs(p[:, 2] - z) < 5.0, 0]  # noqa: E731
    ws, wm = np.ptp(band(pts, nose_src[2])), np.ptp(band(q, nose_mh[2]))
    s, rot = (ws / wm if wm > 0 and ws > 0 else 1.0), np.eye(3)
    t = nose_src - s * nose_mh
    for _ in range(ICP_ITERATIONS):
        moved = q @ (s * rot).T + t
        d, j = tree.query(moved)
        keep = d <= np.quantile(d, ICP_KEEP)
        s, rot, t = faceshape.similarity(q[keep], pts[j[keep]])
    d, _ = tree.query(q @ (s * rot).T + t)
    return HeadFit(pts, float(s), rot, t, float(np.median(d)), centre)


# ---------------------------------------------------------------------------------------------
# point sets -> smooth fields (normalised convolution)


def _splat(coords: np.ndarray, values: np.ndarray, weights: np.ndarray, shape) -> np.ndarray:
    """Trilinear splat of weighted values [P, C] at lattice coords [P, 3]: [C + 1, *shape] (sums, weight last)."""
    base = np.floor(coords).astype(np.int64)
    frac = coords - base
    n_cells = int(np.prod(shape))
    flat, wts = [], []
    for corner in range(8):
        off = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        idx = base + off
        ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        flat.append(np.ravel_multi_index(tuple(idx[ok].T), shape))
        wts.append((np.prod(np.where(off, frac, 1.0 - frac), axis=1) * weights)[ok])
        wts[-1] = (wts[-1], values[ok])
    flat_all = np.concatenate(flat)
    w_all = np.concatenate([w for w, _ in wts])
    v_all = np.concatenate([v for _, v in wts])
    out = np.empty((values.shape[1] + 1, n_cells), np.float32)
    for c in range(values.shape[1]):
        out[c] = np.bincount(flat_all, w_all * v_all[:, c], n_cells)
    out[-1] = np.bincount(flat_all, w_all, n_cells)
    return out.reshape((-1,) + tuple(shape))


@functools.lru_cache(maxsize=64)
def _gauss_matrix(length: int, sigma: float) -> torch.Tensor:
    """[length, length] Gaussian smoothing matrix (truncated at 3 sigma, zero outside the lattice)."""
    x = torch.arange(length, dtype=torch.float32)
    k = torch.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)
    k[(x[:, None] - x[None, :]).abs() > 3.0 * sigma] = 0.0
    norm = float(torch.exp(-0.5 * (torch.arange(-int(3 * sigma), int(3 * sigma) + 1) / sigma) ** 2).sum())
    return k / norm


def _gauss(volumes: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter (zero outside) of [C, a, b, c] along the three lattice axes, as three matmuls."""
    v = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))
    c, n0, n1, n2 = v.shape
    v = torch.matmul(v.reshape(c * n0 * n1, n2), _gauss_matrix(n2, sigma))  # symmetric matrices
    v = torch.matmul(_gauss_matrix(n1, sigma), v.reshape(c * n0, n1, n2))
    v = torch.matmul(_gauss_matrix(n0, sigma), v.reshape(c, n0, n1 * n2))
    return v.reshape(c, n0, n1, n2).numpy()


def _smooth(splat: np.ndarray, sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """Normalised convolution of a splat [C + 1, ...]: (smoothed values [C, ...], smoothed weight)."""
    s = _gauss(splat, sigma)
    return s[:-1] / np.maximum(s[-1], 1e-12), s[-1]


class _Lattice:
    """A box-shaped lattice of spacing ``step_mm`` over some points (LPS-axis aligned, like the model grid)."""

    def __init__(self, points: np.ndarray, step_mm: float, margin_mm: float) -> None:
        self.lo = points.min(axis=0) - margin_mm
        self.step = float(step_mm)
        self.shape = tuple(int(v) for v in np.ceil((points.max(axis=0) + margin_mm - self.lo) / step_mm) + 1)

    def coords(self, points: np.ndarray) -> np.ndarray:
        return (points - self.lo) / self.step

    @staticmethod
    def sample(field: np.ndarray, coords: np.ndarray) -> np.ndarray:
        return np.stack([ndimage.map_coordinates(f, coords.T, order=1, mode="nearest") for f in field], axis=1)


def _target_points(vertices: np.ndarray, triangles: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Vertices and triangle centroids of the kept part of a mesh: a denser sample of the surface."""
    tri = triangles[keep[triangles].all(axis=1)]
    return np.concatenate([vertices[keep], vertices[tri].mean(axis=1)])


def surface_match(fit: HeadFit, target: np.ndarray) -> np.ndarray:
    """Displacement [P, 3] (mm) carrying every face skin point of ``fit`` onto the ``target`` points.

    Coarse-to-fine non-rigid ICP: each round takes, for every moved skin point, its nearest
    target point and, for every target point, its nearest moved skin point (so concave and convex
    parts both get matched), down-weights far pairs, and adds the residual smoothed at the
    round's sigma (normalised convolution on a lattice of sigma / 2).
    """
    pts = fit.points
    tree_t = cKDTree(target)
    disp = np.zeros_like(pts)
    for sigma_mm in NONRIGID_SIGMAS_MM:
        moved = pts + disp
        d_fwd, j = tree_t.query(moved)
        resid = target[j] - moved
        weight = 1.0 / (1.0 + (d_fwd / OUTLIER_MM) ** 2)
        d_rev, i = cKDTree(moved).query(target)
        near = d_rev < 2.0 * OUTLIER_MM
        cnt = np.bincount(i[near], minlength=len(pts))
        rev = np.stack([np.bincount(i[near], (target[near] - moved[i[near]])[:, c], len(pts)) for c in range(3)], 1)
        has = cnt > 0
        resid[has] = 0.5 * (resid[has] + rev[has] / cnt[has, None])
        lat = _Lattice(pts, max(sigma_mm / 1.5, 2.5), 2.5 * sigma_mm)
        coords = lat.coords(pts)
        field, _ = _smooth(_splat(coords, resid, weight, lat.shape), sigma_mm / lat.step)
        disp = disp + lat.sample(field, coords)
    return disp


def face_velocity(fit: HeadFit, placed: np.ndarray, triangles: np.ndarray, grid: "NodeGrid",
                  brain_weight: np.ndarray) -> Tuple[np.ndarray, dict]:
    """Velocity [3, n, n, n] (mm, physical LPS axes) carrying the source face onto a placed face.

    ``placed`` [V, 3] are the face mesh's vertices in the source's physical frame (e.g.
    ``fit.place(surface)`` or ``place_face``), ``triangles`` its faces; ``grid`` gives the field
    nodes; ``brain_weight`` [n, n, n] is zero where the field must vanish (near the brain) and 1
    where it may act fully. The displacements of the skin points (along their paths) are spread over a block of nodes
    around the face by normalised convolution, fine (``FINE_SIGMA_MM``) where skin points are
    dense and broad (``BROAD_SIGMA_MM``) further out, and faded to zero away from the face.
    """
    placed = np.asarray(placed, np.float64)
    rel = placed - fit.brain_centre
    keep = (rel[:, 1] < -FACE_FRONT_MM + 10.0) & (rel[:, 2] > -FACE_BELOW_MM - 10.0)
    target = _target_points(placed, np.asarray(triangles), keep)
    disp = surface_match(fit, target)
    pts = fit.points
    # each displacement also along its path p + t·d: the warp is sampled backwards, at the output
    # position, and a field known only at the start p realised about half of a long displacement
    path = np.concatenate([grid.to_nodes(pts + t * disp) for t in np.linspace(0.0, 1.0, PATH_SAMPLES)])
    coords = path[:len(pts)]  # t = 0: the skin points' own (z, y, x) node coordinates
    margin = 3.0 * BROAD_SIGMA_MM / grid.node_mm
    lo = np.maximum(np.floor(path.min(axis=0) - margin).astype(int), 0)
    hi = np.minimum(np.ceil(path.max(axis=0) + margin).astype(int) + 1, grid.nodes)
    local = coords - lo
    splat = _splat(path - lo, np.tile(disp, (PATH_SAMPLES, 1)), np.ones(len(path)), tuple(hi - lo))
    fine, den_fine = _smooth(splat, FINE_SIGMA_MM / grid.node_mm)
    broad, den_broad = _smooth(splat, BROAD_SIGMA_MM / grid.node_mm)
    at_pts = lambda f: ndimage.map_coordinates(f, local.T, order=1, mode="nearest")  # noqa: E731
    conf = np.clip(den_fine / (0.3 * np.percentile(at_pts(den_fine), 90)), 0.0, 1.0)
    near = np.clip(den_broad / (0.5 * np.median(at_pts(den_broad))), 0.0, 1.0)
    near = near * near * (3.0 - 2.0 * near)  # smoothstep: fades the field out away from the face
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    velocity = np.zeros((3,) + (grid.nodes,) * 3, np.float32)
    velocity[(slice(None),) + sl] = (conf * fine + (1.0 - conf) * broad) * (near * brain_weight[sl])
    resid = cKDTree(target).query(pts + disp)[0]
    stats = {"face_match_median_mm": round(float(np.median(resid)), 2),
             "face_displacement_p95_mm": round(float(np.percentile(np.linalg.norm(disp, axis=1), 95)), 2)}
    return velocity, stats


@dataclass(frozen=True)
class NodeGrid:
    """The field's nodes over a cubic model grid: node k sits at voxel k * (size - 1) / (nodes - 1)."""

    reference: object  # SimpleITK image of the model grid
    nodes: int

    @property
    def node_mm(self) -> float:
        return (self.reference.GetSize()[0] - 1) * self.reference.GetSpacing()[0] / (self.nodes - 1)

    def to_nodes(self, points: np.ndarray) -> np.ndarray:
        """Continuous node coordinates (z, y, x) of physical LPS points."""
        size = self.reference.GetSize()[0]
        return physical_to_voxel(self.reference, points) * (self.nodes - 1) / (size - 1)


def to_normalised(velocity_mm: np.ndarray, reference) -> np.ndarray:
    """[3, n, n, n] physical-mm vectors -> normalised grid units, channels (x, y, z) (``cpmae.cohort_augment``)."""
    size = reference.GetSize()[0]
    spacing = np.asarray(reference.GetSpacing())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    mat = (direction.T / spacing[:, None]) * (2.0 / (size - 1))  # physical mm -> normalised (x, y, z)
    n = velocity_mm.shape[1:]
    return (mat.astype(np.float32) @ velocity_mm.reshape(3, -1)).reshape((3,) + n)


def place_face(surface: faceshape.FaceSurface, brain_centre_mm: np.ndarray, brain_size_mm: float,
               reference_fit: HeadFit, reference_brain_size_mm: float) -> np.ndarray:
    """Vertices of a (normalised) face placed in front of a brain, for a 'face shape' condition.

    The face sits relative to the brain as it does on the reference head (``reference_fit``, e.g.
    the averaged head's, ``cpmae.cohort.source_fit``), scaled by ``brain_size_mm`` /
    ``reference_brain_size_mm`` about the brain centre. Returns [V, 3] physical LPS mm.
    """
    k = float(brain_size_mm) / float(reference_brain_size_mm)
    local = surface.vertices @ (reference_fit.scale * reference_fit.rotation).T + reference_fit.translation \
        - reference_fit.brain_centre
    return np.asarray(brain_centre_mm, dtype=np.float64) + k * local
