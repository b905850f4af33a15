"""Out-of-process engine jobs with machine-readable progress.

The engine (torch, deepbet) runs in a child Python so that a crash, a CUDA out-of-memory or a
cancel never takes Slicer down and never leaves torch state in Slicer's interpreter. The child
prints one JSON object per line (``--progress json``); a reader thread queues them and
``poll()`` hands them to the callback on the caller's thread, so Qt code may update widgets
from the callback. ``cancel()`` kills the whole process group (deepbet and torch may start
helpers of their own).
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

MODULE_DIR = Path(__file__).resolve().parent.parent  # the Slicer module folder, which holds ``cpmae``

# states
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "pending", "running", "succeeded", "failed", "cancelled"


def enginePython() -> str:
    """The Python that runs engine jobs: PythonSlicer inside Slicer, else this interpreter."""
    override = os.environ.get("CPMAE_PYTHON")
    if override:
        return override
    try:
        import slicer

        insideSlicer = hasattr(slicer, "app")
    except ImportError:
        insideSlicer = False
    if insideSlicer:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def engineEnvironment() -> dict:
    """Environment for a job: the module folder first on PYTHONPATH so ``-m cpmae`` finds the engine."""
    env = dict(os.environ)
    paths = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def engineCommand(*args: str) -> List[str]:
    return [enginePython(), "-m", "cpmae", *args]


@dataclass
class JobEvent:
    """One progress line from the engine (``kind`` is the JSON ``event`` field) or a plain log line."""

    kind: str
    data: dict = field(default_factory=dict)

    @property
    def fraction(self) -> Optional[float]:
        """Progress within the current stage, 0..1, when the line carries step and total."""
        total = self.data.get("total")
        if self.kind == "progress" and total:
            return min(1.0, float(self.data.get("step", 0)) / float(total))
        return None


def parseLine(line: str) -> JobEvent:
    """A stdout line as an event; anything that is not a JSON object becomes a ``log`` event."""
    line = line.rstrip("\n")
    try:
        record = json.loads(line)
    except ValueError:
        return JobEvent("log", {"message": line})
    if not isinstance(record, dict):
        return JobEvent("log", {"message": line})
    return JobEvent(str(record.get("event", "log")), record)


class JobRunner:
    """One engine process: start, poll events, wait, cancel.

    ``onEvent(JobEvent)`` is called from ``poll()``/``wait()`` only, on the caller's thread.
    ``onFinished(runner)`` runs once when the process has ended, before the ``cleanupPaths``
    (files or folders) are removed, whatever the outcome; it is where results are read back.
    An exception from it turns the job into a failure with that message.
    """

    def __init__(self, command: Sequence[str], onEvent: Optional[Callable[[JobEvent], None]] = None,
                 cleanupPaths: Sequence[Path] = (), env: Optional[dict] = None, cwd: Optional[str] = None,
                 onFinished: Optional[Callable[["JobRunner"], None]] = None):
        self.command = [str(c) for c in command]
        self.onEvent = onEvent
        self.onFinished = onFinished
        self.finishError: Optional[str] = None
        self.cleanupPaths = [Path(p) for p in cleanupPaths]
        self.env = env if env is not None else engineEnvironment()
        self.cwd = cwd
        self.state = PENDING
        self.returncode: Optional[int] = None
        self.result: Optional[dict] = None
        self.stderrLines: List[str] = []
        self.events: List[JobEvent] = []
        self._process: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[Optional[JobEvent]]" = queue.Queue()
        self._threads: List[threading.Thread] = []
        self._cancelRequested = False
        self._finished = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "JobRunner":
        kwargs = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # own process group: cancel kills helpers too
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self.state = RUNNING
        self._threads = [
            threading.Thread(target=self._readStdout, daemon=True),
            threading.Thread(target=self._readStderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def _readStdout(self) -> None:
        for line in self._process.stdout:
            if line.strip():
                self._queue.put(parseLine(line))
        self._queue.put(None)

    def _readStderr(self) -> None:
        for line in self._process.stderr:
            line = line.rstrip("\n")
            if line:
                self.stderrLines.append(line)
                self._queue.put(JobEvent("stderr", {"message": line}))

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def poll(self) -> bool:
        """Deliver queued events; finish the job once the process has exited. True while running."""
        if self._finished:
            return False
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                self._deliver(event)
        if self._process is not None and self._process.poll() is not None:
            for t in self._threads:
                t.join(timeout=5)
            while not self._queue.empty():
                event = self._queue.get_nowait()
                if event is not None:
                    self._deliver(event)
            self._finish(self._process.returncode)
            return False
        return True

    def _deliver(self, event: JobEvent) -> None:
        self.events.append(event)
        if event.kind == "result":
            self.result = event.data
        if self.onEvent is not None:
            self.onEvent(event)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> str:
        """Block until the job ends (delivering events as they come); returns the final state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                break
            time.sleep(interval)
        return self.state

    def cancel(self, grace: float = 3.0) -> None:
        """Stop the process group: SIGTERM (the engine removes its temp files), then SIGKILL."""
        if self._process is None or self._finished:
            return
        self._cancelRequested = True
        if self._process.poll() is None:
            self._signalGroup(signal.SIGTERM)
            try:
                self._process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signalGroup(signal.SIGKILL)
                self._process.wait()
        self.poll()

    def _signalGroup(self, sig) -> None:
        try:
            if os.name == "posix":
                os.killpg(self._process.pid, sig)
            elif sig == signal.SIGTERM:
                self._process.terminate()
            else:
                self._process.kill()
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self, returncode: int) -> None:
        self._finished = True
        self.returncode = returncode
        if self._cancelRequested:
            self.state = CANCELLED
        elif returncode == 0:
            self.state = SUCCEEDED
        else:
            self.state = FAILED
        for stream in (self._process.stdout, self._process.stderr):
            try:
                stream.close()
            except Exception:
                pass
        try:
            if self.onFinished is not None:
                self.onFinished(self)
        except Exception as exc:  # reading results back failed: report it as the job's failure
            self.state = FAILED
            self.finishError = str(exc)
        finally:
            self.removeCleanupPaths()

    def removeCleanupPaths(self) -> None:
        for path in self.cleanupPaths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                try:
                    path.unlink()
                except OSError:
                    pass

    # -- reporting -------------------------------------------------------------------------
    def errorMessage(self) -> str:
        """The engine's one-line error (``cpmae: error: <file>: <problem>``) or the last stderr line."""
        if self.finishError:
            return self.finishError
        for line in reversed(self.stderrLines):
            if line.startswith("cpmae: error:"):
                return line[len("cpmae: error:"):].strip()
        if self.state == CANCELLED:
            return "cancelled"
        tail = self.stderrLines[-1] if self.stderrLines else "no message"
        return f"the engine stopped with exit code {self.returncode}: {tail}"
