"""Model catalogue + download cache, and the training sub-panel's command plan (no Qt, no network)."""
from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from cpmae.errors import WeightsError
from CPMAEDeidentifyLib import jobs, models, training


def test_shipped_catalogue_entries_are_complete_and_builtin_ones_point_into_the_engine():
    entries = models.loadCatalogue()
    assert {e.resolution for e in entries} == {128, 256}
    for e in entries:
        assert e.license and e.version and e.name
        if e.builtin:
            assert models.localPath(e).parent == models.BUILTIN_WEIGHTS


def _bundle_zip(tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("demo/manifest.json", json.dumps({"format": "cpmae-weights/1"}))
        zf.writestr("demo/prior.safetensors", b"\0" * 64)
    data = archive.read_bytes()
    return archive, hashlib.sha256(data).hexdigest(), len(data)


def _entry(url, sha, size):
    return models.ModelEntry(name="remote", version="1.0", url=url, sha256=sha, size=size, license="CC-BY-4.0",
                             resolution=128)


def test_download_is_verified_unpacked_into_the_cache_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CPMAE_CACHE", str(tmp_path / "cache"))
    archive, sha, size = _bundle_zip(tmp_path)
    entry = _entry(archive.as_uri(), sha, size)
    seen = []
    folder = models.ensureModel(entry, lambda done, total: seen.append((done, total)))
    assert folder == tmp_path / "cache" / "models" / "remote-1.0"
    assert (folder / "manifest.json").is_file() and models.isAvailable(entry)
    assert seen and seen[-1] == (size, size)
    archive.unlink()  # second call must not download again
    assert models.ensureModel(entry) == folder
    assert [p.name for p in folder.parent.iterdir()] == ["remote-1.0"]  # no temp download left


def test_checksum_mismatch_and_unreachable_url_name_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("CPMAE_CACHE", str(tmp_path / "cache"))
    archive, sha, size = _bundle_zip(tmp_path)
    bad = _entry(archive.as_uri(), "0" * 64, size)
    with pytest.raises(WeightsError, match="checksum mismatch") as info:
        models.ensureModel(bad)
    assert archive.as_uri() in str(info.value)
    gone = _entry((tmp_path / "missing.zip").as_uri(), sha, size)
    with pytest.raises(WeightsError, match="download failed") as info:
        models.ensureModel(gone)
    assert "missing.zip" in str(info.value)
    assert not models.isAvailable(bad) and list((tmp_path / "cache" / "models").iterdir()) == []


def test_local_folder_must_be_a_bundle(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        models.useLocalFolder(tmp_path / "nope")
    with pytest.raises(WeightsError, match="manifest.json"):
        models.useLocalFolder(tmp_path)
    (tmp_path / "manifest.json").write_text("{}", encoding="utf-8")
    assert models.useLocalFolder(tmp_path) == tmp_path


def test_training_plan_trains_three_networks_then_resumes_with_run_control_flags_only(tmp_path, engine_commands):
    settings = training.TrainingSettings(dataFolder="", outputFolder=str(tmp_path), resolution=128, steps=50,
                                         device="cpu")
    fresh = [training.trainCommand(settings, i, resume=False) for i in range(3)]
    assert [c[3:5] for c in fresh] == [["train", "tokenizer"], ["train", "tokenizer"], ["train", "prior"]]
    assert "--brain-tokenizer" in fresh[2] and "--resolution" in fresh[0] and "--data" not in fresh[0]
    resumed = training.trainCommand(settings, 2, resume=True)
    assert "--resume" in resumed and "--resolution" not in resumed and "--brain-tokenizer" not in resumed
    from cpmae.cli import build_parser  # the engine's parser accepts every command the panel builds

    for command in fresh + [resumed]:
        build_parser().parse_args(command[3:])
    build_parser().parse_args(training.exportCommand("a", "b", "c", "d")[3:])


def test_loss_curve_and_checkpoints_are_read_from_the_run_folders(tmp_path):
    run = tmp_path / "brain_tokenizer"
    (run / "checkpoints" / "step-0000010").mkdir(parents=True)
    (run / "checkpoints" / "step-0000020").mkdir()
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 0.5}\n{"step": 10, "val_l1": 0.1}\n'
                                       '{"step": 20, "loss": 0.25}\n{"step": 3')  # last line half written
    assert training.readLoss(run) == [(10, 0.5), (20, 0.25)]
    assert [p.name for p in training.listCheckpoints(tmp_path)] == ["step-0000010", "step-0000020"]
    assert training.hasCheckpoint(run) and not training.hasCheckpoint(tmp_path / "prior")


def test_training_session_stop_kills_the_running_stage(tmp_path, monkeypatch):
    import sys

    script = tmp_path / "fake_train.py"  # stands in for `python -m cpmae train`: sleeps until killed
    script.write_text("import json, time\nprint(json.dumps({'event': 'stage', 'stage': 'train', 'total': 5}), "
                      "flush=True)\ntime.sleep(60)\n")
    monkeypatch.setattr(jobs, "engineCommand", lambda *args: [sys.executable, str(script)])
    events = []
    session = training.TrainingSession(training.TrainingSettings("", str(tmp_path / "out"), steps=5),
                                       onEvent=events.append)
    session.start()
    for _ in range(200):
        session.poll()
        if events:
            break
        __import__("time").sleep(0.05)
    assert session.state == jobs.RUNNING and events[0].data["stage"] == "train"
    t0 = __import__("time").monotonic()
    session.stop()  # returns at once (the panel's GUI thread); the timer sees the process go
    assert __import__("time").monotonic() - t0 < 0.1
    deadline = __import__("time").monotonic() + 15
    while session.pollStop():
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.05)
    assert session.state == jobs.CANCELLED and not session.runner.running
    assert not session.poll()


def test_missing_packages_are_found_without_importing_them(monkeypatch):
    from CPMAEDeidentifyLib import dependencies

    assert dependencies.missingPackages() == []  # this venv has the engine's dependencies
    monkeypatch.setitem(dependencies.REQUIREMENTS, "no_such_module_cpmae", "no-such-package>=1")
    assert dependencies.missingPackages() == ["no-such-package>=1"]
    asked = []
    assert dependencies.ensureDependencies(lambda message: asked.append(message) or False) is False
    assert "no-such-package>=1" in asked[0]  # the user is asked first, and declining installs nothing


def test_registered_sample_head_is_the_averaged_head_the_engine_uses(mean_head):
    """The Sample Data entry's checksum matches the file in the pydeface wheel (the only publishable face)."""
    from CPMAEDeidentifyLib.sampledata import AVERAGED_HEAD

    assert AVERAGED_HEAD["checksums"] == "SHA256:" + hashlib.sha256(mean_head.read_bytes()).hexdigest()
    assert AVERAGED_HEAD["uris"].startswith("https://") and "pydeface" in AVERAGED_HEAD["uris"]


def test_catalogue_field_is_spelled_like_the_manifests_and_old_spelling_still_reads(tmp_path):
    from cpmae.weights import load_bundle

    shipped = models.loadCatalogue()
    manifest = load_bundle(None, shipped[0].resolution).manifest
    assert shipped[0].license == manifest["license"]
    old = {"models": [{"name": "old", "version": "1", "url": "builtin:demo-128", "sha256": "", "size": 0,
                       "licence": "MIT", "resolution": 128}]}
    (tmp_path / "Models.json").write_text(json.dumps(old), encoding="utf-8")
    assert models.loadCatalogue(tmp_path / "Models.json")[0].license == "MIT"


def test_the_resolution_is_the_bundles_own(tmp_path):
    """The panel runs a model at its own grid (no separate resolution choice to disagree with it)."""
    from CPMAEDeidentifyLib import models

    assert models.bundleResolution(models.BUILTIN_WEIGHTS / "demo-128") == 128
    (tmp_path / "manifest.json").write_text(json.dumps({"resolution": 256}), encoding="utf-8")
    assert models.bundleResolution(tmp_path) == 256
    (tmp_path / "manifest.json").write_text(json.dumps({"resolution": 200}), encoding="utf-8")
    with pytest.raises(WeightsError, match="unsupported resolution 200"):
        models.bundleResolution(tmp_path)
    entries = {e.name: e.resolution for e in models.loadCatalogue()}
    assert entries["demo-256"] == 256
