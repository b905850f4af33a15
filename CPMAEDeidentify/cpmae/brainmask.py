"""The brain mask: the voxels the de-identification must leave bit-identical.

By default the mask comes from deepbet (its TorchScript weights ship inside its wheel), called
in-process on the image we already hold: SimpleITK (LPS, array ``[z, y, x]``) is converted to a
nibabel image (RAS affine, array ``[i, j, k]``), deepbet reorients to the closest canonical RAS
frame, segments, and hands back a mask in the input's voxel order, which we transpose back.

A user may supply their own mask instead; either way ``validate_mask`` refuses masks that cannot
be a brain (empty, implausible volume, touching the border of the scan), because a wrong mask
would either copy face voxels into the output or remodel the brain.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from cpmae.errors import InputError

MIN_BRAIN_CM3 = 800.0  # smaller than any adult brain + cerebellum mask deepbet produces
MAX_BRAIN_CM3 = 2200.0  # larger than any adult brain: the mask has leaked into the head
BORDER_TOLERANCE_VOXELS = 0  # mask voxels allowed on the outer faces of the volume

# LPS (SimpleITK/DICOM) and RAS (NIfTI/nibabel) differ by flipping the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def sitk_to_nibabel(img: sitk.Image):
    """A nibabel Nifti1Image with the same voxels and physical placement as ``img`` (RAS affine)."""
    import nibabel as nib

    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(img.GetOrigin())
    data = np.ascontiguousarray(sitk.GetArrayViewFromImage(img).transpose(2, 1, 0), dtype=np.float32)
    return nib.Nifti1Image(data, affine)


def nibabel_array_to_sitk_order(arr_ijk: np.ndarray) -> np.ndarray:
    """nibabel's ``[i, j, k]`` voxel order back to SimpleITK's ``[z, y, x]``."""
    return np.ascontiguousarray(np.asarray(arr_ijk).transpose(2, 1, 0))


@functools.lru_cache(maxsize=2)
def _deepbet(device: str):
    """deepbet's BrainExtraction, loaded once per device (loading costs ~0.5 s).

    Loaded on the CPU and then moved: deepbet's own GPU choice is always GPU 0, ours is ``device``
    (deepbet sends its inputs to wherever its weights are).
    """
    import torch
    from deepbet import BrainExtraction

    bet = BrainExtraction(no_gpu=True)

    for net in (bet.model, bet.bbox_model):
        net.to(torch.device(device))
    return bet


NO_BRAIN = "no brain found by deepbet: is this a T1- or T2-weighted head MRI?"


def compute_brain_mask(img: sitk.Image, device="cpu", path: Optional[Union[str, Path]] = None) -> sitk.Image:
    """deepbet's brain mask of ``img``: uint8 (0/1) with ``img``'s exact geometry.

    ``device``: a ``--device`` text or the ``torch.device`` the caller resolved (``cpmae.device``).
    ``path`` only names the scan in the error raised when no brain is found.
    """
    from cpmae.device import resolve_device

    bet = _deepbet(str(resolve_device(device)))
    nifti = sitk_to_nibabel(img)
    try:
        _, mask_nifti, _ = bet.run(nifti)
        mask_ijk = np.asarray(mask_nifti.dataobj)
    except (AssertionError, ValueError):  # deepbet's "not enough foreground" / argmax of no components
        raise InputError(NO_BRAIN, path=path) from None
    if not mask_ijk.any():
        raise InputError(NO_BRAIN, path=path)
    mask = sitk.GetImageFromArray((nibabel_array_to_sitk_order(mask_ijk) > 0).astype(np.uint8))
    mask.CopyInformation(img)
    return mask


def validate_mask(mask: sitk.Image, path: Optional[Union[str, Path]] = None,
                  min_cm3: float = MIN_BRAIN_CM3, max_cm3: float = MAX_BRAIN_CM3) -> float:
    """Brain volume in cm³; ``InputError`` when the mask cannot be a whole brain inside the scan."""
    arr = sitk.GetArrayViewFromImage(mask) > 0
    voxel_cm3 = float(np.prod(mask.GetSpacing())) / 1000.0
    volume = float(arr.sum()) * voxel_cm3
    if volume == 0:
        raise InputError("brain mask is empty", path=path)
    if not min_cm3 <= volume <= max_cm3:
        raise InputError(f"brain mask volume {volume:.0f} cm³ is outside the plausible {min_cm3:.0f}-"
                         f"{max_cm3:.0f} cm³ (wrong mask, or not a head scan)", path=path)
    faces = [arr[0], arr[-1], arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]]
    on_border = int(sum(int(f.sum()) for f in faces))
    if on_border > BORDER_TOLERANCE_VOXELS:
        raise InputError(f"brain mask touches the border of the volume ({on_border} voxels): the scan cuts "
                         "through the brain, or the mask is wrong", path=path)
    return volume


def load_mask(path: Union[str, Path], reference: sitk.Image) -> sitk.Image:
    """A user-supplied mask file, binarised to uint8 0/1; it must share ``reference``'s grid."""
    from cpmae.io import read_image, same_geometry

    mask = read_image(path)
    if not same_geometry(mask, reference):
        raise InputError(
            f"mask geometry differs from the image: mask size {mask.GetSize()} spacing "
            f"{_fmt(mask.GetSpacing())} origin {_fmt(mask.GetOrigin())}, image size {reference.GetSize()} "
            f"spacing {_fmt(reference.GetSpacing())} origin {_fmt(reference.GetOrigin())}", path=path)
    out = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(mask) > 0).astype(np.uint8))
    out.CopyInformation(reference)
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
