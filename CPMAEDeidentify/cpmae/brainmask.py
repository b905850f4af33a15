"""The brain mask: the voxels the de-identification must leave bit-identical.

By default the mask comes from deepbet (its TorchScript weights ship inside its wheel), called
in-process on the image we already hold: SimpleITK (LPS, array ``[z, y, x]``) is converted to a
nibabel image (RAS affine, array ``[i, j, k]``), deepbet reorients to the closest canonical RAS
frame, segments, and hands back a mask in the input's voxel order, which we transpose back.

A user may supply their own mask instead; either way ``validate_mask`` refuses masks that cannot
be a brain (empty, implausible volume, cut by the border of the scan), because a wrong mask
would either copy face voxels into the output or remodel the brain.

Clinical fields of view: most head scans stop above the neck, so the brainstem, and often the
lower cerebellum, leave through the bottom of the volume. That is accepted: the part of the
brain inside the scan is kept bit-identical like any other. Refused is a cut through the cerebrum
(or through the top or the sides of the head), told apart by the brain's own section on the
inferior face (``inferior_cut_is_hindbrain``): the brainstem and cerebellum are a small section in
the posterior half of the brain, while a cut through the temporal lobes or higher reaches far
forward and is a large part of the brain's widest axial section.
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
BORDER_TOLERANCE_VOXELS = 0  # mask voxels allowed on the outer faces other than the inferior one
# Measured on deepbet's mask of pydeface's averaged head (brainstem to vertex 140 mm): sections
# through the brainstem and cerebellum are <= 25 % of the widest axial section and reach <= 51 %
# of the brain's length from the back; the first section holding the temporal poles is 30 % / 64 %.
INFERIOR_CUT_MAX_AREA_FRACTION = 0.35  # of the brain's widest section parallel to the inferior face
INFERIOR_CUT_MAX_ANTERIOR_FRACTION = 0.58  # of the brain's posterior-to-anterior length

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
    axis, end = inferior_face(mask)
    faces = {(a, e): np.take(arr, e, axis=a) for a in range(3) for e in (0, -1)}
    on_border = int(sum(int(f.sum()) for key, f in faces.items() if key != (axis, end)))
    on_inferior = int(faces[(axis, end)].sum())
    if on_inferior and not on_border and inferior_cut_is_hindbrain(mask):
        on_inferior = 0  # the brainstem / cerebellum leaves through the bottom of a clinical scan
    if on_border + on_inferior > BORDER_TOLERANCE_VOXELS:
        raise InputError(f"brain mask touches the border of the volume ({on_border + on_inferior} voxels): the "
                         "scan cuts through the cerebrum or the top of the head, or the mask is wrong", path=path)
    return volume


def _axis_of(img: sitk.Image, lps_axis: int):
    """(array axis, +1/-1): the array axis closest to physical LPS axis ``lps_axis`` and its sign."""
    direction = np.asarray(img.GetDirection()).reshape(3, 3)  # column i: physical direction of index axis i
    index_axis = int(np.argmax(np.abs(direction[lps_axis])))
    return 2 - index_axis, (1 if direction[lps_axis, index_axis] > 0 else -1)  # arrays are [z, y, x]


def inferior_face(img: sitk.Image):
    """(array axis, 0 or -1): the face of the volume closest to the patient's feet."""
    axis, sign = _axis_of(img, 2)  # LPS z grows towards superior
    return axis, (0 if sign > 0 else -1)


def inferior_cut_is_hindbrain(mask: sitk.Image) -> bool:
    """Whether the mask's section on the inferior face is brainstem/cerebellum, not cerebrum.

    The section must belong to the mask's main body, be small against the brain's widest section
    parallel to it, and stay in the posterior part of the brain (temporal lobes reach forward).
    """
    from scipy import ndimage as ndi

    arr = sitk.GetArrayViewFromImage(mask) > 0
    axis, end = inferior_face(mask)
    labels, n = ndi.label(arr)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        main = labels == int(np.argmax(sizes))
        if np.take(arr & ~main, end, axis=axis).any():
            return False
    cut = np.take(arr, end, axis=axis)
    areas = arr.sum(axis=tuple(a for a in range(3) if a != axis))
    if cut.sum() > INFERIOR_CUT_MAX_AREA_FRACTION * areas.max():
        return False
    ap_axis, ap_sign = _axis_of(mask, 1)  # LPS y grows towards posterior
    if ap_axis == axis:
        return False
    profile = arr.any(axis=tuple(a for a in range(3) if a != ap_axis))
    cut_profile = cut.any(axis=1 - (ap_axis - int(ap_axis > axis)))  # ``cut`` lacks ``axis``
    brain_idx, cut_idx = np.nonzero(profile)[0], np.nonzero(cut_profile)[0]
    length = brain_idx[-1] - brain_idx[0] + 1
    if ap_sign > 0:  # index grows towards posterior: the anterior end is the low index
        reach = brain_idx[-1] - cut_idx[0] + 1
    else:
        reach = cut_idx[-1] - brain_idx[0] + 1
    return reach <= INFERIOR_CUT_MAX_ANTERIOR_FRACTION * length


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
