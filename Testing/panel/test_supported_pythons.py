"""What runs inside Slicer compiles with the Python of each supported Slicer release.

Supported releases and their Python: Slicer 5.8 (Python 3.9) and 5.10 (Python 3.12); the
module also follows Slicer's main branch (5.11, Python 3.12). Every file the extension installs
(the panel, its Logic, the engine that runs as ``PythonSlicer -m cpmae``) is compiled by each
interpreter found on this machine (pyenv or ``python3.X`` on PATH); a release whose Python is
absent is skipped by name. Importing needs numpy/SimpleITK/torch for that Python, which this
check does not install.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "CPMAEDeidentify"

SUPPORTED = {"5.8": "3.9", "5.10": "3.12"}  # Slicer release -> its Python (README names them too)
COMPILE = ("import sys\nfailed = []\nfor path in sys.argv[1:]:\n"
           "    try:\n        compile(open(path, encoding='utf-8').read(), path, 'exec')\n"
           "    except SyntaxError as exc:\n        failed.append(f'{path}:{exc.lineno}: {exc.msg}')\n"
           "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n")


def interpreter(version: str):
    """An interpreter of ``version`` that runs (pyenv's shims exist for versions not activated)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python")))[::-1]
    candidates += [c for c in [shutil.which(f"python{version}")] if c]
    for candidate in candidates:
        done = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    return None


def installed_python_files():
    files = [MODULE_DIR / "CPMAEDeidentify.py"]
    files += sorted((MODULE_DIR / "CPMAEDeidentifyLib").glob("*.py"))
    files += sorted((MODULE_DIR / "cpmae").rglob("*.py"))
    return [str(f) for f in files]


@pytest.mark.parametrize("release", sorted(SUPPORTED))
def test_module_and_engine_compile_with_the_releases_python(release):
    python = interpreter(SUPPORTED[release])
    if python is None:
        pytest.skip(f"no Python {SUPPORTED[release]} on this machine (Slicer {release})")
    done = subprocess.run([python, "-c", COMPILE, *installed_python_files()], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"Slicer {release} (Python {SUPPORTED[release]}):\n{done.stdout}{done.stderr}"


def test_the_check_catches_syntax_newer_than_python_3_9(tmp_path):
    python = interpreter("3.9")
    if python is None:
        pytest.skip("no Python 3.9 on this machine")
    newer = tmp_path / "newer.py"
    newer.write_text("match 1:\n    case 1:\n        pass\n", encoding="utf-8")
    done = subprocess.run([python, "-c", COMPILE, str(newer)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "newer.py:1" in done.stdout
