"""Face pictures for the attack: fixed-camera renderings, re-scan jitter, and a disk cache.

Pictures come from ``cpmae.render`` (skin iso-surface, orthographic frontal and profile
cameras). A de-identified scan is rendered with the skin threshold and focal point of its
original, so the two pictures differ only where the heads do.

The attacker learns what stays the same when the *same* person is pictured twice; a
"re-scan" is simulated by a small rigid head motion, an intensity change and a different
skin threshold and camera focus (:func:`rescan_views`), plus 2-D jitter during training.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

VIEWS: Tuple[str, ...] = ("frontal", "profile")
RENDER_VERSION = "audit-render-2"  # 2: pictures in the brain frame  # bump when pictures for the same input change

RESCAN_ROTATION_DEG = 4.0
RESCAN_SHIFT_MM = 3.0
RESCAN_ISO_RANGE = (0.8, 1.25)
RESCAN_FOCUS_MM = 3.0
RESCAN_GAMMA_RANGE = (0.85, 1.15)


def render_reference(image: sitk.Image) -> Tuple[float, np.ndarray]:
    """(skin threshold, focal point) of an original scan, shared by all its methods' pictures."""
    from cpmae.render import camera_centre, skin_threshold

    iso = skin_threshold(image)
    return iso, camera_centre(image, iso)


def views_of(image: sitk.Image, size: int, iso: Optional[float] = None,
             centre: Optional[Sequence[float]] = None, views: Sequence[str] = VIEWS) -> np.ndarray:
    """RGB pictures ``uint8 [V, H, W, 3]`` of one head, one per view."""
    from cpmae.render import render_views

    pics = render_views(image, views, (size, size), iso, centre)
    return np.stack([pics[v] for v in views])


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` uint8 RGB -> ``[...]`` uint8 luminance (the skin colour carries no identity)."""
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def rescan(image: sitk.Image, rng: np.random.Generator, brain: Optional[sitk.Image] = None):
    """The same head as if scanned again: small rigid motion and a gamma/gain intensity change.

    Without ``brain``: the moved image. With it: (moved image, moved brain, the motion as an
    Euler transform mapping the new scan's points to the old one's)."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi > lo:
        gamma = rng.uniform(*RESCAN_GAMMA_RANGE)
        arr = lo + (hi - lo) * ((arr - lo) / (hi - lo)) ** gamma
    moved = sitk.GetImageFromArray(arr)
    moved.CopyInformation(image)
    size = np.asarray(image.GetSize(), float)
    centre = image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist())
    t = sitk.Euler3DTransform()
    t.SetCenter(centre)
    angles = np.deg2rad(rng.uniform(-RESCAN_ROTATION_DEG, RESCAN_ROTATION_DEG, 3))
    t.SetRotation(*angles.tolist())
    t.SetTranslation(rng.uniform(-RESCAN_SHIFT_MM, RESCAN_SHIFT_MM, 3).tolist())
    out = sitk.Resample(moved, image, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    if brain is None:
        return out
    return out, sitk.Resample(brain, image, t, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), t


def rescan_views(image: sitk.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """RGB views of a simulated re-scan, with a jittered skin threshold and camera focus."""
    iso, centre = render_reference(image)
    moved = rescan(image, rng)
    iso_j = iso * rng.uniform(*RESCAN_ISO_RANGE)
    centre_j = np.asarray(centre) + rng.normal(0, RESCAN_FOCUS_MM, 3)
    return views_of(moved, size, iso_j, centre_j)


def apply_filter(views: np.ndarray, render_filter) -> np.ndarray:
    """A method's picture-level step (BLACK, BLURRED) applied to every view."""
    if render_filter is None:
        return views
    return np.stack([render_filter(v) for v in views])


# --------------------------------------------------------------------------------- cache
def file_fingerprint(path) -> str:
    """Cheap identity of an input file (path, size, mtime): re-audits skip unchanged scans."""
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def cache_key(*parts) -> str:
    text = json.dumps([RENDER_VERSION, *[str(p) for p in parts]])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class ResultCache:
    """``key -> (arrays, json record)`` in a folder; written through a temp file and a rename."""

    def __init__(self, folder: Optional[Path]):
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Optional[Path]:
        return None if self.folder is None else self.folder / f"{key}.npz"

    def get(self, key: str):
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != "__record__"}
                record = json.loads(bytes(data["__record__"]).decode()) if "__record__" in data.files else {}
            return arrays, record
        except (OSError, ValueError, KeyError):  # a damaged entry is recomputed, not trusted
            return None

    def put(self, key: str, arrays: dict, record: Optional[dict] = None) -> None:
        path = self._path(key)
        if path is None:
            return
        payload = dict(arrays)
        payload["__record__"] = np.frombuffer(json.dumps(record or {}).encode(), dtype=np.uint8)
        from cpmae.atomic import atomic_path

        with atomic_path(path, suffix=".npz", private=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **payload)


# ------------------------------------------------------------------ pictures in the brain frame
SILHOUETTE_STEP = 2  # silhouettes are kept at 2 × the frame's 2 mm: plenty for an overlap score


def head_silhouette(volume: np.ndarray, iso: float) -> np.ndarray:
    """bool [z, y, x]: the head as the skin rendering sees it (same threshold, smoothing, component)."""
    from scipy import ndimage as ndi

    from cpmae.envelope import fill_holes, largest_component
    from cpmae.render import SMOOTHING_SIGMA_VOXELS

    field = ndi.gaussian_filter(np.asarray(volume, np.float32), SMOOTHING_SIGMA_VOXELS, truncate=3.0)
    return fill_holes(largest_component(field > iso))


def _coarse(mask: np.ndarray) -> np.ndarray:
    k = SILHOUETTE_STEP
    z, y, x = (n // k * k for n in mask.shape)
    m = mask[:z, :y, :x].reshape(z // k, k, y // k, k, x // k, k)
    return m.mean(axis=(1, 3, 5)) >= 0.5


def frame_pictures(image: sitk.Image, transform, size: int, iso: float, focus=None,
                   render_filter=None) -> dict:
    """Everything the attackers see of one head, in the brain frame (``cpmae.pose``).

    ``views`` / ``face_views``: RGB ``[V, H, W, 3]`` of the whole head and of the face region only
    (the head cut to the frame's fixed face region); ``sil_head`` / ``sil_face``: the head's
    silhouette (packed bits, 4 mm) in the whole frame and in the face region. ``render_filter``
    (BLACK, BLURRED) acts on the pictures; a picture that is all black shows no silhouette either.
    """
    from cpmae import pose

    ref = pose.reference()
    focus = ref.focus if focus is None else np.asarray(focus, np.float64)
    framed = pose.to_frame(image, transform, ref)
    arr = sitk.GetArrayFromImage(framed)
    region = ref.face_region()
    face = sitk.GetImageFromArray(np.where(region, arr, 0.0).astype(np.float32))
    face.CopyInformation(framed)
    views = apply_filter(views_of(framed, size, iso, focus), render_filter)
    face_views = apply_filter(views_of(face, size, iso, focus), render_filter)
    head = head_silhouette(arr, iso)
    if not views.any():
        head = np.zeros_like(head)
    return {"views": views, "face_views": face_views,
            "sil_head": np.packbits(_coarse(head)), "sil_face": np.packbits(_coarse(head & region))}


def face_features(pictures: dict) -> dict:
    """dlib embeddings (NaN when no face is found) of the frontal whole-head and face-region pictures."""
    from cpmae import facerec

    rec = facerec.recognizer()
    out = {}
    for key, name in (("views", "emb_head"), ("face_views", "emb_face")):
        emb = rec.embed(pictures[key][VIEWS.index("frontal")])
        out[name] = np.full(128, np.nan) if emb is None else np.asarray(emb, np.float64)
    return out


def rescan_transform(transform, motion) -> sitk.Euler3DTransform:
    """Brain-frame transform of a re-scan: the original's, followed by the inverse of the motion.

    A starting point for registering the re-scan, which then converges in a few iterations.
    """
    r_t = np.asarray(transform.GetMatrix()).reshape(3, 3)
    o_t = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    r_m = np.asarray(motion.GetMatrix()).reshape(3, 3)
    o_m = np.asarray(motion.TransformPoint((0.0, 0.0, 0.0)))
    rot = r_m.T @ r_t
    offset = r_m.T @ (o_t - o_m)
    out = sitk.Euler3DTransform()
    centre = np.asarray(transform.GetCenter())
    out.SetCenter(centre.tolist())
    out.SetMatrix(rot.ravel().tolist())
    out.SetTranslation((rot @ centre + offset - centre).tolist())
    return out
