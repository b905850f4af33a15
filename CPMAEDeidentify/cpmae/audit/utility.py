"""Utility: is a de-identified scan still as good as the original for brain analysis?

Every metric compares one method's output with the original scan of the same subject:

- brain preservation: are the voxels inside the brain mask bit-identical (and the largest
  absolute difference if not);
- downstream brain extraction: deepbet on the output vs deepbet on the original (Dice);
- tissue segmentation: a 3-class Gaussian mixture (CSF/GM/WM) inside each scan's own brain
  mask, output vs original (Dice per class), the analysis a user would actually run;
- face present: of the original head voxels in the face region, the fraction still head
  (remodeling keeps a face, defacing removes it);
- head envelope kept: Dice of CP-GAN's convex-hull head envelopes.

The per-subject quantities of the original are computed once (:func:`reference_for`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import SimpleITK as sitk

from cpmae.audit.methods import face_region
from cpmae.envelope import head_mask, hull_of_mask
from cpmae.intensity import intensity_scale

HEAD_FRACTION = 0.10  # head = brighter than 10 % of the original's robust intensity scale
TISSUE_CLASSES = ("CSF", "GM", "WM")  # in order of increasing T1 intensity
GMM_BINS = 512
GMM_ITERATIONS = 200

BrainExtractor = Callable[[sitk.Image], sitk.Image]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Sørensen–Dice of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def brain_preservation(original: np.ndarray, output: np.ndarray, brain: np.ndarray) -> Dict[str, object]:
    """Whether every brain voxel is bit-identical, and the largest absolute difference there."""
    b = np.asarray(brain, bool)
    o = np.asarray(original)[b]
    y = np.asarray(output)[b]
    identical = bool(o.dtype == y.dtype and np.array_equal(o.view(np.uint8), y.view(np.uint8)))
    diff = float(np.abs(o.astype(np.float64) - y.astype(np.float64)).max()) if b.any() else 0.0
    return {"brain_identical": identical, "brain_max_abs_diff": diff}


def gmm_tissue_labels(array: np.ndarray, mask: np.ndarray, classes: int = 3) -> np.ndarray:
    """Tissue labels inside ``mask`` (0 outside, 1..classes by increasing mean intensity).

    A 1-D Gaussian mixture fitted by EM on the histogram of the masked intensities (fast and
    deterministic), started from quantiles; the classic unsupervised T1 tissue model
    (CSF < GM < WM). Each voxel then takes its most probable class.
    """
    m = np.asarray(mask, bool)
    labels = np.zeros(m.shape, np.uint8)
    v = np.asarray(array, np.float64)[m]
    if v.size < classes * 10 or np.ptp(v) == 0:
        return labels
    counts, edges = np.histogram(v, bins=GMM_BINS)
    centres = 0.5 * (edges[:-1] + edges[1:])
    keep = counts > 0
    x, w = centres[keep], counts[keep].astype(np.float64)
    cdf = np.cumsum(w) / w.sum()
    mu = x[np.searchsorted(cdf, np.linspace(0.15, 0.85, classes))]
    total_var = float(np.average((x - np.average(x, weights=w)) ** 2, weights=w))
    var = np.full(classes, total_var / classes ** 2 + 1e-9)
    pi = np.full(classes, 1.0 / classes)
    floor = (edges[1] - edges[0]) ** 2 / 12.0 + 1e-12  # no narrower than one histogram bin
    for _ in range(GMM_ITERATIONS):
        logp = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(var) + np.log(pi)
        logp -= logp.max(1, keepdims=True)
        r = np.exp(logp) * w[:, None]
        r /= r.sum(1, keepdims=True) / w[:, None]
        nk = r.sum(0) + 1e-12
        mu_new = (r * x[:, None]).sum(0) / nk
        var = np.maximum((r * (x[:, None] - mu_new) ** 2).sum(0) / nk, floor)
        pi = nk / nk.sum()
        converged = np.allclose(mu_new, mu, rtol=1e-7, atol=0)
        mu = mu_new
        if converged:
            break
    order = np.argsort(mu)
    mu, var, pi = mu[order], var[order], pi[order]
    logp = -0.5 * (v[:, None] - mu) ** 2 / var - 0.5 * np.log(var) + np.log(pi)
    labels[m] = (np.argmax(logp, axis=1) + 1).astype(np.uint8)
    return labels


@dataclass
class Reference:
    """What the original scan of one subject contributes to every comparison."""

    image: sitk.Image
    array: np.ndarray
    brain: np.ndarray  # the mask the methods were given
    head_threshold: float
    head: np.ndarray
    face: np.ndarray  # original head voxels in the face region
    envelope: np.ndarray
    extracted: Optional[np.ndarray]  # deepbet on the original (None when deepbet is off)
    tissue: np.ndarray


def _downstream(image: sitk.Image, array: np.ndarray, fallback_brain: np.ndarray,
                extractor: Optional[BrainExtractor]):
    """(brain mask a user's pipeline would find, its GMM tissue labels)."""
    if extractor is None:
        extracted = None
        brain = fallback_brain
    else:
        try:
            extracted = sitk.GetArrayFromImage(extractor(image)) > 0
        except Exception:  # deepbet finds nothing (e.g. an all-black scan): an empty segmentation
            extracted = np.zeros(array.shape, bool)
        brain = extracted
    return extracted, gmm_tissue_labels(array, brain)


def reference_for(image: sitk.Image, brain: sitk.Image, extractor: Optional[BrainExtractor] = None) -> Reference:
    """Compute the original's head, face region, envelope, downstream masks and tissues."""
    arr = sitk.GetArrayFromImage(image)
    b = sitk.GetArrayFromImage(brain) > 0
    thr = HEAD_FRACTION * intensity_scale(arr)
    head = head_mask(arr, thr)
    face = face_region(image, brain) & head
    extracted, tissue = _downstream(image, arr, b, extractor)
    return Reference(image, arr, b, thr, head, face, hull_of_mask(head), extracted, tissue)


def utility_metrics(ref: Reference, output: sitk.Image, extractor: Optional[BrainExtractor] = None) -> Dict[str, object]:
    """All utility metrics of one method's output against its subject's reference."""
    if not same_grid(ref.image, output):
        raise ValueError("the method returned an image on a different voxel grid than its input")
    out = sitk.GetArrayFromImage(output)
    res: Dict[str, object] = dict(brain_preservation(ref.array, out, ref.brain))
    head = head_mask(out, ref.head_threshold)
    res["face_present"] = float((head & ref.face).sum() / ref.face.sum()) if ref.face.any() else float("nan")
    res["envelope_dice"] = dice(hull_of_mask(head), ref.envelope)
    if output is ref.image:  # the unchanged scan (ORIGINAL): its downstream results are the reference's
        extracted, tissue = ref.extracted, ref.tissue
    else:
        extracted, tissue = _downstream(output, out, ref.brain, extractor)
    res["deepbet_dice"] = dice(extracted, ref.extracted) if extracted is not None else None
    per_class = [dice(tissue == k, ref.tissue == k) for k in range(1, len(TISSUE_CLASSES) + 1)]
    for name, value in zip(TISSUE_CLASSES, per_class):
        res[f"tissue_dice_{name.lower()}"] = value
    res["tissue_dice_mean"] = float(np.mean(per_class))
    return res
