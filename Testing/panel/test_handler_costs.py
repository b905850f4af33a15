"""No panel handler keeps Slicer's GUI thread for more than 100 ms.

Two halves, because the panel itself needs desktop Slicer:
- statically, no handler of the Widget calls anything that waits on a process or sleeps
  (``.wait(``, ``time.sleep``, ``subprocess.run``, ``processEvents`` ...): engine runs, the PNG
  export, the model export and the GPU query are jobs polled by the panel's timer;
- dynamically, every Logic call those handlers make is timed on a real MRML scene with a 256³
  head (the largest grid the panel runs): starting a job, cancelling it, each timer tick, the
  live loss curve of a long training run, the dependency check.
"""
from __future__ import annotations

import ast
import json
import sys
import time

import numpy as np
import pytest
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "CPMAEDeidentify"

BUDGET_S = 0.1
WIDGET = MODULE_DIR / "CPMAEDeidentify.py"
# calls that wait for a process, the network or the clock
BLOCKING = {"wait", "sleep", "run", "call", "check_call", "check_output", "communicate", "processEvents",
            "urlopen", "join"}
# handlers that may block on purpose: module teardown, the user-confirmed download and install
ALLOWED = {"cleanup", "_resolveWeights", "_downloadProgress", "_ensureDependencies", "onLoadSample"}


def widget_methods(source):
    tree = ast.parse(source)
    widget = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name.endswith("Widget"))
    return {f.name: f for f in widget.body if isinstance(f, ast.FunctionDef)}


def blocking_calls(source):
    found = []
    for name, function in widget_methods(source).items():
        if name in ALLOWED:
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                waits = any(k.arg == "wait" and getattr(k.value, "value", False) is True for k in node.keywords)
                if callee in BLOCKING or waits:
                    found.append(f"{name}:{node.lineno} {callee}")
    return found


def test_no_widget_handler_waits_on_a_process_or_the_clock():
    assert blocking_calls(WIDGET.read_text(encoding="utf-8")) == []


def test_the_static_check_sees_the_blocking_calls_the_panel_once_had():
    old = ('class OldWidget(ScriptedLoadableModuleWidget):\n'
           '    def onUseModel(self):\n        runner.start().wait()\n'
           '    def onCancel(self):\n        self._job.runner.cancel(wait=True)\n'
           '    def setup(self):\n        subprocess.run(["nvidia-smi"], timeout=5)\n')
    assert [c.split(" ")[1] for c in blocking_calls(old)] == ["wait", "cancel", "run"]


def fastest(call, repeat=3):
    """Best of ``repeat`` wall times (the 2-core CI box is shared: take the undisturbed run)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t0)
    return min(times), result


def poll_until_done(job, ticks, timeout_s=120):
    """Poll like the panel's timer until the job ends, appending each tick's cost to ``ticks``."""
    deadline = time.monotonic() + timeout_s
    while True:
        tick, running = fastest(job.poll, 1)
        ticks.append(tick)
        if not running:
            return
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def scene_256():
    slicer = pytest.importorskip("slicer")
    import SimpleITK as sitk

    from CPMAEDeidentifyLib import volumes
    from CPMAEDeidentifyLib.context import SlicerContext

    context = SlicerContext.standalone()
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 1000, (256, 256, 256), dtype=np.int16))
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head256")  # its display: automatic W/L once
    assert slicer.util.arrayFromVolume(node).shape == (256, 256, 256)
    return context, node


def test_starting_and_cancelling_a_remodel_and_each_timer_tick_fit_the_budget(scene_256, tmp_path, monkeypatch):
    from CPMAEDeidentifyLib import jobs
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    context, head = scene_256
    sleeper = tmp_path / "engine.py"  # stands in for the engine: a long job that prints progress
    sleeper.write_text("import json, time\nprint(json.dumps({'event': 'stage', 'stage': 'x'}), flush=True)\n"
                       "time.sleep(60)\n", encoding="utf-8")
    monkeypatch.setattr(jobs, "engineCommand", lambda *args: [sys.executable, str(sleeper)])
    logic = CPMAEDeidentifyLogic(context, tempRoot=str(tmp_path))
    started = []
    cost, _ = fastest(lambda: started.append(logic.process(head, waitForCompletion=False)))
    assert cost < BUDGET_S, f"Apply took {cost * 1000:.0f} ms on the GUI thread"
    for job in started:
        ticks = []
        while not any(e.kind == "stage" for e in job.runner.events):
            ticks.append(fastest(job.poll, 1)[0])
            time.sleep(0.02)
        cost, _ = fastest(job.cancel, 1)
        assert cost < BUDGET_S, f"Cancel took {cost * 1000:.0f} ms"
        poll_until_done(job, ticks)
        assert max(ticks) < BUDGET_S, f"a timer tick took {max(ticks) * 1000:.0f} ms"
        assert job.state == jobs.CANCELLED


def test_finishing_a_256_remodel_hands_the_result_to_the_scene_within_the_budget(scene_256, tmp_path, monkeypatch):
    """Reading the engine's output and building its voxels happen on the job's worker; the
    timer tick that finishes the job only creates the node (no automatic window/level)."""
    import slicer

    from CPMAEDeidentifyLib import jobs
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    context, head = scene_256
    engine = tmp_path / "engine.py"  # "deidentify IN OUT ...": returns the input unchanged
    engine.write_text("import json, shutil, sys\nimport SimpleITK as sitk\n"
                      "shutil.copyfile(sys.argv[2], sys.argv[3])\n"
                      "image = sitk.ReadImage(sys.argv[2])\n"
                      "sitk.WriteImage(sitk.Cast(image > 500, sitk.sitkUInt8), sys.argv[sys.argv.index('--mask-out') + 1])\n"
                      "print(json.dumps({'event': 'result'}), flush=True)\n", encoding="utf-8")
    monkeypatch.setattr(jobs, "engineCommand", lambda *args: [sys.executable, str(engine), *args])
    job = CPMAEDeidentifyLogic(context, tempRoot=str(tmp_path)).process(head, waitForCompletion=False)
    ticks = []
    poll_until_done(job, ticks)
    assert job.state == jobs.SUCCEEDED, job.errorMessage()
    assert np.array_equal(slicer.util.arrayFromVolume(job.outputNode), slicer.util.arrayFromVolume(head))
    assert job.outputNode.GetDisplayNode() is not None
    assert job.maskResult.segmentationNode.GetSegmentation().GetNumberOfSegments() == 1  # the deepbet mask shown
    assert max(ticks) < BUDGET_S, f"the finishing tick took {max(ticks) * 1000:.0f} ms"


def test_finishing_a_256_brain_mask_preview_fits_the_budget(scene_256, tmp_path, monkeypatch):
    from CPMAEDeidentifyLib import jobs
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    context, head = scene_256
    engine = tmp_path / "mask.py"  # "mask IN OUT"
    engine.write_text("import sys\nimport SimpleITK as sitk\n"
                      "sitk.WriteImage(sitk.Cast(sitk.ReadImage(sys.argv[2]) > 500, sitk.sitkUInt8), sys.argv[3])\n",
                      encoding="utf-8")
    monkeypatch.setattr(jobs, "engineCommand", lambda *args: [sys.executable, str(engine), *args])
    job = CPMAEDeidentifyLogic(context, tempRoot=str(tmp_path)).computeBrainMask(head, waitForCompletion=False)
    ticks = []
    poll_until_done(job, ticks)
    assert job.state == jobs.SUCCEEDED, job.errorMessage()
    assert job.result.segmentationNode.GetSegmentation().GetNumberOfSegments() == 1 and job.result.brainVolumeCm3 > 0
    assert max(ticks) < BUDGET_S, f"the finishing tick took {max(ticks) * 1000:.0f} ms"


def test_starting_the_png_export_fits_the_budget(scene_256, tmp_path, monkeypatch):
    from CPMAEDeidentifyLib import jobs
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    context, head = scene_256
    monkeypatch.setattr(jobs, "engineCommand", lambda *args: [sys.executable, "-c", "import time; time.sleep(30)"])
    logic = CPMAEDeidentifyLogic(context, tempRoot=str(tmp_path))
    started = []
    cost, _ = fastest(lambda: started.append(logic.renderFaces(head, head, tmp_path / "png", waitForCompletion=False)))
    assert cost < BUDGET_S, f"Export took {cost * 1000:.0f} ms on the GUI thread"
    for job in started:
        job.runner.cancel(wait=True)


def test_the_live_loss_curve_of_a_long_run_is_read_incrementally(tmp_path):
    from CPMAEDeidentifyLib import training

    run = tmp_path / "prior"
    run.mkdir()
    lines = "".join(json.dumps({"step": i, "loss": 1.0 / (i + 1), "lr": 1e-4, "seconds": 0.1}) + "\n"
                    for i in range(300_000))
    (run / "metrics.jsonl").write_text(lines, encoding="utf-8")
    tail = training.LossTail(run)
    assert len(tail.read()) == 300_000  # the first read catches up once, as a job would
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 300_000, "loss": 0.5}) + "\n")
    cost, points = fastest(tail.read, 1)
    assert points[-1] == (300_000, 0.5) and len(points) == 300_001
    assert cost < 0.01, f"a timer tick re-read the metrics for {cost * 1000:.0f} ms"


def test_gpu_query_model_export_and_dependency_check_start_within_the_budget(tmp_path, monkeypatch):
    from CPMAEDeidentifyLib import dependencies, jobs, training

    cost, missing = fastest(dependencies.missingPackages)
    assert cost < BUDGET_S and missing == []
    monkeypatch.setattr(jobs.shutil, "which", lambda name: sys.executable)  # an "nvidia-smi" that exists
    cost, runner = fastest(jobs.gpuQueryJob, 1)
    assert cost < BUDGET_S
    runner.cancel(wait=True)
    monkeypatch.setattr(jobs, "engineCommand", lambda *args: [sys.executable, "-c", "import time; time.sleep(30)"])
    cost, runner = fastest(lambda: training.exportJob("a", "b", "c", tmp_path / "bundle"), 1)
    assert cost < BUDGET_S and runner.running
    runner.cancel(wait=True)


def test_the_training_sessions_live_curve_is_the_incremental_reader(tmp_path):
    """What the panel's timer calls every 100 ms: only new lines are parsed."""
    from CPMAEDeidentifyLib import training

    session = training.TrainingSession(training.TrainingSettings("", str(tmp_path), steps=10))
    run = session.runFolder(0)
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(300_000)),
                                       encoding="utf-8")
    assert len(session.lossCurve()) == 300_000
    cost, points = fastest(session.lossCurve, 1)
    assert len(points) == 300_000 and cost < 0.01, f"a tick re-read the whole run: {cost * 1000:.0f} ms"


def test_setup_binds_the_parameter_node_before_connecting_handlers():
    """Qt calls slots in connection order: a handler connected before the parameter node's GUI
    binding reads the node before the widget's new value is in it ("profile" aimed the frontal
    camera). The view combo's handler also reads the combo itself, which holds after enter()."""
    setup = widget_methods(WIDGET.read_text(encoding="utf-8"))["setup"]
    calls = [(node.lineno, node.func.attr) for node in ast.walk(setup)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    bind = min(line for line, name in calls if name == "initializeParameterNode")
    connects = [line for line, name in calls if name == "connect"]
    assert connects and bind < min(connects)
    handler = widget_methods(WIDGET.read_text(encoding="utf-8"))["onQAViewChanged"]
    assert "itemData" in ast.unparse(handler) and "qaView =" in ast.unparse(handler)
