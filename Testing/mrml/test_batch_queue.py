"""The Slicer batch review queue over a real deidentify-batch output folder (tiny heads, no model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from mrml_heads import head_image


@pytest.fixture
def batch(tmp_path):
    from cpmae.batch import run_batch
    from cpmae.io import read_image, write_image

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    image, _ = head_image(size=32, oblique=False)
    for name in ("sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz", "sub-03_T1w.nii.gz"):
        write_image(image, in_dir / name)

    def worker(in_path, out_path, *, seed, **_):
        write_image(sitk.Cast(read_image(in_path), sitk.sitkFloat32) * 0.5, out_path)
        return {"seed": seed, "steps": 1, "weights_sha256": "test", "resolution": 128, "changed_voxels": 1}

    out = tmp_path / "out"
    run_batch(in_dir, out, resolution=128, process_case=worker)
    thumbs = tmp_path / "thumbs"
    thumbs.mkdir()
    (thumbs / "sub-02_T1w_frontal.png").write_bytes(b"png")
    return out, thumbs


def test_queue_lists_cases_moves_and_resumes_where_the_reader_stopped(batch):
    from CPMAEDeidentifyLib.faceqa import BatchQueue

    out, thumbs = batch
    queue = BatchQueue(out, thumbs)
    assert [row[:2] for row in queue.rows()] == [(c, "ok") for c in (
        "sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz", "sub-03_T1w.nii.gz")]
    assert queue.index == 0  # nothing decided yet: the first case
    assert queue.move(+1).case == "sub-02_T1w.nii.gz"
    assert [p.name for p in queue.thumbnails()] == ["sub-02_T1w_frontal.png"]
    assert queue.outputPath().is_file() and queue.outputPath().parent.resolve() == out.resolve()
    assert queue.move(+5).case == "sub-03_T1w.nii.gz"  # stops at the end
    assert queue.move(-1).case == "sub-02_T1w.nii.gz"
    assert BatchQueue(out, thumbs).current.case == "sub-02_T1w.nii.gz"  # reopened: same place


def test_decisions_go_to_the_manifest_and_provenance_and_reopen_with_the_queue(batch):
    from cpmae.review import cases
    from CPMAEDeidentifyLib.faceqa import BatchQueue

    out, _ = batch
    queue = BatchQueue(out)
    with pytest.raises(ValueError, match="needs a reason"):
        queue.decide(approved=False)
    event = queue.decide(approved=False, reason="ears remain")
    assert event["decision"] == "rejected" and event["reason"] == "ears remain"
    provenance = Path(str(queue.outputPath()) + ".provenance.json")
    assert json.loads(provenance.read_text(encoding="utf-8"))["review"]["reason"] == "ears remain"
    assert queue.nextUndecided().case == "sub-02_T1w.nii.gz"
    queue.decide(approved=True)
    reopened = BatchQueue(out)
    assert [r[3] for r in reopened.rows()] == ["rejected", "approved", ""]
    assert {c.case: c.decision for c in cases.load_cases(out)}["sub-01_T1w.nii.gz"] == "rejected"  # the page agrees


def test_a_folder_that_is_no_batch_output_is_one_clear_error(tmp_path):
    from cpmae.errors import InputError
    from CPMAEDeidentifyLib.faceqa import BatchQueue

    with pytest.raises(InputError, match="not a batch output folder"):  # cpmae.review.cases says it
        BatchQueue(tmp_path)
