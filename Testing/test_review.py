"""`cpmae review` without a browser: reading a batch's cases, writing decisions, refusals, the report."""
from __future__ import annotations

import json
import os

import pytest

from cpmae.batch import Manifest, run_batch
from cpmae.errors import InputError, OutputError
from cpmae.review import cases as C
from cpmae.review.report import write_report
from review_fixtures import phantom_batch_with_flags


@pytest.fixture
def batch_out(tmp_path):
    """A flat batch of three phantom heads; b passes its (stand-in) self-check, a and c are flagged."""
    in_dir, worker = phantom_batch_with_flags(tmp_path)
    out = tmp_path / "out"
    run_batch(in_dir, out, resolution=128, process_case=worker)
    return out


def test_cases_come_from_the_manifest(batch_out):
    cases = {c.case: c for c in C.load_cases(batch_out)}
    assert sorted(cases) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert cases["a.nii.gz"].flagged == ["face"] and cases["b.nii.gz"].check_state == "passed"
    assert C.input_path(cases["a.nii.gz"]) == batch_out.parent / "in" / "a.nii.gz"
    assert C.output_path(batch_out, cases["a.nii.gz"]) == (batch_out / "a.nii.gz").resolve()
    counts = C.counts(list(cases.values()))
    assert counts["flagged"] == 2 and counts["passed"] == 1 and counts["undecided"] == 3


def test_decision_lands_in_manifest_and_provenance_atomically(batch_out):
    manifest = batch_out / "logs" / "manifest.jsonl"
    before = manifest.read_text(encoding="utf-8")
    inode = os.stat(manifest).st_ino
    C.record_decision(batch_out, "a.nii.gz", "rejected", "  still\nlooks like\tthe patient ")
    after = manifest.read_text(encoding="utf-8")
    assert after.startswith(before) and os.stat(manifest).st_ino != inode  # old lines kept, file replaced
    event = json.loads(after.splitlines()[-1])
    assert event["status"] == "reviewed" and event["decision"] == "rejected"
    assert event["reason"] == "still looks like the patient"  # one line
    prov = json.loads((batch_out / "a.nii.gz.provenance.json").read_text(encoding="utf-8"))
    assert prov["review"]["decision"] == "rejected" and prov["output_sha256"]
    C.record_decision(batch_out, "a.nii.gz", "approved")  # the latest decision wins
    assert {c.case: c.decision for c in C.load_cases(batch_out)}["a.nii.gz"] == "approved"
    # the batch still resumes over a manifest with review events: nothing is redone
    summary = run_batch(batch_out.parent / "in", batch_out, resolution=128,
                        process_case=lambda *a, **k: pytest.fail("a finished case was redone"))
    assert summary.already_done == 3


def test_decision_refused_while_a_batch_writes_the_manifest(batch_out):
    holder = Manifest(batch_out / "logs" / "manifest.jsonl")
    try:
        with pytest.raises(OutputError, match="deidentify-batch run is writing"):
            C.record_decision(batch_out, "a.nii.gz", "approved")
    finally:
        holder.close()
    assert "reviewed" not in (batch_out / "logs" / "manifest.jsonl").read_text(encoding="utf-8")


def test_output_outside_the_folder_is_refused(batch_out, tmp_path):
    manifest = batch_out / "logs" / "manifest.jsonl"
    with open(manifest, "a") as fh:
        fh.write(json.dumps({"case": "evil", "status": "ok", "output": "../outside.nii.gz"}) + "\n")
    evil = {c.case: c for c in C.load_cases(batch_out)}["evil"]
    assert evil.problems and "outside" in evil.problems[0]
    with pytest.raises(OutputError, match="outside"):
        C.output_path(batch_out, evil)
    with pytest.raises(OutputError, match="outside"):
        C.record_decision(batch_out, "evil", "approved")
    assert '"reviewed"' not in manifest.read_text(encoding="utf-8")


def test_missing_input_and_bad_folders(batch_out, tmp_path):
    (batch_out.parent / "in" / "b.nii.gz").unlink()
    assert C.input_path({c.case: c for c in C.load_cases(batch_out)}["b.nii.gz"]) is None
    with pytest.raises(InputError, match="not a batch output folder"):
        C.load_cases(tmp_path / "in")
    with pytest.raises(InputError):
        C.record_decision(batch_out, "nope.nii.gz", "approved")
    with pytest.raises(InputError):
        C.record_decision(batch_out, "a.nii.gz", "maybe")


def test_report_counts_thumbnails_of_flagged_outputs_and_no_input_paths(batch_out, tmp_path):
    C.record_decision(batch_out, "c.nii.gz", "rejected", "no face")
    path, counts = write_report(batch_out, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert counts["flagged"] == 2 and counts["rejected"] == 1
    assert text.count("<img src='data:image/png;base64,") == 4  # frontal + profile of the 2 flagged outputs
    assert "no face" in text and "rejected" in text
    assert str(batch_out.parent / "in") not in text and "input_sha256" not in text


def test_review_command_rejects_a_folder_without_manifest(tmp_path, capsys):
    from cpmae.cli import main

    assert main(["review", str(tmp_path)]) == 2
    assert "not a batch output folder" in capsys.readouterr().err


def test_review_command_exports(batch_out, tmp_path, capsys):
    from cpmae.cli import main

    assert main(["review", str(batch_out), "--export", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file() and "2 flagged" in capsys.readouterr().err
