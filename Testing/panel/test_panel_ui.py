"""The panel's .ui loaded by a real Qt (PySide6 from PyPI) on an X server (Xvfb), as Slicer would.

Only the classes Slicer ships designer plugins for get a stand-in (``panel_harness.py``); any
other non-Qt class fails here instead of becoming a silent plain QWidget in Slicer.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "CPMAEDeidentify"

HARNESS = Path(__file__).resolve().parent / "panel_harness.py"
UI = MODULE_DIR / "Resources" / "UI" / "CPMAEDeidentify.ui"


@pytest.fixture(scope="module")
def display():
    """A private Xvfb display (Debian package ``xvfb``; .ci/run installs it)."""
    xvfb = shutil.which("Xvfb")
    assert xvfb, "Xvfb is not installed (apt-get install xvfb): the panel test needs an X server"
    read, write = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    assert number, "Xvfb did not start"
    yield f":{number}"
    server.terminate()
    server.wait(timeout=10)


def run_harness(display, ui, tmp_path, screenshot=None) -> dict:
    pytest.importorskip("PySide6", reason="PySide6 is in the test extra of pyproject.toml")
    report = tmp_path / "report.json"
    env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb")
    command = [sys.executable, str(HARNESS), str(ui), str(report)] + ([str(screenshot)] if screenshot else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(report.read_text(encoding="utf-8"))


def test_every_widget_class_is_qt_or_has_a_slicer_designer_plugin(display, tmp_path):
    report = run_harness(display, UI, tmp_path, tmp_path / "panel.png")
    assert report["load_error"] == ""
    assert report["unknown_classes"] == [], "classes Slicer cannot build from a .ui"
    wrong = {name: (cls, report["created"][name]) for name, cls in report["ui_classes"].items()
             if report["created"][name] != cls}
    assert wrong == {}, "widgets created with another class than the .ui names"
    width, height = report["screenshot"]
    assert width >= 400 and height >= 600 and (tmp_path / "panel.png").stat().st_size > 10_000


def test_face_qa_sits_above_the_log_and_the_remodel_section_has_no_resolution_choice(display, tmp_path):
    report = run_harness(display, UI, tmp_path)
    order = list(report["ui_classes"])
    assert order.index("faceQACollapsibleButton") < order.index("logTextEdit")
    assert "resolutionComboBox" not in report["ui_classes"]  # the resolution follows the model
    assert {"qaThresholdSlider", "approveButton", "rejectButton", "decisionReasonComboBox"} <= set(order)
    assert {"reviewTable", "openQueueButton", "previousCaseButton", "nextCaseButton"} <= set(order)
    bound = set(report["bindings"].values())
    assert {"inputVolume", "brainMask", "localWeights", "seed", "steps", "device", "reviewFolder"} <= bound


def test_a_class_without_a_designer_plugin_is_reported(display, tmp_path):
    """The harness itself: the plot view that once broke the training section is caught."""
    broken = tmp_path / "broken.ui"
    text = UI.read_text(encoding="utf-8").replace(
        '<widget class="QWidget" name="lossPlotPlaceholder">', '<widget class="qMRMLPlotView" name="lossPlotView">')
    text = text.replace("<customwidgets>", "<customwidgets><customwidget><class>qMRMLPlotView</class>"
                        "<extends>QWidget</extends><header>qMRMLPlotView.h</header></customwidget>")
    broken.write_text(text, encoding="utf-8")
    report = run_harness(display, broken, tmp_path)
    assert report["unknown_classes"] == ["qMRMLPlotView"]
    assert report["created"]["lossPlotView"] == "QWidget"  # what Slicer's loader silently makes
