"""The de-identification methods an audit compares, behind one signature.

Every volume method is ``method(image, brain, seed) -> sitk.Image``: the original scan, its
brain mask (uint8, same geometry) and a seed; it returns the de-identified scan on the
same grid. A user adds a method with ``register_method("NAME", fn)``.

Two controls of the papers act on the *rendering*, not on the volume: BLACK (the same blank
picture for every subject, the optimal privacy bound) and BLURRED (the original rendering,
blurred). They are methods whose volume step is the identity plus a ``render_filter``; the
utility metrics of those two are therefore not meaningful and are reported as such.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from cpmae.geometry import DEFAULT_RESOLUTION, anterior_coordinate, superior_coordinate  # noqa: F401  (callers use these names)

VolumeFn = Callable[[sitk.Image, sitk.Image, int], sitk.Image]
RenderFilter = Callable[[np.ndarray], np.ndarray]

QUICKSHEAR_BUFFER_MM = 10.0  # quickshear's default buffer is 10 voxels of a 1 mm scan
FACE_BLUR_SIGMA_MM = 8.0  # strong enough to erase eyes/nose/lips detail, keeps the head outline
RENDER_BLUR_SIGMA_FRACTION = 0.025  # BLURRED: Gaussian sigma as a fraction of the picture width


@dataclass(frozen=True)
class Method:
    """One row of the audit table."""

    name: str
    volume: VolumeFn
    render_filter: Optional[RenderFilter] = None  # applied to each rendering [H, W, 3] uint8
    description: str = ""
    changes_volume: bool = True  # False for render-level controls: utility rows are "n/a"


def _same_grid(result: np.ndarray, like: sitk.Image) -> sitk.Image:
    """Array ``[z, y, x]`` as an image with ``like``'s geometry and pixel type."""
    out = sitk.GetImageFromArray(result.astype(sitk.GetArrayViewFromImage(like).dtype, copy=False))
    out.CopyInformation(like)
    return out


def _cast_like(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Round and clip float values into the integer range of ``like`` (no wrap-around)."""
    if np.issubdtype(like.dtype, np.integer):
        info = np.iinfo(like.dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(like.dtype)
    return values.astype(like.dtype)


# ------------------------------------------------------------------- volume methods
def original(image: sitk.Image, brain: sitk.Image, seed: int) -> sitk.Image:
    """No de-identification (the pessimal bound: the attacker sees the real face)."""
    return image


def skull_strip(image: sitk.Image, brain: sitk.Image, seed: int) -> sitk.Image:
    """Keep the brain only (MRI WATERSHED-like): perfect privacy, broken downstream tools."""
    arr = sitk.GetArrayFromImage(image)
    keep = sitk.GetArrayViewFromImage(brain) > 0
    return _same_grid(np.where(keep, arr, np.zeros((), arr.dtype)), image)


def quickshear_method(image: sitk.Image, brain: sitk.Image, seed: int) -> sitk.Image:
    """The real ``quickshear`` package (Schimke & Hale 2011) driven by our brain mask.

    quickshear works on nibabel images and reorients to RPS itself; its buffer is in voxels,
    so it is converted from 10 mm to this scan's voxel size along the shear direction.
    """
    from quickshear import quickshear

    from cpmae.brainmask import nibabel_array_to_sitk_order, sitk_to_nibabel

    anat = sitk_to_nibabel(image)
    mask = sitk_to_nibabel(brain)
    buff = max(1, int(round(QUICKSHEAR_BUFFER_MM / float(np.mean(image.GetSpacing())))))
    with warnings.catch_warnings():  # quickshear 1.2 uses 2-D np.cross, deprecated in NumPy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        defaced = quickshear(anat, mask, buff=buff)
    arr = nibabel_array_to_sitk_order(np.asarray(defaced.dataobj))
    return _same_grid(_cast_like(arr, sitk.GetArrayViewFromImage(image)), image)


def face_region(image: sitk.Image, brain: sitk.Image) -> np.ndarray:
    """Voxels in front of the brain and below its centre: eyes, nose, mouth, chin, lower forehead.

    Defined in physical space (anterior of the brain's most anterior voxel, inferior to the
    brain's centroid height), so it works for any voxel orientation.
    """
    b = sitk.GetArrayViewFromImage(brain) > 0
    if not b.any():
        return np.zeros(b.shape, dtype=bool)
    ant, sup = anterior_coordinate(image), superior_coordinate(image)
    return (ant < ant[b].min()) & (sup < sup[b].mean())


def face_blur(image: sitk.Image, brain: sitk.Image, seed: int) -> sitk.Image:
    """FACE MASK-like: smooth the non-brain head in front of the brain with an 8 mm Gaussian."""
    arr = sitk.GetArrayFromImage(image)
    b = sitk.GetArrayViewFromImage(brain) > 0
    ant = anterior_coordinate(image)
    region = (ant < (ant[b].min() if b.any() else -np.inf)) & ~b
    smooth = sitk.GetArrayFromImage(
        sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), FACE_BLUR_SIGMA_MM)
    )
    out = arr.copy()
    out[region] = _cast_like(smooth[region], arr)
    return _same_grid(out, image)


def hull_only(image: sitk.Image, brain: sitk.Image, seed: int) -> sitk.Image:
    """The head's convex hull filled with one tissue value, brain kept: all a silhouette gives away.

    A control, not a method anyone should use: whatever the attack still finds here comes from
    head size and outline (and the kept brain), not from a face.
    """
    from cpmae.envelope import head_mask, hull_of_mask

    arr = sitk.GetArrayFromImage(image)
    keep = sitk.GetArrayViewFromImage(brain) > 0
    hull = hull_of_mask(head_mask(arr))
    fill = np.median(arr[keep]) if keep.any() else np.percentile(arr, 90)
    out = np.where(keep, arr, np.where(hull, fill, 0)).astype(arr.dtype, copy=False)
    return _same_grid(out, image)


@functools.lru_cache(maxsize=1)
def _reface_template():
    """pydeface's averaged head and its face mask (0 on the face), native 1 mm grid."""
    from cpmae.samples import ensure_sample

    head = sitk.ReadImage(str(ensure_sample("pydeface-mean")), sitk.sitkFloat32)
    face = sitk.ReadImage(str(ensure_sample("pydeface-facemask")), sitk.sitkFloat32)
    return head, face


def template_reface(image: sitk.Image, brain: sitk.Image, seed: int) -> sitk.Image:
    """TEMPLATE REFACE (as mri_reface and AFNI's refacer do): the averaged face replaces the subject's.

    pydeface's averaged head is placed on the subject by the brain (the audit's rigid brain
    registration, then a per-axis scale from the two brains' extents); inside pydeface's face mask
    every non-brain voxel becomes the template's (intensity-matched), blended over ~2 voxels at
    the mask's edge; the brain is kept bit-identical.
    """
    from scipy import ndimage

    from cpmae import pose
    from cpmae.intensity import intensity_scale

    ref = pose.reference()
    t = pose.brain_transform(image, brain, ref)
    rot, shift = pose.rotation_and_shift(t)
    framed = sitk.GetArrayFromImage(pose.to_frame(brain, t, ref, sitk.sitkNearestNeighbor)) > 0.5
    scale = pose.extent(framed) / ref.brain_extent if framed.any() else np.ones(3)
    # scan point q -> template point c + diag(1/scale) R^T (q - c - t)
    c = ref.centroid
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((np.diag(1.0 / scale) @ rot.T).ravel().tolist())
    affine.SetCenter((c + shift).tolist())
    affine.SetTranslation((-shift).tolist())
    head, face = _reface_template()
    tmpl = sitk.GetArrayFromImage(sitk.Resample(head, image, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    is_face = sitk.GetArrayFromImage(sitk.Resample(face, image, affine, sitk.sitkLinear, 1.0, sitk.sitkFloat32)) < 0.5
    arr = sitk.GetArrayFromImage(image)
    keep = sitk.GetArrayViewFromImage(brain) > 0
    tmpl *= intensity_scale(arr) / intensity_scale(sitk.GetArrayViewFromImage(head))
    w = np.maximum(ndimage.gaussian_filter(is_face.astype(np.float32), 1.5),
                   ndimage.binary_erosion(is_face, iterations=2))
    w[keep] = 0.0
    mixed = (1.0 - w) * arr.astype(np.float32) + w * tmpl
    out = _cast_like(mixed, arr)
    out[keep] = arr[keep]  # bit-identical, whatever the cast did
    return _same_grid(out, image)


def make_cpmae(weights=None, resolution: int = DEFAULT_RESOLUTION, steps: Optional[int] = None, device: str = "auto",
               bundle=None, mask_limits: Optional[dict] = None) -> VolumeFn:
    """CP-MAE (ours): the pipeline remodels all but the brain; weights are loaded once, on first use."""
    state = {"bundle": bundle}

    def cpmae_method(image: sitk.Image, brain: sitk.Image, seed: int) -> sitk.Image:
        from cpmae.pipeline import deidentify, pick_device

        if state["bundle"] is None:
            from cpmae.weights import load_bundle

            state["bundle"] = load_bundle(weights, resolution, pick_device(device))
        return deidentify(image, mask=brain, bundle=state["bundle"], steps=steps, seed=seed, device=device,
                          mask_limits=mask_limits).image

    return cpmae_method


# ------------------------------------------------------------------- render filters
def black_rendering(picture: np.ndarray) -> np.ndarray:
    """The same all-black picture for every subject (the optimal privacy bound)."""
    return np.zeros_like(picture)


def blur_rendering(picture: np.ndarray) -> np.ndarray:
    """Gaussian-blurred rendering (mild obfuscation control of the papers)."""
    from scipy.ndimage import gaussian_filter

    sigma = RENDER_BLUR_SIGMA_FRACTION * picture.shape[1]
    out = gaussian_filter(picture.astype(np.float32), sigma=(sigma, sigma, 0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------- registry
METHODS: Dict[str, Method] = {}


def register_method(name: str, volume: VolumeFn, render_filter: Optional[RenderFilter] = None,
                    description: str = "", changes_volume: bool = True) -> Method:
    """Add (or replace) a method; ``name`` is what ``--methods`` accepts (case-insensitive)."""
    m = Method(name.upper(), volume, render_filter, description, changes_volume)
    METHODS[m.name] = m
    return m


register_method("ORIGINAL", original, description="no de-identification", changes_volume=False)
register_method("BLACK", original, black_rendering, "same blank rendering for all (render level)",
                changes_volume=False)
register_method("BLURRED", original, blur_rendering, "rendering blurred (render level)", changes_volume=False)
register_method("QUICKSHEAR", quickshear_method, description="quickshear 1.2 with our brain mask, 10 mm buffer")
register_method("FACE_BLUR", face_blur, description="non-brain head in front of the brain smoothed (8 mm)")
register_method("SKULL_STRIP", skull_strip, description="brain only")
register_method("HULL_ONLY", hull_only, description="head's convex hull filled, brain kept (silhouette control)")
register_method("TEMPLATE_REFACE", template_reface,
                description="pydeface's averaged face registered onto the subject (mri_reface-like)")
register_method("CPMAE", make_cpmae(), description="CP-MAE remodeling (ours)")

DEFAULT_METHODS: List[str] = list(METHODS)


def resolve_methods(names, cpmae: Optional[VolumeFn] = None) -> List[Method]:
    """Methods by name (case-insensitive, '-' = '_'); ``cpmae`` overrides CPMAE's volume step."""
    from cpmae.errors import InputError

    out = []
    for raw in names:
        key = raw.strip().upper().replace("-", "_").replace(" ", "_")
        if key not in METHODS:
            raise InputError(f"unknown method {raw!r}; choose from {', '.join(METHODS)}")
        m = METHODS[key]
        if key == "CPMAE" and cpmae is not None:
            m = Method(m.name, cpmae, m.render_filter, m.description, m.changes_volume)
        if m not in out:
            out.append(m)
    return out
