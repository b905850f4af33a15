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
RENDER_VERSION = "audit-render-1"  # bump when pictures for the same input change

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


def rescan(image: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    """The same head as if scanned again: small rigid motion and a gamma/gain intensity change."""
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
    return sitk.Resample(moved, image, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


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
