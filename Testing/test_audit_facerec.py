"""The audit's face recognizer and silhouette attackers on a small generated cohort, end to end.

The two controls pin the scale for the real face recognizer (dlib): identical pictures are
identified every time (ORIGINAL ≈ 100 %), the same blank picture for everyone scores chance
(BLACK ≈ 20 %, and no face is found in it). The new control rows (HULL ONLY, TEMPLATE REFACE)
are present, keep the brain and get a row in every table.
"""
from __future__ import annotations

import json

import pytest

from cpmae.audit.runner import ATTACKS, AuditSettings, run_audit
from cpmae.cohort import write_cohort

N = 6


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("facerec")
    write_cohort(root / "cohort", N, resolution=128, seed=23)
    settings = AuditSettings(methods=["ORIGINAL", "BLACK", "HULL_ONLY", "TEMPLATE_REFACE"], render_size=128,
                             train_subjects=2, train_variants=2, train_steps=3, folds=400, deepbet=False)
    return root, run_audit(root / "cohort", root / "out", settings)


def test_face_recognizer_original_identified_black_at_chance(audited):
    _, results = audited
    p = results["privacy"]
    assert p["ORIGINAL"]["faces_detected"]["found"] == N  # dlib finds every generated face
    assert p["ORIGINAL"]["attacks"]["facerec_head"]["mean"] > 95.0
    assert p["ORIGINAL"]["attacks"]["silhouette_face"]["mean"] > 95.0
    assert p["BLACK"]["faces_detected"]["found"] == 0
    for key in ("facerec_head", "facerec_face", "silhouette_head", "silhouette_face"):
        black = p["BLACK"]["attacks"][key]
        assert abs(black["mean"] - 20.0) < 8.0, (key, black)
        assert black["lo"] < black["mean"] < black["hi"]  # a genuine interval over subjects


def test_new_rows_present_with_every_attack(audited):
    root, results = audited
    for name in ("HULL_ONLY", "TEMPLATE_REFACE"):
        assert set(results["privacy"][name]["attacks"]) == {k for k, _, _ in ATTACKS}
        for r in results["utility"][name].values():
            assert r["error"] is None and r["metrics"]["brain_identical"], r
    # the averaged face is still a face; the hull is not
    assert results["privacy"]["TEMPLATE_REFACE"]["faces_detected"]["found"] >= N - 1
    html = (root / "out" / "report.html").read_text(encoding="utf-8")
    assert "<td>HULL_ONLY</td>" in html and "<td>TEMPLATE_REFACE</td>" in html and "face recognizer" in html
    data = json.loads((root / "out" / "results.json").read_text(encoding="utf-8"))
    assert data["cohort_seed"] == 23 and data["training_overlap"] is None  # CPMAE not audited
    header = (root / "out" / "results.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "facerec_face_lo" in header and "faces_detected_pct" in header
