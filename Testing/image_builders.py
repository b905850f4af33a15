"""Small image files built on the fly for the io and bad-input tests (never real subjects)."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def head_image(size=(40, 40, 40), spacing=(4.0, 4.0, 4.0), dtype=np.int16, seed=0) -> sitk.Image:
    """A bright ellipsoid in air: enough of a 'head' for the readers (160 mm field of view)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = size[2], size[1], size[0]
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (nz, ny, nx)], indexing="ij")
    arr = ((x / 0.7) ** 2 + (y / 0.8) ** 2 + (z / 0.8) ** 2 <= 1) * 500.0 + rng.normal(0, 5, (nz, ny, nx))
    img = sitk.GetImageFromArray(np.clip(arr, 0, None).astype(dtype))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(-(n - 1) * s / 2 for n, s in zip(size, spacing)))
    return img


def write_dicom_series(img: sitk.Image, folder: Path, series_uid: str, prefix: str = "slice") -> None:
    """Write ``img`` as one DICOM file per axial slice with the given SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    img = sitk.Cast(img, sitk.sitkInt16)
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0010|0010": "Doe^Jane",  # identifying text that must never reach an output
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",  # StudyInstanceUID
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*img.GetDirection()[0::3], *img.GetDirection()[1::3])),
            "0008|0018": f"{series_uid}.{k + 1}",  # SOPInstanceUID
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k:04d}.dcm"))
        writer.Execute(sl)


def write_huge_nifti_header(path: Path, shape=(2048, 2048, 2048)) -> None:
    """A NIfTI file whose header announces a huge volume but holds almost nothing."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_zooms((0.25,) * len(shape))
    header["vox_offset"] = 352
    with open(path, "wb") as fh:
        fh.write(header.binaryblock)
        fh.write(b"\0" * 4 + b"\0" * 4096)


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def garbage(path: Path, n: int = 4096) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(n))


def readonly_folder(tmp_path: Path):
    """A folder in which creating a file fails, also for root; None if none can be had here."""
    import tempfile

    ro = tmp_path / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o555)
    candidates = [ro, Path("/sys/kernel"), Path("/proc/self")]
    for folder in candidates:
        if not folder.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(dir=folder)
        except OSError:
            return folder
        os.close(fd)
        os.unlink(probe)
    return None


@contextlib.contextmanager
def nearly_full_disk(tmp_path: Path, free_bytes: int = 16 * 1024):
    """A 6 MB tmpfs mounted under ``tmp_path`` with about ``free_bytes`` left: a full disk in miniature.

    Skips the test where mounting is not allowed (not root, or a container without the
    capability); the write-wrapper tests cover the same code paths everywhere.
    """
    import pytest

    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and the mount capability)")
    try:
        keep = mnt / "reserve"
        keep.write_bytes(b"\0" * free_bytes)
        with open(mnt / "filler", "wb", buffering=0) as fh:  # fill to the last byte, then free the reserve
            try:
                while fh.write(b"\0" * 4096):
                    pass
            except OSError:
                pass
        keep.unlink()
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
