"""Progress and stage timing for long jobs.

Two audiences: a person at a terminal (tqdm bars on stderr) and a parent process such as
the Slicer panel (one JSON object per line on stdout, ``--progress json``), which turns the
lines into a progress bar and can kill the job at any time. Stage wall times are recorded
either way, because the CLI prints them and the benchmarks report them.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, TextIO


class Stage:
    """Handle for one running stage; ``advance`` moves its bar."""

    def __init__(self, reporter: "Reporter", name: str, total: Optional[int]):
        self.reporter, self.name, self.total, self.done = reporter, name, total, 0
        self._bar = None
        if reporter.mode == "bar" and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, file=reporter.stream, leave=False)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        self.reporter._emit({"event": "progress", "stage": self.name, "step": self.done, "total": self.total})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Reporter:
    """Reports stages as bars, JSON lines, or not at all, and records their wall times."""

    def __init__(self, mode: str = "auto", stream: Optional[TextIO] = None, json_stream: Optional[TextIO] = None,
                 record: bool = True):
        self.record = record  # False for the shared silent reporter, which nobody reads timings from
        self.stream = stream or sys.stderr
        self.json_stream = json_stream or sys.stdout
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "none"
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.timings: Dict[str, float] = {}

    def _emit(self, record: dict) -> None:
        if self.mode == "json":
            self.json_stream.write(json.dumps(record) + "\n")
            self.json_stream.flush()

    @contextmanager
    def stage(self, name: str, total: Optional[int] = None) -> Iterator[Stage]:
        self._emit({"event": "stage", "stage": name, "total": total})
        st = Stage(self, name, total)
        t0 = time.perf_counter()
        try:
            yield st
        finally:
            st.close()
            dt = time.perf_counter() - t0
            if self.record:
                self.timings[name] = self.timings.get(name, 0.0) + dt
            self._emit({"event": "stage_done", "stage": name, "seconds": round(dt, 4)})

    def log(self, message: str) -> None:
        """A human-readable message (stderr for people, a JSON ``log`` event for programs)."""
        if self.mode == "json":
            self._emit({"event": "log", "message": message})
        elif self.mode == "bar":
            self.stream.write(message + "\n")
            self.stream.flush()

    def result(self, **fields) -> None:
        """Final machine-readable record (paths written, timings)."""
        self._emit({"event": "result", **fields})


#: Shared silent default for library calls; it records nothing (create a Reporter to get timings).
NULL = Reporter(mode="none", record=False)
