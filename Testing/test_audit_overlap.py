"""The audit refuses weights trained on the cohort it is asked to evaluate (fake manifests, no training)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import SimpleITK as sitk

from cpmae.audit import overlap
from cpmae.errors import EXIT_WEIGHTS
from cpmae.weights import resolve_bundle_path
from phantoms import phantom_image


def test_seed_in_training_seeds_is_refused():
    manifest = {"data": {"cohort_seeds": [0, 7]}}
    with pytest.raises(overlap.TrainedOnCohortError, match="trained on cohort seed 7"):
        overlap.check_disjoint(manifest, 7, "w")
    assert overlap.check_disjoint(manifest, 8) == "disjoint"


def test_unknown_seeds_warn_not_refuse():
    assert overlap.check_disjoint({"name": "old"}, 0) == "unknown"
    assert overlap.check_disjoint({"data": {}}, 0) == "unknown"
    assert overlap.check_disjoint({"data": {"cohort_seeds": [0]}}, None) == "not a generated cohort"


def test_cohort_seed_read_from_cohort_json(tmp_path):
    assert overlap.cohort_seed(tmp_path) is None
    (tmp_path / "cohort.json").write_text(json.dumps({"seed": 42}), encoding="utf-8")
    assert overlap.cohort_seed(tmp_path) == 42


def test_cli_refuses_overlapping_seed_with_one_line_and_no_output(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(resolve_bundle_path(None, 128), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    manifest["data"] = {"cohort_seeds": [3]}
    (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for s in range(5):
        img, mask = phantom_image(seed=s)
        sitk.WriteImage(img, str(cohort / f"ph{s}.nii.gz"))
        sitk.WriteImage(mask, str(cohort / f"ph{s}_mask.nii.gz"))
    (cohort / "cohort.json").write_text(json.dumps({"seed": 3}), encoding="utf-8")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "cpmae", "audit", str(cohort), "--out", str(out),
                           "--methods", "ORIGINAL,CPMAE", "--weights", str(bundle), "--no-deepbet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_WEIGHTS, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "trained on cohort seed 3" in proc.stderr
    assert not out.exists()
