"""The per-scan self-check flags an output that kept its input's face and one with no face, passes a
remodeled one, and its policy (mark / retry / fail) and records reach provenance and the manifest.

Outputs are constructed directly from pydeface's averaged head on the 128³ model grid (with its
deepbet brain mask, ``cpmae.cohort.load_source``): the mechanism is tested, not today's model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cpmae import selfcheck
from cpmae.facerec import DIFFERENT_PERSON_THRESHOLD


@dataclass
class Made:
    """Stand-in for ``pipeline.DeidResult``."""

    image: sitk.Image
    mask: sitk.Image
    timings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    brain_frame: tuple = None


@pytest.fixture(scope="module")
def head():
    """(input image, brain mask, {name: output image}) for the averaged head at 128³."""
    from cpmae import cohort, cohort_augment as aug

    src = cohort.load_source("pydeface-mean", 128)

    def img(a, dtype=np.float32):
        i = sitk.GetImageFromArray(np.asarray(a, dtype))
        i.CopyInformation(src.reference)
        return i

    brain = src.brain > 0
    # a remodeled face: the cohort's face/skull warp of subject 1 (zero near the brain), doubled
    warp, _, _, frame = cohort.draw_warp(1, 128, global_part=False)
    with torch.no_grad():
        warped = aug.apply_warp(frame.volumes, aug.Warp(warp.displacement * 2.0))[0].numpy()
    outputs = {
        "ORIGINAL": img(src.image),  # the input passed through: still its face
        "BLACK": img(np.where(brain, src.image, 0)),  # brain only: no face at all
        "REMODELED": img(np.where(brain, src.image, warped)),
    }
    return img(src.image), img(src.brain, np.uint8), outputs


def test_original_passed_through_is_flagged_recognisable_and_unchanged(head):
    x, mask, outputs = head
    c = selfcheck.self_check(x, outputs["ORIGINAL"], mask)
    assert not c["passed"]
    assert set(c["flagged"]) == {"identity", "changed"}
    assert c["checks"]["identity"]["value"] < DIFFERENT_PERSON_THRESHOLD
    assert c["checks"]["changed"]["value"] == 0.0
    assert c["checks"]["brain"] == {"result": "pass", "value": 0, "limit": 0, "unit": "brain voxels that differ"}


def test_black_output_is_flagged_faceless_with_a_seam(head):
    x, mask, outputs = head
    c = selfcheck.self_check(x, outputs["BLACK"], mask)
    assert not c["passed"]
    assert "face" in c["flagged"] and "seam" in c["flagged"]
    assert c["checks"]["face"]["value"] is None
    assert c["checks"]["seam"]["value"] > selfcheck.SEAM_RATIO_LIMIT
    assert c["checks"]["identity"]["result"] != "flag"  # no face: nothing left to recognise


def test_remodeled_face_passes_every_check(head):
    x, mask, outputs = head
    c = selfcheck.self_check(x, outputs["REMODELED"], mask)
    assert c["passed"], selfcheck.summary_line(c)
    assert c["checks"]["identity"]["value"] >= DIFFERENT_PERSON_THRESHOLD
    assert c["checks"]["face"]["result"] == "pass"
    assert c["checks"]["seam"]["value"] == pytest.approx(1.0, abs=0.05)
    json.dumps(c)  # goes into JSON records as is


def test_changed_brain_voxel_is_flagged(head):
    x, mask, outputs = head
    arr = sitk.GetArrayFromImage(outputs["REMODELED"])
    z, y, xx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[0]
    arr[z, y, xx] = np.nextafter(arr[z, y, xx], np.float32(np.inf))  # one bit of one brain voxel
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(x)
    c = selfcheck.self_check(x, out, mask)
    assert c["checks"]["brain"]["result"] == "flag" and c["checks"]["brain"]["value"] == 1


def test_a_face_check_that_cannot_run_is_flagged_not_fatal(head, monkeypatch):
    x, mask, outputs = head

    def broken(*a, **k):
        raise RuntimeError("no OpenGL here")

    monkeypatch.setattr(selfcheck, "frontal_renders", broken)
    c = selfcheck.self_check(x, outputs["REMODELED"], mask)
    assert set(c["flagged"]) == {"face", "identity"}
    assert "no OpenGL here" in c["checks"]["face"]["note"]
    assert c["checks"]["brain"]["result"] == "pass"


def test_pose_is_the_audit_brain_frame_with_a_fallback(head, monkeypatch):
    x, mask, outputs = head
    assert selfcheck.self_check(x, outputs["ORIGINAL"], mask)["pose"] == selfcheck.POSE_FRAME
    monkeypatch.setattr(selfcheck, "brain_pose", lambda image, mask: None)  # offline: no reference brain
    c = selfcheck.self_check(x, outputs["ORIGINAL"], mask)
    assert c["pose"] == selfcheck.POSE_CENTROID and set(c["flagged"]) == {"identity", "changed"}


def test_the_brain_frame_of_the_remodel_is_reused_not_registered_again(head, monkeypatch):
    """With ``face_pose`` the pipeline has registered the brain already (``DeidResult.brain_frame``);
    the self-check's renders take that frame (one registration per remodel, 0.7–0.9 s saved)."""
    x, mask, outputs = head
    frame = selfcheck.brain_pose(x, mask)
    assert frame is not None

    def no_second(image, mask):
        raise AssertionError("the brain was registered a second time")

    monkeypatch.setattr(selfcheck, "brain_pose", no_second)
    res = selfcheck.run_checked(lambda s: Made(outputs["REMODELED"], mask, info={"seed": s}, brain_frame=frame),
                                x, 0, on_flag="mark")
    assert res.info["self_check"]["pose"] == selfcheck.POSE_FRAME
    assert res.info["self_check"]["checks"]["face"]["result"] == "pass"


def test_boundary_step_measures_the_step_across_the_mask():
    brain = np.zeros((8, 8, 8), bool)
    brain[2:6, 2:6, 2:6] = True
    values = np.where(brain, 10.0, 4.0)
    assert selfcheck.boundary_step(values, brain) == pytest.approx(6.0)
    assert selfcheck.seam_ratio(values, np.where(brain, 10.0, 1.0), brain)["ratio"] == pytest.approx(1.5)


def _producer(head, by_seed):
    x, mask, outputs = head
    calls = []

    def produce(seed):
        calls.append(seed)
        return Made(outputs[by_seed.get(seed, "ORIGINAL")], mask, info={"seed": seed})

    return produce, calls


def test_mark_keeps_the_flagged_output_and_records_it(head):
    produce, calls = _producer(head, {})
    res = selfcheck.run_checked(produce, head[0], 7, on_flag="mark")
    assert calls == [7]
    assert res.info["self_check"]["flagged"] and res.info["self_check"]["on_flag"] == "mark"


def test_retry_moves_to_the_next_seed_until_one_passes(head):
    produce, calls = _producer(head, {8: "REMODELED"})
    res = selfcheck.run_checked(produce, head[0], 7, on_flag="retry", retries=3)
    assert calls == [7, 8]
    assert res.info["seed"] == 8 and res.info["self_check"]["passed"]
    assert [a["seed"] for a in res.info["self_check"]["attempts"]] == [7, 8]


def test_retry_gives_up_after_n_and_marks_the_least_flagged(head):
    produce, calls = _producer(head, {7: "ORIGINAL", 8: "BLACK", 9: "ORIGINAL"})
    res = selfcheck.run_checked(produce, head[0], 7, on_flag="retry", retries=1)
    assert calls == [7, 8]
    assert not res.info["self_check"]["passed"]


def test_fail_raises_with_its_exit_code(head):
    produce, _ = _producer(head, {})
    with pytest.raises(selfcheck.SelfCheckFailed) as err:
        selfcheck.run_checked(produce, head[0], 7, on_flag="fail", source="in.nii.gz")
    assert err.value.exit_code == selfcheck.EXIT_FLAGGED
    assert "in.nii.gz" in str(err.value) and "identity" in str(err.value)


def test_deidentify_file_records_the_check_or_writes_nothing(head, tmp_path, monkeypatch):
    """deidentify_file: the check lands in the provenance record; under fail no file is written."""
    from cpmae import pipeline
    from cpmae.io import write_image
    from cpmae.provenance import provenance_path

    x, mask, outputs = head
    src = tmp_path / "in.nii.gz"
    write_image(x, src)
    monkeypatch.setattr(pipeline, "deidentify", lambda image, **kw: Made(
        outputs["REMODELED" if kw["seed"] == 1 else "ORIGINAL"], mask,
        info={"seed": kw["seed"], "weights_sha256": "w", "steps": 1, "resolution": 128, "changed_voxels": 0}))

    out = tmp_path / "out.nii.gz"
    pipeline.deidentify_file(src, out, on_flag="retry", retries=2)
    rec = json.loads(provenance_path(out).read_text(encoding="utf-8"))
    assert rec["seed"] == 1 and rec["self_check"]["passed"]
    assert [a["seed"] for a in rec["self_check"]["attempts"]] == [0, 1]

    failed = tmp_path / "failed.nii.gz"
    with pytest.raises(selfcheck.SelfCheckFailed):
        pipeline.deidentify_file(src, failed, on_flag="fail")
    assert not failed.exists() and not provenance_path(failed).exists()

    unchecked = tmp_path / "unchecked.nii.gz"
    pipeline.deidentify_file(src, unchecked, self_check=False)
    assert "self_check" not in json.loads(provenance_path(unchecked).read_text(encoding="utf-8"))


def test_batch_counts_flagged_cases_in_summary_manifest_and_exit_code(tmp_path):
    from cpmae.batch import read_manifests, run_batch
    from review_fixtures import phantom_batch_with_flags

    in_dir, worker = phantom_batch_with_flags(tmp_path)

    out = tmp_path / "out"
    summary = run_batch(in_dir, out, resolution=128, process_case=worker)
    assert sorted(summary.flagged) == ["a.nii.gz", "c.nii.gz"]
    assert summary.exit_code == 2
    ok = [r for r in read_manifests(out / "logs") if r["status"] == "ok"]
    assert {r["case"]: r["self_check"]["flagged"] for r in ok} == {
        "a.nii.gz": ["face"], "b.nii.gz": [], "c.nii.gz": ["face"]}
    assert json.loads((out / "logs" / "summary.json").read_text(encoding="utf-8"))["flagged"] == 2
    assert json.loads((out / "a.nii.gz.provenance.json").read_text(encoding="utf-8"))["self_check"]["flagged"] == ["face"]
    again = run_batch(in_dir, out, resolution=128, process_case=worker)  # resumed: still flagged
    assert again.already_done == 3 and again.exit_code == 2


def test_cli_flags_are_parsed_for_both_commands():
    from cpmae.cli import build_parser

    p = build_parser()
    a = p.parse_args(["deidentify", "i.nii.gz", "o.nii.gz"])
    assert a.self_check is True and a.on_flag == "mark"
    a = p.parse_args(["deidentify-batch", "I", "O", "--no-self-check", "--on-flag", "retry", "--retries", "4"])
    assert a.self_check is False and a.on_flag == "retry" and a.retries == 4
