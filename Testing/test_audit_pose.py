"""The audit's pictures are taken in a pose fixed to the brain: a moved scan gives the same pictures."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from cpmae import pose
from cpmae.cohort import generate_subject


def _subject(index):
    s = generate_subject(index, 128, 11)
    img = sitk.GetImageFromArray(s.image)
    img.CopyInformation(s.reference)
    brain = sitk.GetImageFromArray(s.brain)
    brain.CopyInformation(s.reference)
    return img, brain


def test_alignment_removes_an_applied_rotation_and_shift():
    img, brain = _subject(1)
    t = pose.brain_transform(img, brain)
    motion = sitk.Euler3DTransform()
    motion.SetCenter(pose._centroid(brain).tolist())
    motion.SetRotation(*np.deg2rad([5.0, -8.0, 6.0]).tolist())
    motion.SetTranslation([10.0, -7.0, 5.0])
    moved = sitk.Resample(img, img, motion, sitk.sitkLinear, 0.0)
    moved_brain = sitk.Resample(brain, brain, motion, sitk.sitkNearestNeighbor, 0)
    t2 = pose.brain_transform(moved, moved_brain)
    # a brain-frame point must land on the same anatomy in both scans: motion(t2(p)) == t(p)
    ref = pose.reference()
    pts = np.random.default_rng(0).normal(ref.centroid, 40.0, (200, 3))
    err = [np.linalg.norm(np.asarray(motion.TransformPoint(t2.TransformPoint(p.tolist())))
                          - np.asarray(t.TransformPoint(p.tolist()))) for p in pts]
    assert np.mean(err) < 1.5 and np.max(err) < 4.0, (np.mean(err), np.max(err))  # applied: ~10° and 13 mm
    a = sitk.GetArrayFromImage(pose.to_frame(brain, t, ref, sitk.sitkNearestNeighbor)) > 0
    b = sitk.GetArrayFromImage(pose.to_frame(moved_brain, t2, ref, sitk.sitkNearestNeighbor)) > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97


def test_frame_and_face_region_are_fixed():
    ref = pose.reference()
    region = ref.face_region()
    assert region.shape == (pose.FRAME_SIZE,) * 3
    assert 0.03 < region.mean() < 0.3
