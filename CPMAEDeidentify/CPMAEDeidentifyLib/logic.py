"""CPMAEDeidentifyLogic: what the panel's buttons do, usable from Slicer's Python console.

Every engine call goes out of process (``jobs.JobRunner``) through files in a private temp
folder; the results come back as NEW nodes (the input node is never modified) only once the
job has succeeded, so a failure or a cancel leaves neither a half-filled node nor a file.

Console use::

    logic = CPMAEDeidentifyLogic()
    job = logic.process(getNode("MRHead"), resolution=QUICK_RESOLUTION)
    job.outputNode
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from cpmae import errors
from cpmae.geometry import QUICK_RESOLUTION
from CPMAEDeidentifyLib import jobs, segmentation, volumes
from CPMAEDeidentifyLib.context import SlicerContext

EventCallback = Optional[Callable[[jobs.JobEvent], None]]

ERRORS_BY_EXIT_CODE = {
    errors.EXIT_INPUT: errors.InputError,
    errors.EXIT_OUTPUT: errors.OutputError,
    errors.EXIT_WEIGHTS: errors.WeightsError,
    errors.EXIT_CANCELLED: errors.Cancelled,
}


@dataclass
class MaskResult:
    segmentationNode: object
    brainVolumeCm3: float


class EngineJob:
    """A running engine command tied to the nodes it will create; ``wait()``/``cancel()``/``state``."""

    def __init__(self, logic: "CPMAEDeidentifyLogic", inputNode, workDir: Path):
        self.logic = logic
        self.inputNode = inputNode
        self.workDir = workDir
        self.runner: Optional[jobs.JobRunner] = None
        self.createdNodes: List[object] = []

    @property
    def state(self) -> str:
        return self.runner.state if self.runner else jobs.PENDING

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running

    def poll(self) -> bool:
        return self.runner.poll()

    def cancel(self) -> None:
        self.runner.cancel()

    def wait(self, timeout: Optional[float] = None) -> "EngineJob":
        """Block until done; raise the engine's error (one line naming the file) on failure."""
        self.runner.wait(timeout=timeout)
        self.raiseForFailure()
        return self

    def errorMessage(self) -> str:
        message = self.runner.errorMessage()
        # the engine names our private temp files; name the nodes the user knows instead
        # (whatever the platform's separator: the engine prints paths as the OS spells them)
        message = message.replace(str(self.workDir / "input.nii"), self.inputNode.GetName())
        for separator in {os.sep, "/"}:
            message = message.replace(str(self.workDir) + separator, "")
        return message

    def raiseForFailure(self) -> None:
        if self.state in (jobs.SUCCEEDED, jobs.RUNNING, jobs.PENDING):
            return
        if self.state == jobs.CANCELLED:
            raise errors.Cancelled("cancelled; nothing was written", path=self.inputNode.GetName())
        errorClass = ERRORS_BY_EXIT_CODE.get(self.runner.returncode, errors.CPMAEError)
        raise errorClass(self.errorMessage())

    def _addNode(self, node):
        self.createdNodes.append(node)
        return node

    def _discardCreatedNodes(self) -> None:
        for node in self.createdNodes:
            if node.GetScene() is not None:
                segmentation._removeNode(self.logic.context.scene, node)
        self.createdNodes = []


class MaskJob(EngineJob):
    """``cpmae mask IN OUT``: deepbet brain mask -> segmentation node + brain volume."""

    result: Optional[MaskResult] = None

    def collect(self) -> dict:
        """On the job's worker: read the mask and make the segment's voxels."""
        import SimpleITK as sitk

        mask = sitk.ReadImage(str(self.workDir / "mask.nii"))
        name = f"{self.inputNode.GetName()} brain mask"
        return {"oriented": segmentation.orientedMask(mask, self.inputDims, self.inputMatrix, name),
                "cm3": segmentation.brainVolumeCm3(mask), "name": name}

    def _finished(self, runner: jobs.JobRunner) -> None:
        if runner.state != jobs.SUCCEEDED:
            return
        collected = runner.collected
        try:
            node = self._addNode(segmentation.addSegmentationFromOrientedMask(
                self.logic.context, collected["oriented"], self.inputNode, collected["name"]))
            self.result = MaskResult(node, collected["cm3"])
        except Exception:
            self._discardCreatedNodes()
            raise


class DeidentifyJob(EngineJob):
    """``cpmae deidentify``: a new remodelled volume node (+ the brain mask it kept) on success."""

    outputNode = None
    maskResult: Optional[MaskResult] = None

    def __init__(self, logic, inputNode, workDir, outputName: str, showMask: bool):
        super().__init__(logic, inputNode, workDir)
        self.outputName = outputName
        self.showMask = showMask

    def collect(self) -> dict:
        """On the job's worker thread: read and check the engine's files, voxels ready for VTK."""
        import SimpleITK as sitk

        image = sitk.ReadImage(str(self.workDir / "output.nii"))
        if image.GetSize() != self.inputDims:
            raise errors.OutputError(f"the engine returned a {image.GetSize()} grid for a {self.inputDims} input",
                                     path=self.outputName)
        if not volumes.sameGeometry(volumes.geometryFromImage(image), self.inputMatrix):
            raise errors.OutputError("the engine's output is not on the input geometry", path=self.outputName)
        collected = {"imageData": volumes.imageDataFromImage(image), "mask": None}
        maskPath = self.workDir / "mask-out.nii"
        if maskPath.is_file():
            mask = sitk.ReadImage(str(maskPath))
            collected["mask"] = segmentation.brainVolumeCm3(mask)
            if self.showMask:
                collected["oriented"] = segmentation.orientedMask(mask, self.inputDims, self.inputMatrix,
                                                                  f"{self.outputName} brain mask")
        return collected

    def _finished(self, runner: jobs.JobRunner) -> None:
        """On the caller's thread: hand the collected voxels to new nodes (no reading, no histogram)."""
        if runner.state != jobs.SUCCEEDED:
            return
        collected = runner.collected
        try:
            inputDisplay = self.inputNode.GetDisplayNode()
            windowLevel = None
            if inputDisplay is not None and inputDisplay.IsA("vtkMRMLScalarVolumeDisplayNode"):
                windowLevel = (inputDisplay.GetWindow(), inputDisplay.GetLevel())
            # the input node's exact IJK-to-RAS, not the float32-rounded NIfTI header
            node = self._addNode(volumes.addVolumeNodeFromImageData(
                self.logic.context.scene, collected["imageData"], self.outputName, self.inputMatrix, windowLevel))
            # same place in the world: a registration transform on the input applies to the output too
            node.SetAndObserveTransformNodeID(self.inputNode.GetTransformNodeID())
            if collected["mask"] is not None:
                maskNode = None
                if self.showMask:
                    maskNode = self._addNode(segmentation.addSegmentationFromOrientedMask(
                        self.logic.context, collected["oriented"], self.inputNode, f"{self.outputName} brain mask"))
                self.maskResult = MaskResult(maskNode, collected["mask"])
            self.outputNode = node
        except Exception:
            self._discardCreatedNodes()
            raise


class CPMAEDeidentifyLogic:
    """Brain mask, remodel and face renderings on MRML nodes; the engine runs out of process."""

    def __init__(self, context: Optional[SlicerContext] = None, tempRoot: Optional[str] = None):
        self.context = context or SlicerContext.fromSlicer()
        self.tempRoot = tempRoot  # None: the system temp folder (Slicer passes its temporary path)

    def _workDir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="cpmae-job-", dir=self.tempRoot))

    def _start(self, job: EngineJob, command: List[str], onEvent: EventCallback, waitForCompletion: bool,
               prepare=None, collect=None):
        """Start ``command`` on a worker thread (``prepare`` first writes its inputs there), so
        the caller (the GUI thread) only pays for copying voxels out of the nodes."""
        job.runner = jobs.JobRunner(command, onEvent=onEvent, cleanupPaths=[job.workDir],
                                    onFinished=job._finished, prepare=prepare, collect=collect)
        job.runner.start()
        if waitForCompletion:
            job.wait()
        return job

    def _checkInput(self, inputNode):
        if inputNode is None:
            raise errors.InputError("no input volume selected")
        if not inputNode.IsA("vtkMRMLScalarVolumeNode") or inputNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise errors.InputError("the input must be a scalar (MRI) volume", path=inputNode.GetName())
        if inputNode.GetImageData() is None:
            raise errors.InputError("the volume has no image data", path=inputNode.GetName())

    def computeBrainMask(self, inputNode, waitForCompletion: bool = True, onEvent: EventCallback = None) -> MaskJob:
        """Run deepbet (``cpmae mask``) out of process; ``job.result`` holds the segmentation + cm³."""
        self._checkInput(inputNode)
        snap = volumes.snapshot(inputNode)  # a view of the voxels; written by the job's worker
        job = MaskJob(self, inputNode, self._workDir())
        job.inputDims = tuple(inputNode.GetImageData().GetDimensions())
        job.inputMatrix = volumes.ijkToRasMatrix(inputNode)
        command = jobs.engineCommand("mask", str(job.workDir / "input.nii"), str(job.workDir / "mask.nii"))
        return self._start(job, command, onEvent, waitForCompletion,
                           prepare=lambda: volumes.writeImage(volumes.imageFromSnapshot(snap), job.workDir / "input.nii"),
                           collect=job.collect)

    def maskImage(self, maskNode, inputNode):
        """The user's segmentation/labelmap as a binary mask on the input grid (for ``--mask``)."""
        return segmentation.maskImageFromNode(self.context, maskNode, inputNode)

    def process(self, inputNode, outputName: Optional[str] = None, maskNode=None, weights: Optional[str] = None,
                resolution: int = QUICK_RESOLUTION, steps: Optional[int] = None, seed: int = 0, device: str = "auto",
                showMask: bool = True, waitForCompletion: bool = True, onEvent: EventCallback = None) -> DeidentifyJob:
        """Remodel the face of ``inputNode`` into a new volume node (``job.outputNode``).

        ``maskNode``: an existing segmentation/labelmap to keep bit-identical (default: deepbet).
        ``weights``: a bundle folder (default: the engine's shipped bundle for ``resolution``).
        With ``waitForCompletion=False`` the job runs on; call ``job.poll()`` from a timer.
        """
        import SimpleITK as sitk

        self._checkInput(inputNode)
        from cpmae.geometry import GRIDS

        if resolution not in GRIDS:
            raise errors.InputError(f"resolution must be one of {sorted(GRIDS)}, not {resolution}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(device)):  # the engine checks the machine has it
            raise errors.InputError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
        outputName = outputName or f"{inputNode.GetName()}_deidentified"
        # voxels are copied out of the nodes here (caller's thread: MRML is not thread-safe);
        # the files are written by the job's worker thread
        inputs = {"input.nii": volumes.snapshot(inputNode)}
        if maskNode is not None:
            inputs["mask.nii"] = self.maskImage(maskNode, inputNode)
        job = DeidentifyJob(self, inputNode, self._workDir(), outputName, showMask)
        job.inputDims = tuple(inputNode.GetImageData().GetDimensions())
        job.inputMatrix = volumes.ijkToRasMatrix(inputNode)
        work = job.workDir
        command = jobs.engineCommand("deidentify", str(work / "input.nii"), str(work / "output.nii"),
                                     "--mask-out", str(work / "mask-out.nii"), "--progress", "json",
                                     "--resolution", str(resolution), "--seed", str(int(seed)),
                                     "--device", device)
        if maskNode is not None:
            command += ["--mask", str(work / "mask.nii")]
        if weights:
            command += ["--weights", str(weights)]
        if steps:
            command += ["--steps", str(int(steps))]

        def prepare():
            for name, data in inputs.items():
                volumes.writeImage(data if isinstance(data, sitk.Image) else volumes.imageFromSnapshot(data), work / name)

        return self._start(job, command, onEvent, waitForCompletion, prepare=prepare, collect=job.collect)

    def renderFaces(self, beforeNode, afterNode, outputDir, views: Optional[Sequence[str]] = None, size: int = 320,
                    waitForCompletion: bool = True, onEvent: EventCallback = None) -> "RenderJob":
        """Before/after face pictures as PNGs with the engine's renderer (``cpmae render``).

        Out of process like every engine call: no render window opens inside Slicer and the
        scene's volume renderings are left as they are. Both pictures use the *before* scan's
        threshold and camera. ``views``: default the six standard cameras of ``cpmae.render``.
        ``job.result``: {"before_<view>"|"after_<view>"|"before_after": path}.
        """
        if views is None:
            from cpmae.render import STANDARD_VIEWS as views  # SimpleITK import only when used
        for node in (beforeNode, afterNode):
            self._checkInput(node)
        snaps = {"before.nii": volumes.snapshot(beforeNode), "after.nii": volumes.snapshot(afterNode)}
        job = RenderJob(self, beforeNode, self._workDir(), Path(outputDir), tuple(views))
        work = job.workDir
        command = jobs.engineCommand("render", str(work / "before.nii"), str(work / "png"),
                                     "--compare", str(work / "after.nii"), "--views", ",".join(views),
                                     "--size", str(int(size)), "--singles")

        def prepare():
            for name, snap in snaps.items():
                volumes.writeImage(volumes.imageFromSnapshot(snap), work / name)

        return self._start(job, command, onEvent, waitForCompletion, prepare=prepare)

    def changedRegion(self, beforeNode, afterNode, maskNode=None, name: Optional[str] = None):
        """A new volume |after - before| with the brain (``maskNode``) set to 0: seams and
        left-over features stand out in a slice view; on the input's geometry."""
        import slicer

        for node in (beforeNode, afterNode):
            self._checkInput(node)
        before = slicer.util.arrayFromVolume(beforeNode).astype(np.float32)
        after = slicer.util.arrayFromVolume(afterNode).astype(np.float32)
        if before.shape != after.shape:
            raise errors.InputError("before and after are not on the same voxel grid", path=afterNode.GetName())
        difference = np.abs(after - before)
        if maskNode is not None:
            import SimpleITK as sitk

            brain = sitk.GetArrayFromImage(self.maskImage(maskNode, beforeNode)) > 0  # not a view of a temporary
            difference[brain] = 0
        node = self.context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                    name or f"{afterNode.GetName()} change")
        slicer.util.updateVolumeFromArray(node, difference)
        volumes.setIjkToRasMatrix(node, volumes.ijkToRasMatrix(beforeNode))
        node.SetAndObserveTransformNodeID(beforeNode.GetTransformNodeID())
        node.CreateDefaultDisplayNodes()
        return node


class RenderJob(EngineJob):
    """``cpmae render --compare``: PNGs moved into the output folder only when all were drawn."""

    def __init__(self, logic, inputNode, workDir: Path, outputDir: Path, views):
        super().__init__(logic, inputNode, workDir)
        self.outputDir = outputDir
        self.views = views
        self.result: Dict[str, Path] = {}

    def _finished(self, runner: jobs.JobRunner) -> None:
        if runner.state != jobs.SUCCEEDED:
            return
        png = self.workDir / "png"
        sources = {"before_after": png / "before_vs_after.png"}
        for view in self.views:
            sources[f"before_{view}"] = png / f"before_vs_after_before_{view}.png"
            sources[f"after_{view}"] = png / f"before_vs_after_after_{view}.png"
        missing = [str(p.name) for p in sources.values() if not p.is_file()]
        if missing:
            raise errors.OutputError(f"the renderer did not write {', '.join(missing)}", path=self.outputDir)
        from cpmae.atomic import ensure_output_dir

        ensure_output_dir(self.outputDir)
        for key, source in sources.items():
            target = self.outputDir / f"{key}.png"
            shutil.move(str(source), str(target))
            self.result[key] = target
