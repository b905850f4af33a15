"""Errors a user can act on.

Everything the CLI, the batch runner or the Slicer panel shows to a person goes through
these classes, so that a bad file produces one clear line naming the file and the problem
(never a traceback), and so that each kind of failure has a stable exit code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

# Exit codes of the ``cpmae`` command (documented in README).
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: traceback printed, please report
EXIT_INPUT = 2  # the input file, mask or folder is unusable
EXIT_OUTPUT = 3  # the output cannot be written (exists, read-only, same as input)
EXIT_WEIGHTS = 4  # weights missing, corrupted (sha256) or for another resolution
EXIT_CANCELLED = 130  # interrupted (Ctrl-C / SIGTERM from the Slicer panel)


class CPMAEError(Exception):
    """A problem the user can fix; printed as ``<path>: <problem>``."""

    exit_code = EXIT_INPUT

    def __init__(self, problem: str, path: Optional[Union[str, Path]] = None):
        super().__init__(problem)
        self.problem = problem
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class InputError(CPMAEError):
    """The input image, mask or dataset cannot be used."""

    exit_code = EXIT_INPUT


class OutputError(CPMAEError):
    """The output cannot be written safely."""

    exit_code = EXIT_OUTPUT


class WeightsError(CPMAEError):
    """Model weights are missing, do not match their manifest, or do not fit the request."""

    exit_code = EXIT_WEIGHTS


class Cancelled(CPMAEError):
    """The job was cancelled; nothing was written."""

    exit_code = EXIT_CANCELLED
