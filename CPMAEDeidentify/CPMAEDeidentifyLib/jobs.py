"""Out-of-process engine jobs with machine-readable progress.

The engine (torch, deepbet) runs in a child Python so that a crash, a CUDA out-of-memory or a
cancel never takes Slicer down and never leaves torch state in Slicer's interpreter. The child
prints one JSON object per line (``--progress json``); a reader thread queues them and
``poll()`` hands them to the callback on the caller's thread, so Qt code may update widgets
from the callback.

Nothing here blocks the caller for long (the panel calls it from Slicer's GUI thread, where
100 ms is the budget): an optional ``prepare`` step (writing the input volume) and the process
start run on a worker thread; ``cancel()`` only asks the process *tree* to stop and ``poll()``
escalates to a kill after a grace period. The tree is collected with psutil (the launcher on
Windows, deepbet's and torch's helpers, grandchildren that started their own session); without
psutil the process group (POSIX) or ``taskkill /T`` (Windows) is used. On Windows the child gets
no console window. No platform-specific signal names: terminate/kill only.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
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


def gpuQueryJob() -> Optional["JobRunner"]:
    """``nvidia-smi`` listing name and memory of each GPU, started as a job (it can take
    seconds); None when there is no nvidia-smi. No torch import in Slicer's process."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    return JobRunner([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"], env=dict(os.environ)).start()


def describeGpus(lines: Sequence[str]) -> str:
    """The panel's device line from nvidia-smi's output lines (none: the CPU note)."""
    gpus = [line.strip() for line in lines if line.strip()]
    if gpus:
        return "GPU: " + "; ".join(gpus)
    return "No CUDA GPU detected: runs on the CPU (128³ takes about a minute)."


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


CANCEL_GRACE_S = 3.0  # after terminate(), how long poll() waits before killing what is left


def popenOptions(platform: str = os.name) -> dict:
    """Popen keywords that keep the job out of sight and killable as one tree.

    Windows: no console window per job (``CREATE_NO_WINDOW``) and its own process group;
    elsewhere a new session, so a signal to the group reaches helpers even without psutil.
    """
    if platform == "nt":
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000) | \
            getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
        return {"creationflags": flags}
    return {"start_new_session": True}


def processTree(pid: int) -> list:
    """psutil.Process objects of ``pid`` and all its descendants (children first), or [] if gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        return root.children(recursive=True)[::-1] + [root]
    except psutil.NoSuchProcess:
        return []


def terminateTree(pid: int, kill: bool = False, platform: str = os.name) -> list:
    """Ask (``kill=False``) or force (``kill=True``) ``pid`` and every descendant to stop.

    Returns the psutil processes signalled (empty without psutil). The whole tree is collected
    *before* anything is signalled, so a grandchild whose parent dies first is not missed.
    """
    try:
        import psutil
    except ImportError:
        _terminateTreeWithoutPsutil(pid, kill, platform)
        return []
    procs = processTree(pid)
    for proc in procs:
        try:
            proc.kill() if kill else proc.terminate()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return procs


def _terminateTreeWithoutPsutil(pid: int, kill: bool, platform: str) -> None:
    if platform == "nt":
        # taskkill ships with Windows and walks the tree itself
        subprocess.run(["taskkill", "/PID", str(pid), "/T"] + (["/F"] if kill else []), capture_output=True,
                       creationflags=popenOptions("nt")["creationflags"], check=False)
        return
    import signal

    try:
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


class JobRunner:
    """One engine process: start, poll events, wait, cancel.

    ``prepare()`` (optional) runs on the worker thread before the process starts (e.g. writing
    the input file); an exception from it fails the job with its message. ``collect()``
    (optional) runs on a worker after a successful exit and reads the results into memory
    (``runner.collected``), so that ``onFinished`` only hands them to the scene.
    ``onEvent(JobEvent)`` is called from ``poll()``/``wait()`` only, on the caller's thread.
    ``onFinished(runner)`` runs once when the process has ended, before the ``cleanupPaths``
    (files or folders) are removed, whatever the outcome; it is where results are read back.
    An exception from it turns the job into a failure with that message.
    """

    def __init__(self, command: Sequence[str], onEvent: Optional[Callable[[JobEvent], None]] = None,
                 cleanupPaths: Sequence[Path] = (), env: Optional[dict] = None, cwd: Optional[str] = None,
                 onFinished: Optional[Callable[["JobRunner"], None]] = None,
                 prepare: Optional[Callable[[], None]] = None, collect: Optional[Callable[[], object]] = None):
        self.command = [str(c) for c in command]
        self.onEvent = onEvent
        self.onFinished = onFinished
        self.prepare = prepare
        self.collect = collect  # after a successful exit, on a worker: read the results (files -> memory)
        self.collected = None
        self._collector: Optional[threading.Thread] = None
        self._collectError: Optional[str] = None
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
        self._launcher: Optional[threading.Thread] = None
        self._launchError: Optional[str] = None
        self._lock = threading.Lock()
        self._cancelRequested = False
        self._killDeadline: Optional[float] = None
        self._finished = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "JobRunner":
        """Start on a worker thread and return at once; a failure to start shows up in poll()."""
        self.state = RUNNING
        self._launcher = threading.Thread(target=self._launch, daemon=True)
        self._launcher.start()
        return self

    def _launch(self) -> None:
        try:
            if self.prepare is not None:
                self.prepare()
        except Exception as exc:
            self._launchError = str(exc)
            return
        try:
            with self._lock:
                if self._cancelRequested:
                    return
                self._process = subprocess.Popen(
                    self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                    env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                    **popenOptions())
        except OSError as exc:
            self._launchError = f"could not start the engine ({exc})"
            return
        self._threads = [threading.Thread(target=self._readStdout, daemon=True),
                         threading.Thread(target=self._readStderr, daemon=True)]
        for t in self._threads:
            t.start()

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

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def _drain(self) -> None:
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return
            if event is not None:
                self._deliver(event)

    def poll(self) -> bool:
        """Deliver queued events; finish the job once the process has exited. True while running.

        Never blocks for long: safe to call from a GUI timer.
        """
        if self._finished:
            return False
        self._drain()
        if self._launcher is not None and self._launcher.is_alive():
            return True  # still preparing / starting
        if self._process is None:  # prepare or Popen failed, or cancelled before the start
            self.finishError = None if self._cancelRequested else self._launchError
            self._finish(None)
            return False
        if self._process.poll() is None:
            if self._killDeadline is not None and time.monotonic() > self._killDeadline:
                self._signalTree(self._process.pid, kill=True)
                self._killDeadline = None
            return True
        if self._cancelRequested:
            self._signalTree(self._process.pid, kill=True)  # helpers that ignored terminate()
        for t in self._threads:
            t.join(timeout=0.02)  # output written just before the exit; never wait on a held pipe
        self._drain()
        if self.collect is not None and self._process.returncode == 0 and not self._cancelRequested:
            if self._collector is None:
                self._collector = threading.Thread(target=self._collect, daemon=True)
                self._collector.start()
            if self._collector.is_alive():
                return True
            if self._collectError is not None:
                self.finishError = self._collectError
        self._finish(self._process.returncode)
        return False

    def _collect(self) -> None:
        try:
            self.collected = self.collect()
        except Exception as exc:  # unreadable results: the job fails with this message
            self._collectError = str(exc) or type(exc).__name__

    def _deliver(self, event: JobEvent) -> None:
        self.events.append(event)
        if event.kind == "result":
            self.result = event.data
        if self.onEvent is not None:
            self.onEvent(event)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> str:
        """Block until the job ends (delivering events as they come); returns the final state.

        For scripts and the Python console, never for the GUI thread.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(wait=True)
                break
            time.sleep(interval)
        return self.state

    def cancel(self, grace: float = CANCEL_GRACE_S, wait: bool = False) -> None:
        """Ask the whole process tree to stop; ``poll()`` kills what is left after ``grace`` s.

        Returns at once (GUI thread); ``wait=True`` blocks until the job has finished (scripts,
        module cleanup). The job ends as CANCELLED and its temp files are removed.
        """
        if self._finished:
            return
        with self._lock:
            self._cancelRequested = True
            process = self._process
        if process is not None and process.poll() is None:
            self._signalTree(process.pid, kill=False, wait=wait)
            self._killDeadline = time.monotonic() + grace
        if wait:
            while self.poll():
                time.sleep(0.02)
        else:
            self.poll()

    def _signalTree(self, pid: int, kill: bool, wait: bool = False) -> None:
        """terminateTree on a thread: listing a process tree reads /proc (or the Windows process
        table) for every process on the machine, which can take longer than a GUI tick."""
        thread = threading.Thread(target=terminateTree, args=(pid, kill), daemon=True)
        thread.start()
        if wait:
            thread.join()

    def _finish(self, returncode: Optional[int]) -> None:
        self._finished = True
        self.returncode = returncode
        if self._cancelRequested:
            self.state = CANCELLED
        elif returncode == 0 and self._collectError is None:
            self.state = SUCCEEDED
        else:
            self.state = FAILED
        if self._process is not None and not any(t.is_alive() for t in self._threads):
            # a reader still blocked on a pipe that a surviving helper holds open would make
            # close() wait for it: leave such streams to their (daemon) reader
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
