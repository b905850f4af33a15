"""The privacy blend ``Y = (1 - B)·decoded + B·X`` on the native grid.

Done on the native grid, not the model grid, because resampling the brain would change its
voxels: here every brain voxel of Y is the input voxel itself (same dtype, same bits), and
every non-brain voxel comes from the decoder, so no original non-brain voxel is copied.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _working_type(dtype: np.dtype) -> type:
    """float32 where it holds every value of ``dtype`` exactly (8/16-bit integers, float32): half
    the memory traffic of float64 and the same result, since clipping and rounding are exact."""
    dtype = np.dtype(dtype)
    exact = (np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2) or dtype == np.float32
    return np.float32 if exact else np.float64


def to_dtype(values: np.ndarray, dtype: np.dtype, lo: float, hi: float) -> np.ndarray:
    """Cast generated values into the input's dtype and observed range (round for integers)."""
    v = np.array(values, dtype=_working_type(dtype))  # a copy: worked on in place below
    nan = np.isnan(v)
    if nan.any():
        v[nan] = lo
    np.clip(v, lo, hi, out=v)  # ±inf too: one pass where nan_to_num took three
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        np.rint(v, out=v)
        np.clip(v, max(info.min, lo), min(info.max, hi), out=v)
    return v.astype(dtype)


def blend_arrays(native: np.ndarray, decoded: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Arrays version: brain voxels from ``native`` (bit-identical), the rest from ``decoded``."""
    if native.shape != decoded.shape or native.shape != brain.shape:
        raise ValueError(f"shape mismatch: native {native.shape}, decoded {decoded.shape}, mask {brain.shape}")
    finite = native[np.isfinite(native)] if np.issubdtype(native.dtype, np.floating) else native
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    out = to_dtype(decoded, native.dtype, lo, hi)
    np.copyto(out, native, where=brain.astype(bool, copy=False))
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
