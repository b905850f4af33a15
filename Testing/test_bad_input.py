"""One test per entry of docs/bad-input.md: what the user sees, the exit code, and no output.

Each bad file is built on the fly in tmp_path. Most entries run the real command line
(``cpmae mask`` or ``cpmae deidentify``) and check that it prints exactly one line,
``cpmae: error: <file>: <problem>``, exits with the documented code, and leaves nothing (no
output, no temporary file) in the output folder.
"""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cpmae.cli import main
from cpmae.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_WEIGHTS
from image_builders import (garbage, head_image, nearly_full_disk, readonly_folder, truncate, write_dicom_series,
                            write_huge_nifti_header)


def refused(argv, capsys, code, names: Path, *phrases, out: Path = None):
    """Run the CLI and check the one-line refusal; return the line."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"cpmae: error: {names}: "), err
    for phrase in phrases:
        assert phrase in err, err
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if ".cpmae-tmp-" in p.name]
    return err


def mask_cli(src: Path, tmp_path: Path, capsys, *phrases, code=EXIT_INPUT):
    out = tmp_path / "out" / "mask.nii.gz"
    out.parent.mkdir(exist_ok=True)
    return refused(["mask", src, out], capsys, code, src, *phrases, out=out)


# ----------------------------------------------------------------------------- reading the input


def test_missing_file(tmp_path, capsys):
    mask_cli(tmp_path / "nothere.nii.gz", tmp_path, capsys, "file not found")


def test_unsupported_extension(tmp_path, capsys):
    src = tmp_path / "head.png"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkUInt8), str(src))
    mask_cli(src, tmp_path, capsys, "unsupported file type '.png'", "NIfTI", "DICOM")


def test_truncated_nifti_gz(tmp_path, capsys):
    src = tmp_path / "head.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    truncate(src)
    mask_cli(src, tmp_path, capsys, "truncated or corrupt")


def test_truncated_nifti_uncompressed(tmp_path, capsys):
    src = tmp_path / "head.nii"
    sitk.WriteImage(head_image(), str(src))
    truncate(src, 0.9)
    mask_cli(src, tmp_path, capsys, "truncated or corrupt")


@pytest.mark.parametrize("name", ["head.nii", "head.nii.gz"])
def test_corrupt_nifti(tmp_path, capsys, name):
    src = tmp_path / name
    garbage(src)
    mask_cli(src, tmp_path, capsys, "corrupt or not a NIfTI file")


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_nrrd(tmp_path, capsys, compress):
    src = tmp_path / "head.nrrd"
    sitk.WriteImage(head_image(), str(src), compress)
    truncate(src, 0.7)
    mask_cli(src, tmp_path, capsys, "NRRD file is truncated or corrupt")


def test_corrupt_nrrd(tmp_path, capsys):
    src = tmp_path / "head.nrrd"
    garbage(src)
    mask_cli(src, tmp_path, capsys, "corrupt or not a NRRD file")


@pytest.mark.parametrize("srow_x", [(4.0, 0.0, 0.0, np.inf), (4.0, 0.0, 0.0, np.nan), (4.0, 0.0, 0.0, -3.7e16)])
def test_nifti_with_broken_orientation_fields(tmp_path, capsys, srow_x):
    """An infinite sform entry makes ITK's reader hang forever; it is refused before ITK sees it."""
    src = tmp_path / "head.nii"
    sitk.WriteImage(head_image(), str(src))
    data = bytearray(src.read_bytes())
    struct.pack_into("<4f", data, 280, *srow_x)  # srow_x, used since sform_code = 1
    src.write_bytes(bytes(data))
    mask_cli(src, tmp_path, capsys, "holds NaN, infinite or absurd values")


def test_dicom_folder_with_mixed_series(tmp_path, capsys):
    src = tmp_path / "dicom"
    uids = ["1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2"]
    write_dicom_series(head_image((40, 40, 30)), src, uids[0], "a")
    write_dicom_series(head_image((40, 40, 30), seed=1), src, uids[1], "b")
    mask_cli(src, tmp_path, capsys, "mixes 2 DICOM series", uids[0], uids[1])


def test_folder_without_dicom(tmp_path, capsys):
    src = tmp_path / "notes"
    src.mkdir()
    (src / "readme.txt").write_text("not an image", encoding="utf-8")
    mask_cli(src, tmp_path, capsys, "no DICOM series")


def test_2d_image(tmp_path, capsys):
    src = tmp_path / "slice.nii.gz"
    img = sitk.Image(200, 200, sitk.sitkInt16)
    sitk.WriteImage(img, str(src))
    mask_cli(src, tmp_path, capsys, "2-D image")


def test_4d_series_is_refused_with_how_to_extract(tmp_path, capsys):
    src = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40, 3), np.int16), np.diag([4, 4, 4, 1.0])), src)
    mask_cli(src, tmp_path, capsys, "4-D series with 3 volumes", "extract one volume")


def test_nan_and_inf_voxels(tmp_path, capsys):
    src = tmp_path / "nan.nii.gz"
    arr = sitk.GetArrayFromImage(head_image(dtype=np.float32)).transpose(2, 1, 0)
    arr[5, 5, 5], arr[6, 6, 6] = np.nan, np.inf
    nib.save(nib.Nifti1Image(arr, np.diag([4, 4, 4, 1.0])), src)  # ITK alone would read these as 0
    mask_cli(src, tmp_path, capsys, "2 voxels are NaN or infinite")


def test_scaled_integer_nifti_is_read_as_its_scaled_values(tmp_path):
    """Not refused: the rule is that scl_slope/scl_inter define the image; it comes back float32."""
    from cpmae.io import read_image, write_image

    src = tmp_path / "scaled.nii.gz"
    raw = sitk.GetArrayFromImage(head_image()).transpose(2, 1, 0)
    ni = nib.Nifti1Image(raw, np.diag([4, 4, 4, 1.0]))
    ni.header.set_slope_inter(0.5, 10.0)
    nib.save(ni, src)
    img = read_image(src)
    assert img.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(img).transpose(2, 1, 0), raw * 0.5 + 10.0)
    out = write_image(img, tmp_path / "out.nii.gz")
    written = nib.load(out)
    assert written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.get_fdata(), raw * 0.5 + 10.0)


def test_extreme_anisotropy(tmp_path, capsys):
    src = tmp_path / "thick.nii.gz"
    sitk.WriteImage(head_image((160, 160, 30), (1.0, 1.0, 6.0)), str(src))
    mask_cli(src, tmp_path, capsys, "1x1x6 mm is too anisotropic")


def test_tiny_field_of_view(tmp_path, capsys):
    src = tmp_path / "patch.nii.gz"
    sitk.WriteImage(head_image((40, 40, 40), (1.0, 1.0, 1.0)), str(src))
    mask_cli(src, tmp_path, capsys, "field of view 40x40x40 mm is too small")


def test_volume_larger_than_memory_is_refused_before_allocating(tmp_path, capsys):
    import resource

    src = tmp_path / "huge.nii"
    write_huge_nifti_header(src)  # announces 2048³ int16 = 16 GiB, holds 4 KiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mask_cli(src, tmp_path, capsys, "2048x2048x2048 voxels", "larger than this tool accepts")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: nothing allocated


def test_vector_pixels(tmp_path, capsys):
    src = tmp_path / "rgb.nrrd"
    img = head_image()
    sitk.WriteImage(sitk.Compose([img, img, img]), str(src))
    mask_cli(src, tmp_path, capsys, "3 components", "scalar")


def test_no_brain_found(tmp_path, capsys):
    src = tmp_path / "air.nii.gz"
    sitk.WriteImage(head_image((64, 64, 64)) * 0, str(src))
    mask_cli(src, tmp_path, capsys, "no brain found")


# ----------------------------------------------------------------------------- user-supplied masks


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A valid but tiny 128³ bundle, so the CLI gets past loading weights in milliseconds."""
    import torch

    from cpmae.models.prior import PriorConfig, TokenPrior
    from cpmae.models.tokenizer import Tokenizer, TokenizerConfig
    from cpmae.weights import save_bundle

    torch.manual_seed(0)
    tok = TokenizerConfig(in_size=128, channels=(4, 8), blocks=(1, 1))
    prior = PriorConfig(embed_dim=4, channels=(8, 8), blocks=1, head_channels=8, attention=False)
    return save_bundle(tmp_path_factory.mktemp("w") / "tiny-128", Tokenizer(tok), Tokenizer(tok),
                       TokenPrior(prior), 128, {"training_data": "none: random initialisation for tests"})


@pytest.fixture
def phantom_files(phantom, tmp_path):
    img, brain = phantom
    src, mask = tmp_path / "head.nii.gz", tmp_path / "brain.nii.gz"
    sitk.WriteImage(img, str(src))
    sitk.WriteImage(brain, str(mask))
    return src, mask


def deidentify_cli(tiny_weights, src, mask, tmp_path, capsys, names, *phrases, code=EXIT_INPUT, extra=()):
    out = tmp_path / "out" / "deid.nii.gz"
    out.parent.mkdir(exist_ok=True)
    argv = ["deidentify", src, out, "--mask", mask, "--weights", tiny_weights, "--resolution", "128",
            "--steps", "1", "--device", "cpu", "--progress", "none", *extra]
    return refused(argv, capsys, code, names, *phrases, out=out)


def _save_like(arr, reference, path):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(reference)
    sitk.WriteImage(img, str(path))


def test_user_mask_of_another_geometry(tiny_weights, phantom, phantom_files, tmp_path, capsys):
    src, _ = phantom_files
    other = tmp_path / "other.nii.gz"
    m = sitk.Image(phantom[1])
    m.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(m, str(other))
    deidentify_cli(tiny_weights, src, other, tmp_path, capsys, other, "mask geometry differs", "(3, 3, 3)",
                   "(4, 4, 4)")


def test_empty_user_mask(tiny_weights, phantom, phantom_files, tmp_path, capsys):
    src, _ = phantom_files
    empty = tmp_path / "empty.nii.gz"
    _save_like(np.zeros((64, 64, 64)), phantom[1], empty)
    deidentify_cli(tiny_weights, src, empty, tmp_path, capsys, empty, "brain mask is empty")


def test_implausible_user_mask_volume(tiny_weights, phantom, phantom_files, tmp_path, capsys):
    src, _ = phantom_files
    small = tmp_path / "small.nii.gz"
    arr = np.zeros((64, 64, 64))
    arr[28:36, 28:36, 28:36] = 1  # 33 cm³
    _save_like(arr, phantom[1], small)
    deidentify_cli(tiny_weights, src, small, tmp_path, capsys, small, "33 cm³ is outside the plausible 800-2200")


def test_user_mask_touching_the_border(tiny_weights, phantom, phantom_files, tmp_path, capsys):
    src, _ = phantom_files
    cut = tmp_path / "cut.nii.gz"
    arr = sitk.GetArrayFromImage(phantom[1])
    arr[32, 32, :] = 1  # a line of "brain" from the brain out through both sides of the scan
    _save_like(arr, phantom[1], cut)
    deidentify_cli(tiny_weights, src, cut, tmp_path, capsys, cut, "touches the border")


# ----------------------------------------------------------------------------- weights


def test_weights_whose_sha256_does_not_match(tiny_weights, phantom_files, tmp_path, capsys):
    src, mask = phantom_files
    bad = tmp_path / "tampered"
    shutil.copytree(tiny_weights, bad)
    f = bad / "prior.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    out = tmp_path / "out" / "deid.nii.gz"
    out.parent.mkdir()
    rc = main(["deidentify", str(src), str(out), "--mask", str(mask), "--weights", str(bad), "--resolution",
               "128", "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_WEIGHTS and "sha256 mismatch" in err and "\n" not in err, err
    assert not out.exists()


def test_weights_for_another_resolution(tiny_weights, phantom_files, tmp_path, capsys):
    src, mask = phantom_files
    out = tmp_path / "out" / "deid.nii.gz"
    out.parent.mkdir()
    rc = main(["deidentify", str(src), str(out), "--mask", str(mask), "--weights", str(tiny_weights),
               "--resolution", "256", "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_WEIGHTS and "for 128³, not 256³" in err and "\n" not in err, err
    assert not out.exists()


def _tampered_bundle(tiny_weights, tmp_path, edit_manifest=None, component="prior", content=None) -> Path:
    """A copy of the tiny bundle with one file's bytes replaced (sha256 updated) and/or its manifest edited."""
    import hashlib
    import json

    bad = tmp_path / "tampered"
    shutil.copytree(tiny_weights, bad)
    manifest = json.loads((bad / "manifest.json").read_text(encoding="utf-8"))
    if content is not None:
        (bad / f"{component}.safetensors").write_bytes(content)
        manifest["components"][component]["sha256"] = hashlib.sha256(content).hexdigest()
    if edit_manifest is not None:
        edit_manifest(manifest)
    (bad / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return bad


def weights_refused(bundle, phantom_files, tmp_path, capsys, names, *phrases):
    src, mask = phantom_files
    out = tmp_path / "out" / "deid.nii.gz"
    out.parent.mkdir(exist_ok=True)
    return refused(["deidentify", src, out, "--mask", mask, "--weights", bundle, "--resolution", "128",
                    "--steps", "1", "--device", "cpu", "--progress", "none"], capsys, EXIT_WEIGHTS, names, *phrases,
                   out=out)


def test_weights_file_that_is_not_safetensors(tiny_weights, phantom_files, tmp_path, capsys):
    bad = _tampered_bundle(tiny_weights, tmp_path, content=b"this is not a safetensors file" * 10)
    weights_refused(bad, phantom_files, tmp_path, capsys, bad / "prior.safetensors", "not a valid safetensors file")


def test_pickled_weights_are_never_unpickled(tiny_weights, phantom_files, tmp_path, capsys):
    """A torch.save pickle whose loading would run code: refused as not safetensors, and the code never runs."""
    import pickle

    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = _tampered_bundle(tiny_weights, tmp_path, content=pickle.dumps({"w": Payload()}))
    weights_refused(bad, phantom_files, tmp_path, capsys, bad / "prior.safetensors", "never unpickled")
    assert not marker.exists()


def test_weights_file_that_cannot_be_read(tiny_weights, phantom_files, tmp_path, capsys):
    bad = _tampered_bundle(tiny_weights, tmp_path)
    (bad / "prior.safetensors").unlink()
    (bad / "prior.safetensors").mkdir()  # unreadable as a file, also for root
    weights_refused(bad, phantom_files, tmp_path, capsys, bad / "prior.safetensors", "missing")
    (bad / "prior.safetensors").rmdir()
    (bad / "prior.safetensors").symlink_to(bad / "prior.safetensors")  # a symlink loop: ELOOP on open
    weights_refused(bad, phantom_files, tmp_path, capsys, bad / "prior.safetensors", "cannot read the weights file")
    (bad / "prior.safetensors").unlink()
    shutil.copy(tiny_weights / "prior.safetensors", bad / "prior.safetensors")
    os.chmod(bad / "prior.safetensors", 0)
    if os.geteuid() != 0:  # root reads it anyway
        weights_refused(bad, phantom_files, tmp_path, capsys, bad / "prior.safetensors", "cannot read the weights file")


@pytest.mark.parametrize("edit, phrase", [
    (lambda m: m.pop("resolution"), "lacks a valid resolution"),
    (lambda m: m["components"]["prior"].pop("sha256"), "lacks a valid sha256 for prior"),
    (lambda m: m["components"]["prior"].update(sha256="abc"), "lacks a valid sha256 for prior"),
    (lambda m: m["components"].pop("brain_tokenizer"), "lists no brain_tokenizer"),
    (lambda m: m["components"]["prior"].pop("config"), "lacks the config of prior"),
    (lambda m: m["components"]["prior"]["config"].update(no_such_option=3), "config is not usable"),
    (lambda m: m["components"]["prior"]["config"].update(channels=[16, 16]), "does not fit"),
])
def test_manifest_lacking_what_loading_needs(tiny_weights, phantom_files, tmp_path, capsys, edit, phrase):
    bad = _tampered_bundle(tiny_weights, tmp_path, edit_manifest=edit)
    names = bad if "does not fit" in phrase else bad / "manifest.json"
    if "not usable" in phrase:  # cpmae.models.build names the bundle, then the manifest
        names = f"{bad}: manifest.json"
    weights_refused(bad, phantom_files, tmp_path, capsys, names, phrase)


@pytest.mark.parametrize("path", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors",
                                  "link.safetensors"])
def test_manifest_paths_must_stay_inside_the_bundle(tiny_weights, phantom_files, tmp_path, capsys, path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(tiny_weights / "prior.safetensors", outside)  # a valid file, so only the path can be refused
    bad = _tampered_bundle(tiny_weights, tmp_path,
                           edit_manifest=lambda m: m["components"]["prior"].update(file=path))
    (bad / "link.safetensors").symlink_to(outside)
    weights_refused(bad, phantom_files, tmp_path, capsys, bad / "manifest.json", "outside the bundle folder")


# ----------------------------------------------------------------------------- the output


def test_output_path_equal_to_input(tmp_path, capsys):
    src = tmp_path / "head.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    before = src.read_bytes()
    refused(["mask", src, src, "--overwrite"], capsys, EXIT_OUTPUT, src, "output path is the input")
    assert src.read_bytes() == before


def test_output_path_equal_to_input_through_another_spelling(tmp_path, capsys):
    src = tmp_path / "head.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    alias = tmp_path / "link" / "." / "head.nii.gz"
    refused(["mask", src, alias, "--overwrite"], capsys, EXIT_OUTPUT, alias, "output path is the input")


def test_output_exists(tmp_path, capsys):
    src, out = tmp_path / "head.nii.gz", tmp_path / "mask.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    out.write_bytes(b"precious")
    refused(["mask", src, out], capsys, EXIT_OUTPUT, out, "output exists; pass --overwrite")
    assert out.read_bytes() == b"precious"


def test_read_only_output_folder(tmp_path, capsys):
    src = tmp_path / "head.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    folder = readonly_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder on this machine refuses file creation")
    out = folder / "mask.nii.gz"
    refused(["mask", src, out], capsys, EXIT_OUTPUT, out, "cannot write in output folder")


def test_output_folder_missing(tmp_path, capsys):
    src = tmp_path / "head.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    out = tmp_path / "no" / "such" / "mask.nii.gz"
    refused(["mask", src, out], capsys, EXIT_OUTPUT, out, "does not exist")


def test_output_under_a_file(tmp_path, capsys):
    src = tmp_path / "head.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    out = src / "mask.nii.gz"  # the "folder" is the input file
    refused(["mask", src, out], capsys, EXIT_OUTPUT, out, "is not a folder")


def test_unsupported_output_extension(tmp_path, capsys):
    src = tmp_path / "head.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    out = tmp_path / "mask.png"
    refused(["mask", src, out], capsys, EXIT_OUTPUT, out, "output must end in .nii.gz, .nii or .nrrd")


def _no_outputs(folder: Path, *names: str) -> None:
    left = sorted(p.name for p in folder.iterdir() if p.name not in ("filler",))
    assert not [n for n in left if n in names or ".cpmae-tmp-" in n], left


def test_full_disk_leaves_nothing_under_the_final_name(tiny_weights, phantom_files, tmp_path, capsys):
    """A real full file system (a nearly full tmpfs): one line, exit 3, no image, no provenance, no temp."""
    src, mask = phantom_files
    with nearly_full_disk(tmp_path) as disk:
        out = disk / "deid.nii.gz"
        rc = main([str(a) for a in ["deidentify", src, out, "--mask", mask, "--weights", tiny_weights,
                                    "--resolution", "128", "--steps", "1", "--device", "cpu", "--progress", "none"]])
        err = capsys.readouterr().err.strip()
        assert rc == EXIT_OUTPUT, err
        assert err.startswith(f"cpmae: error: {out}: ") and "\n" not in err, err
        assert "nothing was written" in err, err
        _no_outputs(disk, out.name, out.name + ".provenance.json")
        # a rerun is not refused with "output exists": nothing of the failed run is in the way
        (disk / "filler").unlink()
        assert main([str(a) for a in ["deidentify", src, out, "--mask", mask, "--weights", tiny_weights,
                                      "--resolution", "128", "--steps", "1", "--device", "cpu",
                                      "--progress", "none"]]) == 0
        assert out.is_file() and (disk / "deid.nii.gz.provenance.json").is_file()


@pytest.mark.parametrize("name", ["deid.nii.gz", "deid.nii", "deid.nrrd"])
def test_short_image_write_is_exit_3_and_nothing_is_published(tiny_weights, phantom_files, tmp_path, capsys,
                                                              monkeypatch, name):
    """A writer that silently writes too few bytes (what ITK's NIfTI writer does on a full disk)."""
    import cpmae.io as cio

    real = cio._write_image_file

    def short_writer(img, tmp, ext, shown):
        real(img, tmp, ext, shown)
        data = Path(tmp).read_bytes()
        Path(tmp).write_bytes(data[: len(data) * 2 // 3])

    monkeypatch.setattr(cio, "_write_image_file", short_writer)
    src, mask = phantom_files
    out = tmp_path / "out" / name
    out.parent.mkdir()
    refused(["deidentify", src, out, "--mask", mask, "--mask-out", tmp_path / "out" / "brain.nii.gz",
             "--weights", tiny_weights, "--resolution", "128", "--steps", "1", "--device", "cpu",
             "--progress", "none"], capsys, EXIT_OUTPUT, tmp_path / "out" / "brain.nii.gz", "short or corrupt write",
            out=out)
    assert list(out.parent.iterdir()) == []  # neither the mask, nor the image, nor its provenance


def test_full_disk_while_writing_the_provenance_removes_the_image(tiny_weights, phantom_files, tmp_path, capsys,
                                                                 monkeypatch):
    """The provenance record is published with its image: a failed record takes the image with it."""
    import errno

    import cpmae.atomic as atomic

    def no_space(tmp, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_into", no_space)
    src, mask = phantom_files
    out = tmp_path / "out" / "deid.nii.gz"
    out.parent.mkdir()
    refused(["deidentify", src, out, "--mask", mask, "--weights", tiny_weights, "--resolution", "128",
             "--steps", "1", "--device", "cpu", "--progress", "none"], capsys, EXIT_OUTPUT,
            out.with_name(out.name + ".provenance.json"), "no space left on the device", out=out)
    assert list(out.parent.iterdir()) == []


def test_mask_out_equal_to_the_output(tiny_weights, phantom_files, tmp_path, capsys):
    src, mask = phantom_files
    out = tmp_path / "out" / "deid.nii.gz"
    out.parent.mkdir()
    refused(["deidentify", src, out, "--mask", mask, "--mask-out", out.parent / "." / out.name, "--weights",
             tiny_weights, "--resolution", "128", "--steps", "1", "--device", "cpu", "--progress", "none"],
            capsys, EXIT_OUTPUT, out.parent / "." / out.name, "brain mask (--mask-out) is the same file as the "
            "de-identified image (OUTPUT)", out=out)


def test_nifti_without_orientation(tmp_path, capsys):
    """qform_code = sform_code = 0 once ended in a message that blamed the mask."""
    src = tmp_path / "head.nii.gz"
    sitk.WriteImage(head_image(), str(src))
    ni = nib.load(str(src))
    hdr = ni.header.copy()
    hdr.set_qform(None, code=0)
    hdr.set_sform(None, code=0)
    nib.save(nib.Nifti1Image(np.asanyarray(ni.dataobj), None, hdr), str(src))
    assert nib.load(str(src)).header["qform_code"] == nib.load(str(src)).header["sform_code"] == 0
    err = mask_cli(src, tmp_path, capsys, "no orientation (qform_code = sform_code = 0)")
    assert "mask" not in err.split(": ", 2)[2]


@pytest.mark.parametrize("name", ["head.nii", "head.nii.gz"])
def test_nifti_with_negative_pixdim(tmp_path, capsys, name):
    import gzip

    plain = tmp_path / "plain.nii"
    sitk.WriteImage(head_image(), str(plain))
    data = bytearray(plain.read_bytes())
    struct.pack_into("<f", data, 80, -4.0)  # pixdim[1]
    src = tmp_path / name
    src.write_bytes(gzip.compress(bytes(data)) if name.endswith(".gz") else bytes(data))
    mask_cli(src, tmp_path, capsys, "voxel spacing (pixdim[1..3] = -4, 4, 4) is negative or zero")


def test_dicom_tags_and_folder_names_never_reach_the_outputs(tiny_weights, phantom, tmp_path, capsys):
    """What held (issue 14): a DICOM series named after the patient leaves no tag or name in any output byte."""
    import gzip

    img, brain = phantom
    folder = tmp_path / "Doe_Jane_MRN4455667"
    write_dicom_series(img, folder, "1.2.826.0.1.3680043.2.1125.9.7")
    mask = tmp_path / "brain.nii.gz"
    sitk.WriteImage(brain, str(mask))
    out = tmp_path / "out" / "deid.nii.gz"
    out.parent.mkdir()
    rc = main([str(a) for a in ["deidentify", folder, out, "--mask", mask, "--mask-out", out.parent / "m.nii.gz",
                                "--weights", tiny_weights, "--resolution", "128", "--steps", "1", "--device", "cpu",
                                "--progress", "none"]])
    assert rc == 0, capsys.readouterr().err
    files = sorted(out.parent.iterdir())
    assert [p.name for p in files] == ["deid.nii.gz", "deid.nii.gz.provenance.json", "m.nii.gz"]
    for p in files:
        data = p.read_bytes()
        if p.name.endswith(".gz"):
            data += gzip.decompress(data)
        for secret in (b"Doe", b"Jane", b"4455667", b"1.2.826.0.1.3680043", folder.name.encode()):
            assert secret not in data, (secret, p.name)
