"""cpmae.locks: one lock implementation for Linux/macOS (flock) and Windows (msvcrt).

The Slicer panel's batch queue imports ``cpmae.review.cases`` (and so ``cpmae.batch``); with a
top-level ``import fcntl`` it failed on Windows before any lock was taken.
"""
import ast
import importlib.util
import io
import os
import sys
import types
from pathlib import Path

import pytest

from cpmae import locks

ENGINE = Path(__file__).resolve().parents[1] / "CPMAEDeidentify"


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"line\n")
    with open(path, "a+b") as a, open(path, "rb") as b:
        locks.lock(a)
        with pytest.raises(OSError):
            locks.lock(b)
        with pytest.raises(OSError):
            locks.lock(b, exclusive=False)
        assert b.read() == b"line\n"  # a locked manifest stays readable
        locks.unlock(a)
        locks.lock(b, exclusive=False)
        locks.unlock(b)


def test_only_the_lock_module_touches_platform_lock_apis():
    offenders = []
    for py in ENGINE.rglob("*.py"):
        if py.name == "locks.py" and py.parent.name == "cpmae":
            continue
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            if any(n in ("fcntl", "msvcrt") for n in names):
                offenders.append(f"{py.relative_to(ENGINE)}:{node.lineno}")
    assert not offenders, f"import cpmae.locks instead (fcntl does not exist on Windows): {offenders}"


class FakeMsvcrt(types.ModuleType):
    """Stands in for Windows' msvcrt: records (mode, position, nbytes); one holder per file."""
    LK_NBLCK, LK_UNLCK = 2, 0

    def __init__(self):
        super().__init__("msvcrt")
        self.calls, self.held = [], set()

    def locking(self, fileno, mode, nbytes):
        key = os.fstat(fileno).st_ino
        pos = os.lseek(fileno, 0, os.SEEK_CUR)
        self.calls.append((mode, pos, nbytes))
        if mode == self.LK_NBLCK:
            if key in self.held:
                raise PermissionError(13, "Permission denied")
            self.held.add(key)
        else:
            self.held.discard(key)


def test_windows_locks_one_byte_past_the_data_and_keep_the_file_position(tmp_path, monkeypatch):
    fake = FakeMsvcrt()
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(os, "name", "nt")
    spec = importlib.util.spec_from_file_location("cpmae_locks_nt", ENGINE / "cpmae" / "locks.py")
    nt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nt)
    monkeypatch.undo()
    assert nt.REPLACE_WHILE_OPEN is False
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"abc\n")
    with open(path, "r+b") as a, open(path, "rb") as b:
        a.seek(2)
        nt.lock(a)
        assert a.tell() == 2 and fake.calls[-1] == (fake.LK_NBLCK, nt._WINDOWS_OFFSET, 1)
        with pytest.raises(OSError):
            nt.lock(b, exclusive=False)
        nt.unlock(a)
        assert fake.calls[-1] == (fake.LK_UNLCK, nt._WINDOWS_OFFSET, 1) and a.tell() == 2
        nt.lock(b)
    assert path.read_bytes() == b"abc\n"
