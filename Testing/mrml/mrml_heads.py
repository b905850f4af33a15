"""A small synthetic head with an optional nose, on an oblique anisotropic grid (milliseconds to build)."""
from __future__ import annotations

import numpy as np


def head_arrays(size: int = 48, face: bool = True):
    """A small head (skin, skull, brain) with an optional nose, [z, y, x]; anterior is -y in LPS."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, size, dtype=np.float32)] * 3, indexing="ij")
    head = (x / 0.62) ** 2 + (y / 0.78) ** 2 + (z / 0.85) ** 2 <= 1.0
    skull = (x / 0.56) ** 2 + (y / 0.72) ** 2 + (z / 0.78) ** 2 <= 1.0
    brain = (x / 0.46) ** 2 + ((y - 0.06) / 0.60) ** 2 + ((z - 0.10) / 0.60) ** 2 <= 1.0
    nose = (x / 0.10) ** 2 + ((y + 0.80) / 0.16) ** 2 + ((z + 0.05) / 0.22) ** 2 <= 1.0
    img = np.zeros(head.shape, np.int16)
    img[head | (nose if face else False)] = 600
    img[skull & ~brain] = 150
    img[brain] = 450
    img[brain & (np.sin(9 * x) > 0)] = 520
    return img, brain.astype(np.uint8)


def head_image(size: int = 48, face: bool = True, spacing=(4.0, 4.2, 3.9), oblique: bool = True):
    """(image int16, mask uint8) SimpleITK images with a non-trivial (oblique, anisotropic) geometry."""
    import SimpleITK as sitk

    arr, mask = head_arrays(size, face)
    a = np.deg2rad(12.0)
    direction = (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0) if oblique else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    images = []
    for a_ in (arr, mask):
        im = sitk.GetImageFromArray(a_)
        im.SetSpacing(spacing)
        im.SetOrigin((91.5, -87.25, -100.125))
        im.SetDirection([float(d) for d in direction])
        images.append(im)
    return tuple(images)
