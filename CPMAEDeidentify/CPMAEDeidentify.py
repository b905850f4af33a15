"""CPMAE Deidentify: learned face remodeling of head MRI in 3D Slicer.

This file is the Qt side only (module metadata, the panel, the self-test) and stays thin:
everything that can run without Qt lives in ``CPMAEDeidentifyLib`` (tested with slicer-core
under pytest), and the engine (``cpmae``: torch, deepbet) always runs in a separate process.
"""
import logging
import pathlib
import shutil
import subprocess
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CPMAEDeidentifyLib import jobs, models, training
from CPMAEDeidentifyLib.context import SlicerContext
from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic as EngineLogic
from CPMAEDeidentifyLib.logic import MaskJob

POLL_INTERVAL_MS = 100


#
# Module
#


class CPMAEDeidentify(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CPMAE Deidentify")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Neuroimaging")]
        self.parent.dependencies = []  # PyTorch extension used when installed, not required to load
        self.parent.contributors = ["CPMAE contributors"]
        self.parent.helpText = _(
            "Remodel the face and skull of a head MRI with a learned model (CP-MAE) so that the person "
            "cannot be recognised from a 3D rendering, while every brain voxel stays bit-identical. "
            "The result is a new volume; the input is never modified. Check the before/after face views "
            "in the Face QA section before sharing data.")
        self.parent.acknowledgementText = _(
            "Method after CP-MAE (MICCAI 2024) and CP-GAN. Brain extraction by deepbet. "
            "Sample heads: MRHead (Slicer sample data) and pydeface's averaged head (MIT licence).")
        # Sample Data registration needs the application fully started
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Add pydeface's averaged head to the Sample Data module (category CPMAE)."""
    import os

    import SampleData

    from CPMAEDeidentifyLib.sampledata import AVERAGED_HEAD

    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "CPMAEDeidentify.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(thumbnailFileName=icon, **AVERAGED_HEAD)


#
# Parameter node
#


@parameterNodeWrapper
class CPMAEDeidentifyParameterNode:
    """Everything the panel edits; saved with the scene. Field names = SlicerParameterName in the .ui."""

    inputVolume: vtkMRMLScalarVolumeNode
    brainMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    localWeights: pathlib.Path
    resolution: Annotated[str, Choice(["128", "256"])] = "128"
    steps: Annotated[int, WithinRange(0, 64)] = 0
    seed: Annotated[int, Minimum(0)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    qaView: Annotated[str, Choice(["frontal", "profile"])] = "frontal"
    qaFolder: pathlib.Path
    trainDataFolder: pathlib.Path
    trainOutputFolder: pathlib.Path
    trainResolution: Annotated[str, Choice(["128", "256"])] = "128"
    trainSteps: Annotated[int, WithinRange(1, 10000000)] = 1000
    trainDevice: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    # set by the panel, not by a widget
    modelName: str = "demo-128"
    outputVolume: vtkMRMLScalarVolumeNode


#
# Widget
#


class CPMAEDeidentifyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # running mask or remodel job
        self._training = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)
        self._catalogue = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CPMAEDeidentify.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CPMAEDeidentifyLogic(tempRoot=slicer.app.temporaryPath)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.computeMaskButton.connect("clicked(bool)", self.onComputeMask)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.showFaceQAButton.connect("clicked(bool)", self.onShowFaceQA)
        self.ui.qaViewComboBox.connect("currentIndexChanged(int)", lambda index=0: self._aimFaceQACameras())
        self.ui.exportPngButton.connect("clicked(bool)", self.onExportPng)
        self.ui.trainStartButton.connect("clicked(bool)", lambda checked=False: self.onTrainStart(resume=False))
        self.ui.trainResumeButton.connect("clicked(bool)", lambda checked=False: self.onTrainStart(resume=True))
        self.ui.trainStopButton.connect("clicked(bool)", self.onTrainStop)
        self.ui.checkpointListWidget.connect("currentRowChanged(int)",
                                             lambda row: self.ui.useModelButton.setEnabled(row >= 0))
        self.ui.useModelButton.connect("clicked(bool)", self.onUseModel)

        self._fillModelSelector()
        self.ui.gpuInfoLabel.text = detectGpus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module closed or application exiting: never leave an engine process behind."""
        self._cancelJobs()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelJobs()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[CPMAEDeidentifyParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._selectModel(self._parameterNode.modelName)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self._job is not None and self._job.running
        hasInput = bool(p and p.inputVolume)
        self.ui.applyButton.enabled = hasInput or busy
        self.ui.applyButton.text = _("Cancel") if busy else _("Apply")
        self.ui.computeMaskButton.enabled = hasInput and not busy
        self.ui.showFaceQAButton.enabled = bool(p and p.inputVolume and p.outputVolume)
        self.ui.exportPngButton.enabled = bool(p and p.inputVolume and p.outputVolume and str(p.qaFolder) not in ("", "."))
        training_ = self._training is not None and self._training.state == jobs.RUNNING
        self.ui.trainStartButton.enabled = not training_
        self.ui.trainResumeButton.enabled = not training_
        self.ui.trainStopButton.enabled = training_

    # -- input -------------------------------------------------------------------------------
    def onLoadSample(self) -> None:
        import SampleData

        with slicer.util.tryWithErrorDisplay(_("Failed to load the sample head."), waitCursor=True):
            self._parameterNode.inputVolume = SampleData.downloadSample("MRHead")

    # -- weights -----------------------------------------------------------------------------
    def _fillModelSelector(self) -> None:
        self.ui.modelSelector.clear()
        try:
            self._catalogue = models.loadCatalogue()
        except Exception as exc:
            self._catalogue = []
            self._log(str(exc))
        for entry in self._catalogue:
            available = models.isAvailable(entry)
            self.ui.modelSelector.addItem(entry.label + ("" if available else _(" (download)")), entry.name)
            self.ui.modelSelector.setItemData(self.ui.modelSelector.count - 1,
                                              f"{entry.description}\nLicence: {entry.license}", qt.Qt.ToolTipRole)

    def _selectModel(self, name: str) -> None:
        index = self.ui.modelSelector.findData(name)
        if index >= 0:
            self.ui.modelSelector.currentIndex = index

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode is None or index < 0:
            return
        entry = self._catalogue[index]
        self._parameterNode.modelName = entry.name
        self._parameterNode.resolution = str(entry.resolution)

    def _resolveWeights(self) -> Optional[str]:
        """The bundle folder to use: the local folder if given, else the catalogue entry (downloaded once)."""
        local = str(self._parameterNode.localWeights)
        if local not in ("", "."):
            return str(models.useLocalFolder(local))
        entry = next((e for e in self._catalogue if e.name == self._parameterNode.modelName), None)
        if entry is None:
            return None  # engine default for the resolution
        if entry.builtin or models.isAvailable(entry):
            return str(models.ensureModel(entry))  # no download; a missing built-in bundle is a clear error
        if not slicer.util.confirmOkCancelDisplay(
                _("Download the model '{name}' ({size:.0f} MB, licence {licence}) from\n{url}?").format(
                    name=entry.name, size=entry.size / 1e6, licence=entry.license, url=entry.url)):
            return ""
        progress = slicer.util.createProgressDialog(labelText=_("Downloading {name}").format(name=entry.name),
                                                    maximum=100)
        try:
            folder = models.ensureModel(entry, lambda done, total: self._downloadProgress(progress, done, total))
        finally:
            progress.close()
        self._fillModelSelector()
        self._selectModel(entry.name)
        return str(folder)

    @staticmethod
    def _downloadProgress(dialog, done: int, total: int) -> None:
        dialog.setValue(int(100 * done / total) if total else 0)
        slicer.app.processEvents()

    # -- brain mask --------------------------------------------------------------------------
    def onComputeMask(self) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Brain mask failed."), waitCursor=True):
            self._startJob(self.logic.computeBrainMask(self._parameterNode.inputVolume, waitForCompletion=False,
                                                       onEvent=self._onJobEvent), _("Computing brain mask"))

    def _maskDone(self, job) -> None:
        segmentationNode = job.result.segmentationNode
        self._parameterNode.brainMask = segmentationNode
        self._showMask(segmentationNode)
        self.ui.brainVolumeValueLabel.text = f"{job.result.brainVolumeCm3:.0f} cm³"

    def _showMask(self, segmentationNode) -> None:
        segmentationNode.CreateClosedSurfaceRepresentation()
        display = segmentationNode.GetDisplayNode()
        if display:
            display.SetOpacity2DFill(0.3)
            display.SetVisibility(True)
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, fit=True)

    # -- remodel -----------------------------------------------------------------------------
    def onApply(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()  # Apply is Cancel while running
            return
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("De-identification failed to start."), waitCursor=True):
            weights = self._resolveWeights()
            if weights == "":
                return  # the user declined the download
            self.ui.logTextEdit.clear()
            job = self.logic.process(p.inputVolume, maskNode=p.brainMask, weights=weights, showMask=not p.brainMask,
                                     resolution=int(p.resolution), steps=p.steps or None, seed=p.seed,
                                     device=p.device, waitForCompletion=False, onEvent=self._onJobEvent)
            self._startJob(job, _("De-identifying"))

    def _remodelDone(self, job) -> None:
        p = self._parameterNode
        p.outputVolume = job.outputNode
        if job.maskResult:
            self.ui.brainVolumeValueLabel.text = f"{job.maskResult.brainVolumeCm3:.0f} cm³"
            if job.maskResult.segmentationNode is not None and not p.brainMask:
                p.brainMask = job.maskResult.segmentationNode
        self.ui.resultLabel.text = job.outputNode.GetName()
        slicer.util.setSliceViewerLayers(background=job.outputNode, fit=True)

    # -- jobs --------------------------------------------------------------------------------
    def _startJob(self, job, title: str) -> None:
        self._job = job
        self._jobTitle = title
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress line
        self.ui.progressBar.setFormat(title)
        self._log(title + " ...")
        self._timer.start()
        self._updateButtons()

    def _onJobEvent(self, event) -> None:
        """Progress lines -> progress bar; log/stderr lines -> log pane."""
        if event.kind == "stage":
            self.ui.progressBar.setFormat(f"{event.data.get('stage')} %p%")
            self.ui.progressBar.setRange(0, 100 if event.data.get("total") else 0)
            self.ui.progressBar.setValue(0)
            self._log(f"{event.data.get('stage')} ...")
        elif event.kind == "progress" and event.fraction is not None:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.setValue(int(100 * event.fraction))
        elif event.kind == "stage_done":
            self._log(f"{event.data.get('stage')}: {event.data.get('seconds', 0):.1f} s")
        elif event.kind in ("log", "stderr"):
            self._log(str(event.data.get("message", "")))

    def _poll(self) -> None:
        """Timer tick: deliver progress lines, finish jobs, stop ticking when nothing runs."""
        if self._training is not None and self._training.state == jobs.RUNNING:
            self._pollTraining()
        if self._job is not None and not self._job.poll():
            self._jobFinished()
        if self._job is None and (self._training is None or self._training.state != jobs.RUNNING):
            self._timer.stop()

    def _jobFinished(self) -> None:
        job, self._job = self._job, None
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(100 if job.state == jobs.SUCCEEDED else 0)
        self.ui.progressBar.setFormat(job.state)
        if job.state == jobs.SUCCEEDED:
            self._maskDone(job) if isinstance(job, MaskJob) else self._remodelDone(job)
            self._log(_("done"))
        elif job.state == jobs.CANCELLED:
            self._log(_("cancelled: nothing was written"))
        else:
            self._log(job.errorMessage())
            slicer.util.errorDisplay(job.errorMessage(), windowTitle=_("CPMAE"))
        self._updateButtons()

    def _cancelJobs(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
        if self._training is not None and self._training.state == jobs.RUNNING:
            self._training.stop()
        self._timer.stop()

    def _log(self, message: str) -> None:
        if message:
            self.ui.logTextEdit.appendPlainText(message)
            logging.info(f"CPMAE: {message}")

    def _ensureDependencies(self) -> bool:
        from CPMAEDeidentifyLib import dependencies

        try:
            with slicer.util.WaitCursor():
                return dependencies.ensureDependencies(
                    lambda message: slicer.util.confirmOkCancelDisplay(message, windowTitle=_("CPMAE")))
        except Exception as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("CPMAE"))
            return False

    # -- face QA -----------------------------------------------------------------------------
    def onShowFaceQA(self) -> None:
        """Before and after side by side in two 3D views with linked cameras, skin-like rendering."""
        from CPMAEDeidentifyLib import rendering

        p = self._parameterNode
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutDual3DView)
        viewNodes = [layoutManager.threeDWidget(i).mrmlViewNode() for i in range(2)]
        array = slicer.util.arrayFromVolume(p.inputVolume)
        threshold = rendering.skinThreshold(array)
        for volumeNode, viewNode in zip((p.inputVolume, p.outputVolume), viewNodes):
            display = rendering.showSkinRendering(self.logic.context, volumeNode, threshold)
            display.RemoveAllViewNodeIDs()
            display.AddViewNodeID(viewNode.GetID())
            viewNode.SetLinkedControl(True)  # one camera drives the other
            viewNode.SetBoxVisible(False)
            viewNode.SetAxisLabelsVisible(False)
        self._aimFaceQACameras()

    def _aimFaceQACameras(self) -> None:
        import ctk

        layoutManager = slicer.app.layoutManager()
        if self._parameterNode is None or layoutManager.threeDViewCount < 2:
            return
        axis = ctk.ctkAxesWidget.Anterior if self._parameterNode.qaView == "frontal" else ctk.ctkAxesWidget.Left
        for i in range(2):
            view = layoutManager.threeDWidget(i).threeDView()
            view.resetFocalPoint()
            view.lookFromAxis(axis)

    def onExportPng(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self.logic.renderFaces(p.inputVolume, p.outputVolume, str(p.qaFolder))
            self._log(_("wrote {n} pictures to {folder}").format(n=len(written), folder=p.qaFolder))

    # -- training ----------------------------------------------------------------------------
    def onTrainStart(self, resume: bool) -> None:
        p = self._parameterNode
        if str(p.trainOutputFolder) in ("", "."):
            slicer.util.errorDisplay(_("Choose an output folder for the training runs."))
            return
        if not self._ensureDependencies():
            return
        data = str(p.trainDataFolder)
        settings = training.TrainingSettings(dataFolder="" if data in ("", ".") else data,
                                             outputFolder=str(p.trainOutputFolder),
                                             resolution=int(p.trainResolution), steps=p.trainSteps,
                                             device=p.trainDevice)
        self._training = training.TrainingSession(settings, onEvent=self._onTrainingEvent)
        with slicer.util.tryWithErrorDisplay(_("Training failed to start.")):
            self._training.start(resume=resume)
            self._timer.start()
        self._updateButtons()

    def onTrainStop(self) -> None:
        if self._training is not None:
            self._training.stop()
            self.ui.trainStatusLabel.text = _("stopped (resume continues from the last checkpoint)")
        self._refreshCheckpoints()
        self._updateButtons()

    def _onTrainingEvent(self, event) -> None:
        if event.kind == "stage":
            self.ui.trainStatusLabel.text = str(event.data.get("stage"))
        elif event.kind in ("log", "stderr"):
            self._log(str(event.data.get("message", "")))

    def _pollTraining(self) -> None:
        running = self._training.poll()
        self._updateLossCurve(self._training.lossCurve())
        if not running:
            state = self._training.state
            self.ui.trainStatusLabel.text = state if state != jobs.FAILED else self._training.error
            if state == jobs.FAILED:
                slicer.util.errorDisplay(self._training.error, windowTitle=_("CPMAE training"))
            self._refreshCheckpoints()
            self._updateButtons()

    def _updateLossCurve(self, points) -> None:
        """Loss against step in a table + plot chart shown in the panel's plot view."""
        tableNode = self._singleton("vtkMRMLTableNode", "CPMAE training loss")
        table = tableNode.GetTable()
        if table.GetNumberOfColumns() < 2:
            for name in ("step", "loss"):
                column = vtk.vtkDoubleArray()
                column.SetName(name)
                table.AddColumn(column)
        table.SetNumberOfRows(len(points))
        for row, (step, loss) in enumerate(points):
            table.SetValue(row, 0, step)
            table.SetValue(row, 1, loss)
        table.Modified()
        series = self._singleton("vtkMRMLPlotSeriesNode", "CPMAE loss")
        series.SetAndObserveTableNodeID(tableNode.GetID())
        series.SetXColumnName("step")
        series.SetYColumnName("loss")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        chart = self._singleton("vtkMRMLPlotChartNode", "CPMAE loss chart")
        if not chart.HasPlotSeriesNodeID(series.GetID()):
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetXAxisTitle("step")
        chart.SetYAxisTitle("loss")
        viewNode = self._singleton("vtkMRMLPlotViewNode", "CPMAE loss view")
        viewNode.SetPlotChartNodeID(chart.GetID())
        self.ui.lossPlotView.setMRMLScene(slicer.mrmlScene)
        self.ui.lossPlotView.setMRMLPlotViewNode(viewNode)

    @staticmethod
    def _singleton(className: str, name: str):
        node = slicer.mrmlScene.GetFirstNode(name, className)
        return node if node is not None else slicer.mrmlScene.AddNewNodeByClass(className, name)

    def _refreshCheckpoints(self) -> None:
        self.ui.checkpointListWidget.clear()
        folder = str(self._parameterNode.trainOutputFolder)
        for checkpoint in training.listCheckpoints(folder):
            self.ui.checkpointListWidget.addItem(f"{checkpoint.parent.parent.name}/{checkpoint.name}")

    def onUseModel(self) -> None:
        """Export the chosen checkpoint (with the newest checkpoints of the other two runs) and use it."""
        item = self.ui.checkpointListWidget.currentItem()
        if item is None:
            return
        out = pathlib.Path(str(self._parameterNode.trainOutputFolder))
        runName, checkpointName = item.text().split("/")
        runs = [out / name for name, _ in training.STAGES]
        runs = [run / "checkpoints" / checkpointName if run.name == runName else run for run in runs]
        bundle = out / "bundle"
        runner = jobs.JobRunner(training.exportCommand(*runs, bundle), onEvent=self._onTrainingEvent)
        with slicer.util.tryWithErrorDisplay(_("Export of the model failed."), waitCursor=True):
            if runner.start().wait() != jobs.SUCCEEDED:
                raise RuntimeError(runner.errorMessage())
            self._parameterNode.localWeights = pathlib.Path(models.useLocalFolder(bundle))
            self._log(_("now using the weights in {folder}").format(folder=bundle))


def detectGpus() -> str:
    """'GPU: <name>, <memory>' from nvidia-smi (no torch import in Slicer's process), or a CPU note."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            if out:
                return _("GPU: ") + "; ".join(line.strip() for line in out.splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    return _("No CUDA GPU detected: runs on the CPU (128³ takes about a minute).")


#
# Logic (Slicer's module-logic protocol: parameter node; the work is in CPMAEDeidentifyLib)
#


class CPMAEDeidentifyLogic(ScriptedLoadableModuleLogic, EngineLogic):
    """Slicer's logic base (parameter node) + the Qt-free CPMAE logic (mask, remodel, renderings)."""

    def __init__(self, context=None, tempRoot=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        EngineLogic.__init__(self, context or SlicerContext.fromSlicer(), tempRoot=tempRoot)

    def getParameterNode(self):
        return CPMAEDeidentifyParameterNode(super().getParameterNode())


#
# Self-test (run by Slicer's ctest: `ctest -R py_CPMAEDeidentify`)
#


class CPMAEDeidentifyTest(ScriptedLoadableModuleTest):
    """Checks that only a real Slicer can run: the panel, its parameter node, 3D views."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_binds_parameter_node()
        self.setUp()
        self.test_logic_on_mrhead()
        self.setUp()
        self.test_face_qa_views()

    def _loadHead(self):
        import SampleData

        return SampleData.downloadSample("MRHead")

    def test_panel_binds_parameter_node(self):
        self.delayDisplay("Panel and parameter node")
        widget = slicer.modules.cpmaedeidentify.widgetRepresentation().self()
        head = self._loadHead()
        widget.initializeParameterNode()
        parameters = widget._parameterNode
        parameters.inputVolume = head
        self.assertEqual(widget.ui.inputSelector.currentNode(), head)
        widget.ui.seedSpinBox.value = 7
        self.assertEqual(parameters.seed, 7)
        widget.ui.resolutionComboBox.currentIndex = 1
        self.assertEqual(parameters.resolution, "256")
        self.assertTrue(widget.ui.applyButton.enabled)
        self.assertEqual(widget.ui.applyButton.text, "Apply")

    def test_logic_on_mrhead(self):
        """Geometry round trip and renderings inside real Slicer (PythonSlicer, GPU OpenGL)."""
        import numpy as np
        import tempfile

        from CPMAEDeidentifyLib import volumes

        self.delayDisplay("Logic on MRHead")
        head = self._loadHead()
        image = volumes.imageFromVolumeNode(head)
        copy = volumes.addVolumeNodeFromImage(slicer.mrmlScene, image, "copy")
        self.assertTrue(np.array_equal(volumes.ijkToRasMatrix(copy), volumes.ijkToRasMatrix(head)) or
                        volumes.sameGeometry(volumes.ijkToRasMatrix(copy), volumes.ijkToRasMatrix(head), 1e-9))
        array = slicer.util.arrayFromVolume(copy)
        array[:, : array.shape[1] // 3, :] = 0  # remove the front third: the face must change
        slicer.util.arrayFromVolumeModified(copy)
        logic = CPMAEDeidentifyLogic()
        with tempfile.TemporaryDirectory() as folder:
            written = logic.renderFaces(head, copy, folder, size=(256, 256))
            self.assertEqual(len(written), 6)
        if _engineReady():
            job = logic.process(head, resolution=128)
            self.assertIsNotNone(job.outputNode)
            self.assertTrue(np.array_equal(volumes.ijkToRasMatrix(job.outputNode), volumes.ijkToRasMatrix(head)))
        else:
            self.delayDisplay("engine dependencies not installed: remodel step skipped")

    def test_face_qa_views(self):
        self.delayDisplay("Face QA views")
        widget = slicer.modules.cpmaedeidentify.widgetRepresentation().self()
        head = self._loadHead()
        widget.initializeParameterNode()
        widget._parameterNode.inputVolume = head
        widget._parameterNode.outputVolume = head
        widget.onShowFaceQA()
        layoutManager = slicer.app.layoutManager()
        self.assertGreaterEqual(layoutManager.threeDViewCount, 2)
        self.assertTrue(layoutManager.threeDWidget(0).mrmlViewNode().GetLinkedControl())
        self.delayDisplay("Test passed")


def _engineReady() -> bool:
    from CPMAEDeidentifyLib import dependencies

    return not dependencies.missingPackages() and (models.BUILTIN_WEIGHTS / "demo-128" / "manifest.json").is_file()
