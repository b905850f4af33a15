"""The out-of-process job runner: progress lines, errors, cancel kills the whole process tree
(grandchildren in their own session included) without blocking the caller, temp files go."""
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


def _wait_for(runner, events, kind, timeout=30):
    deadline = time.monotonic() + timeout
    while not any(e.kind == kind for e in events) and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    assert any(e.kind == kind for e in events), f"no {kind} event within {timeout} s"


def _finish(runner, timeout=15):
    """Poll like the panel's timer until the job ends; no poll() may block the GUI thread."""
    deadline = time.monotonic() + timeout
    while True:
        t0 = time.monotonic()
        running = runner.poll()
        assert time.monotonic() - t0 < 0.1, "poll() blocked the GUI thread"
        if not running:
            return
        assert time.monotonic() < deadline, "the cancelled job did not finish"
        time.sleep(0.05)


def test_cancel_returns_at_once_and_the_tree_is_gone_with_the_temp_files(tmp_path):
    runner, events, work = _run(tmp_path, "slow")
    _wait_for(runner, events, "progress")
    helper_pid = int((work / "helper.pid").read_text(encoding="utf-8"))
    t0 = time.monotonic()
    runner.cancel()
    assert time.monotonic() - t0 < 0.1, "cancel() blocked the GUI thread"
    _finish(runner)
    assert runner.state == jobs.CANCELLED and not runner.running
    assert not work.exists()
    _assert_dead(helper_pid)


# A launcher (like Slicer's PythonSlicer launcher on Windows) starts the engine, which starts a
# helper in a NEW SESSION: killing the launcher or its process group misses both.
LAUNCHER = textwrap.dedent("""
    import subprocess, sys
    sys.exit(subprocess.call([sys.executable, sys.argv[1], sys.argv[2]]))
""")
ENGINE = textwrap.dedent("""
    import json, os, subprocess, sys, time
    out = sys.argv[1]
    detached = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    nested = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
        "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)", os.path.join(out, "great.pid")])
    open(os.path.join(out, "pids"), "w").write(f"{os.getpid()} {detached.pid} {nested.pid}")
    print(json.dumps({"event": "stage", "stage": "work"}), flush=True)
    time.sleep(120)
""")


def test_cancel_kills_grandchildren_in_their_own_session_and_great_grandchildren(tmp_path):
    psutil = pytest.importorskip("psutil")  # a dependency of the module (installed with the engine's)
    (tmp_path / "launcher.py").write_text(LAUNCHER, encoding="utf-8")
    (tmp_path / "engine.py").write_text(ENGINE, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    events = []
    runner = jobs.JobRunner([sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "engine.py"), str(work)],
                            onEvent=events.append).start()
    _wait_for(runner, events, "stage")
    deadline = time.monotonic() + 10
    while not (work / "great.pid").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(p) for p in (work / "pids").read_text(encoding="utf-8").split()] + [int((work / "great.pid").read_text(encoding="utf-8"))]
    assert all(_alive(pid) for pid in pids)
    runner.cancel()
    _finish(runner)
    assert runner.state == jobs.CANCELLED
    for pid in pids:
        _assert_dead(pid)
    assert psutil.pid_exists(runner.pid) is False or not _alive(runner.pid)


def test_a_job_that_ignores_terminate_is_killed_after_the_grace_period(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text("import json, signal, time\n"
                      "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "print(json.dumps({'event': 'stage', 'stage': 'x'}), flush=True)\n"
                      "time.sleep(120)\n", encoding="utf-8")
    events = []
    runner = jobs.JobRunner([sys.executable, str(script)], onEvent=events.append).start()
    _wait_for(runner, events, "stage")
    t0 = time.monotonic()
    runner.cancel(grace=0.5)
    assert time.monotonic() - t0 < 0.1
    _finish(runner)
    assert runner.state == jobs.CANCELLED and not _alive(runner.pid)


def test_windows_paths_use_no_console_window_and_no_posix_signal_names(monkeypatch):
    import builtins
    import signal

    options = jobs.popenOptions("nt")
    assert options["creationflags"] & 0x08000000, "CREATE_NO_WINDOW: no console window per job"
    assert "start_new_session" not in options
    # Windows has no SIGKILL: without psutil the tree goes through taskkill /T, never os.killpg
    monkeypatch.delattr(signal, "SIGKILL", raising=False)
    monkeypatch.delattr(os, "killpg", raising=False)
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "psutil" else real_import(name, *a, **k))
    calls = []
    monkeypatch.setattr(jobs.subprocess, "run", lambda args, **kw: calls.append((args, kw)))
    jobs.terminateTree(4242, kill=True, platform="nt")
    assert calls and calls[0][0][:4] == ["taskkill", "/PID", "4242", "/T"] and "/F" in calls[0][0]
    assert calls[0][1]["creationflags"] & 0x08000000


def test_a_prepare_step_runs_off_the_callers_thread_and_its_failure_fails_the_job(tmp_path):
    import threading

    seen = []

    def prepare():
        seen.append(threading.current_thread() is threading.main_thread())
        time.sleep(0.3)  # writing a large input volume
        raise OSError("disk full")

    t0 = time.monotonic()
    runner = jobs.JobRunner([sys.executable, "-c", "print(1)"], prepare=prepare,
                            cleanupPaths=[tmp_path / "gone"]).start()
    assert time.monotonic() - t0 < 0.1
    _finish(runner)
    assert seen == [False] and runner.state == jobs.FAILED and runner.errorMessage() == "disk full"


def _alive(pid: int) -> bool:
    """Running and not a zombie (a killed orphan may wait a moment for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _assert_dead(pid, timeout=5):
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), f"process {pid} survived the cancel"


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
