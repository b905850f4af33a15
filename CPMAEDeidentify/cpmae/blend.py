"""The privacy blend ``Y = (1 - B)·decoded + B·X`` on the native grid.

Done on the native grid, not the model grid, because resampling the brain would change its
voxels: here every brain voxel of Y is the input voxel itself (same dtype, same bits), and
every non-brain voxel comes from the decoder, so no original non-brain voxel is copied.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def to_dtype(values: np.ndarray, dtype: np.dtype, lo: float, hi: float) -> np.ndarray:
    """Cast generated values into the input's dtype and observed range (round for integers)."""
    v = np.clip(np.nan_to_num(values.astype(np.float64), nan=lo), lo, hi)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        v = np.clip(np.rint(v), info.min, info.max)
    return v.astype(dtype)


def blend_arrays(native: np.ndarray, decoded: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Arrays version: brain voxels from ``native`` (bit-identical), the rest from ``decoded``."""
    if native.shape != decoded.shape or native.shape != brain.shape:
        raise ValueError(f"shape mismatch: native {native.shape}, decoded {decoded.shape}, mask {brain.shape}")
    finite = native[np.isfinite(native)] if np.issubdtype(native.dtype, np.floating) else native
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    out = to_dtype(decoded, native.dtype, lo, hi)
    b = brain.astype(bool)
    out[b] = native[b]
    return out


def blend(native: sitk.Image, decoded: np.ndarray, mask: sitk.Image) -> sitk.Image:
    """Blend on ``native``'s grid; the result carries only geometry (no metadata) from ``native``."""
    x = sitk.GetArrayViewFromImage(native)
    b = sitk.GetArrayViewFromImage(mask) > 0
    y = blend_arrays(np.asarray(x), decoded, b)
    out = sitk.GetImageFromArray(y)
    out.SetOrigin(native.GetOrigin())
    out.SetSpacing(native.GetSpacing())
    out.SetDirection(native.GetDirection())
    return out
