"""Small synthetic heads for fast tests.

A real head takes seconds to mask and remodel; most invariants (geometry, dtype, blend,
header text) can be checked on a phantom in milliseconds. The phantom has air, skin/fat,
skull, CSF and a brain, plus a nose and chin so that "face region" tests have something to
look at. Anterior is -y in LPS (low y index = face), superior is +z.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def phantom_arrays(size: int = 64, seed: int = 0, nose: float = 1.0):
    """Return (image float32 [z,y,x], brain mask uint8 [z,y,x]) of a head phantom in a size³ grid."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, size, dtype=np.float32)] * 3, indexing="ij")
    head = (x / 0.62) ** 2 + (y / 0.78) ** 2 + ((z + 0.05) / 0.85) ** 2 <= 1.0
    skull = (x / 0.56) ** 2 + (y / 0.72) ** 2 + ((z + 0.0) / 0.78) ** 2 <= 1.0
    inner = (x / 0.50) ** 2 + ((y - 0.05) / 0.64) ** 2 + ((z - 0.08) / 0.66) ** 2 <= 1.0
    brain = (x / 0.46) ** 2 + ((y - 0.06) / 0.60) ** 2 + ((z - 0.10) / 0.60) ** 2 <= 1.0
    # face: nose ridge and chin in front (negative y) of the head
    nose_m = ((x / 0.08) ** 2 + ((y + 0.80) / (0.12 * nose + 1e-3)) ** 2 + ((z + 0.05) / 0.18) ** 2) <= 1.0
    chin = ((x / 0.25) ** 2 + ((y + 0.62) / 0.14) ** 2 + ((z + 0.62) / 0.14) ** 2) <= 1.0
    img = np.zeros((size,) * 3, np.float32)
    img[head | nose_m | chin] = 600.0  # skin / fat: bright in T1
    img[skull & ~inner] = 150.0  # bone: dark
    img[inner & ~brain] = 250.0  # CSF
    img[brain] = (450.0 + 120.0 * (np.sin(9 * x) * np.cos(7 * y) > 0))[brain]  # GM/WM pattern
    img += rng.normal(0, 8, img.shape).astype(np.float32) * (img > 0)
    return np.clip(img, 0, None), brain.astype(np.uint8)


def phantom_image(size: int = 64, spacing: float = 4.0, seed: int = 0, dtype=np.int16, nose: float = 1.0,
                  direction=None, origin=None):
    """Phantom as SimpleITK images (image in ``dtype``, mask uint8) with identical geometry."""
    arr, mask = phantom_arrays(size, seed, nose)
    img = sitk.GetImageFromArray(arr.astype(dtype))
    m = sitk.GetImageFromArray(mask)
    for im in (img, m):
        im.SetSpacing((spacing,) * 3)
        im.SetOrigin(origin if origin is not None else (-(size - 1) * spacing / 2.0,) * 3)
        if direction is not None:
            im.SetDirection(direction)
    return img, m
