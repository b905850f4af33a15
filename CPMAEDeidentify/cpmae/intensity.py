"""Intensity normalisation shared by training and inference.

MRI intensities have no absolute unit, so every network sees ``x / scale`` with ``scale`` a
high percentile of the head's voxels; decoded volumes are multiplied back by the same scale.
Training and inference must agree on this, hence one function.
"""
from __future__ import annotations

import numpy as np

FOREGROUND_FRACTION = 0.05  # voxels above this fraction of the max are "head", not air
PERCENTILE = 99.5
# Head vs air as a fraction of ``intensity_scale`` (skin, training crops, "face region still head"):
# above smoothed Rician background at the strongest noise the cohort draws, below skin darkened by
# its gamma and bias field (0.15 left holes at the lips).
HEAD_FRACTION = 0.08


def intensity_scale(volume: np.ndarray) -> float:
    """Robust intensity scale of a head volume: the 99.5th percentile of its foreground."""
    v = np.asarray(volume, dtype=np.float32)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return 1.0
    vmax = float(finite.max())
    if vmax <= 0:
        return 1.0
    fg = finite[finite > FOREGROUND_FRACTION * vmax]
    if fg.size < 16:
        return vmax
    s = float(np.percentile(fg, PERCENTILE))
    return s if s > 0 else vmax
