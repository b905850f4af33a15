"""The out-of-process job runner: progress lines, errors, cancel kills the process group, temp files go."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from CPMAEDeidentifyLib import jobs

CHILD = textwrap.dedent("""
    import json, os, subprocess, sys, time
    out = sys.argv[1]
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(os.path.join(out, "helper.pid"), "w").write(str(helper.pid))
    print(json.dumps({"event": "stage", "stage": "work", "total": 3}), flush=True)
    print("a plain line", flush=True)
    for i in range(1, 4):
        print(json.dumps({"event": "progress", "stage": "work", "step": i, "total": 3}), flush=True)
        if sys.argv[2] == "slow":
            time.sleep(30)
    if sys.argv[2] == "fail":
        print("cpmae: error: /data/in.nii.gz: not a head", file=sys.stderr, flush=True)
        helper.kill(); sys.exit(2)
    helper.kill()
    print(json.dumps({"event": "result", "output": "x"}), flush=True)
""")


def _run(tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    events = []
    runner = jobs.JobRunner([sys.executable, str(script), str(work), mode], onEvent=events.append,
                            cleanupPaths=[work])
    return runner.start(), events, work


def test_progress_lines_become_events_and_results(tmp_path):
    runner, events, work = _run(tmp_path, "fast")
    assert runner.wait(timeout=60) == jobs.SUCCEEDED
    kinds = [e.kind for e in events]
    assert kinds[0] == "stage" and kinds[-1] == "result"
    assert [e.fraction for e in events if e.kind == "progress"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert any(e.kind == "log" and e.data["message"] == "a plain line" for e in events)
    assert runner.result == {"event": "result", "output": "x"}
    assert not work.exists()


def test_failure_reports_the_engines_one_line_error(tmp_path):
    runner, _, work = _run(tmp_path, "fail")
    assert runner.wait(timeout=60) == jobs.FAILED
    assert runner.returncode == 2
    assert runner.errorMessage() == "/data/in.nii.gz: not a head"
    assert not work.exists()


def test_cancel_kills_the_whole_process_group_and_removes_temp_files(tmp_path):
    runner, events, work = _run(tmp_path, "slow")
    deadline = time.monotonic() + 30
    while not any(e.kind == "progress" for e in events) and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    helper_pid = int((work / "helper.pid").read_text(encoding="utf-8"))
    t0 = time.monotonic()
    runner.cancel()
    assert time.monotonic() - t0 < 10
    assert runner.state == jobs.CANCELLED and not runner.running
    assert not work.exists()
    deadline = time.monotonic() + 5
    while _alive(helper_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(helper_pid), "the engine's helper process survived the cancel"


def _alive(pid: int) -> bool:
    """Running and not a zombie (a killed orphan may wait a moment for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_on_finished_failure_turns_success_into_failure(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("print('{\"event\": \"result\"}')", encoding="utf-8")

    def boom(_):
        raise ValueError("output grid differs")

    runner = jobs.JobRunner([sys.executable, str(script)], onFinished=boom).start()
    assert runner.wait(timeout=60) == jobs.FAILED
    assert runner.errorMessage() == "output grid differs"


def test_engine_command_uses_this_python_and_puts_the_module_folder_on_pythonpath():
    command = jobs.engineCommand("mask", "a", "b")
    assert command[:3] == [sys.executable, "-m", "cpmae"]
    env = jobs.engineEnvironment()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(jobs.MODULE_DIR)
    assert (jobs.MODULE_DIR / "cpmae" / "__main__.py").is_file()
