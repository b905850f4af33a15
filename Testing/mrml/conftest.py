"""Fixtures for the MRML-level tests: a real slicer-core scene, offscreen rendering, the module on sys.path.

No desktop Slicer runs here: ``SlicerContext.standalone()`` builds the scene and the Volumes,
Segmentations and VolumeRendering logics from PyPI's ``slicer-core``. Without a display VTK's
default OSMesa window is usually missing, so EGL (Mesa's software EGL works on CPU-only machines)
is selected before VTK creates any window.

This folder must not be called ``slicer``: slicer-core's ``slicer`` package extends its
``__path__`` over every ``<sys.path entry>/slicer`` folder and imports each module found there
as ``slicer.<name>`` (Testing/ is on sys.path), i.e. it would import these test files.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "CPMAEDeidentify"
for path in (MODULE_DIR, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import pytest  # noqa: E402

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")


@pytest.fixture
def context():
    """A fresh real MRML scene with Slicer's module logics."""
    from CPMAEDeidentifyLib.context import SlicerContext

    return SlicerContext.standalone()


@pytest.fixture
def head():
    """(image int16, brain mask uint8) of a 48³ head with a nose."""
    from mrml_heads import head_image

    return head_image()


@pytest.fixture(scope="session")
def engine_commands():
    """``cpmae --help`` as the panel runs it; a broken engine (or a command missing) fails here.

    The tests that use it would otherwise exercise nothing, and a skipped test hides a broken engine.
    """
    import re
    import subprocess

    from cpmae.cli import COMMANDS
    from CPMAEDeidentifyLib import jobs

    out = subprocess.run(jobs.engineCommand("--help"), capture_output=True, text=True, env=jobs.engineEnvironment(),
                         timeout=120)
    assert out.returncode == 0, f"the engine does not start: {out.stderr.strip()[-2000:]}"
    listed = set(re.findall(r"^ {2,}([a-z][a-z-]+)\b", out.stdout, flags=re.M))
    missing = [c for c in COMMANDS if c.replace("_", "-") not in listed]
    assert not missing, f"the engine's --help lacks {missing}"
    return out.stdout
