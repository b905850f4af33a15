"""CPMAE Deidentify: learned face remodeling of head MRI in 3D Slicer.

This file is the Qt side only (module metadata, the panel, the self-test) and stays thin:
everything that can run without Qt lives in ``CPMAEDeidentifyLib`` (tested with slicer-core
under pytest), and the engine (``cpmae``: torch, deepbet) always runs in a separate process.
"""
import logging
import pathlib
from typing import Annotated, Optional, Union

import ctk
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
from CPMAEDeidentifyLib.logic import MaskJob, RenderJob
from CPMAEDeidentifyLib.training import DEFAULT_GRID_CHOICE, GRID_CHOICES

POLL_INTERVAL_MS = 100
LOSS_NODE_NAMES = (("vtkMRMLTableNode", "CPMAE training loss"), ("vtkMRMLPlotSeriesNode", "CPMAE loss"),
                   ("vtkMRMLPlotChartNode", "CPMAE loss chart"), ("vtkMRMLPlotViewNode", "CPMAE loss view"))


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
        registerPathConnector()


def registerSampleData() -> None:
    """Add pydeface's averaged head to the Sample Data module (category CPMAE)."""
    import os

    import SampleData

    from CPMAEDeidentifyLib.sampledata import AVERAGED_HEAD

    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "CPMAEDeidentify.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(thumbnailFileName=icon, **AVERAGED_HEAD)


_pathConnectorRegistered = False


def registerPathConnector() -> None:
    """Bind a ctkPathLineEdit to a ``str`` parameter ("" = nothing chosen).

    Slicer's own connector wants a ``pathlib.Path``, whose default ``Path()`` shows "." in an
    empty field (and "." is a real folder: the working directory). The wrapper's documented
    extension point (``parameterNodeGuiConnector``) adds this one.
    """
    global _pathConnectorRegistered
    if _pathConnectorRegistered:
        return
    from slicer.parameterNodeWrapper.guiConnectors import GuiConnector, parameterNodeGuiConnector
    from slicer.parameterNodeWrapper.util import unannotatedType

    @parameterNodeGuiConnector
    class CtkPathLineEditToStrConnector(GuiConnector):
        @staticmethod
        def canRepresent(widget, datatype) -> bool:
            return type(widget) == ctk.ctkPathLineEdit and unannotatedType(datatype) == str

        @staticmethod
        def create(widget, datatype):
            return CtkPathLineEditToStrConnector(widget) if CtkPathLineEditToStrConnector.canRepresent(
                widget, datatype) else None

        def __init__(self, widget):
            super().__init__()
            self._widget = widget

        def _connect(self):
            self._widget.currentPathChanged.connect(self.changed)

        def _disconnect(self):
            self._widget.currentPathChanged.disconnect(self.changed)

        def widget(self):
            return self._widget

        def read(self) -> str:
            return self._widget.currentPath

        def write(self, value: str) -> None:
            self._widget.currentPath = value

    _pathConnectorRegistered = True


#
# Parameter node
#


@parameterNodeWrapper
class CPMAEDeidentifyParameterNode:
    """Everything the panel edits; saved with the scene. Field names = SlicerParameterName in the .ui.

    Node fields that may be empty must admit ``None`` (a Union without it has no serializer for
    the default and the panel never binds); folders are ``str`` with "" for "not chosen".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    brainMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    localWeights: str = ""
    steps: Annotated[int, WithinRange(0, 64)] = 0
    seed: Annotated[int, Minimum(0)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    qaFolder: str = ""
    reviewFolder: str = ""
    reviewThumbnails: str = ""
    trainDataFolder: str = ""
    trainOutputFolder: str = ""
    trainResolution: Annotated[str, Choice(GRID_CHOICES)] = DEFAULT_GRID_CHOICE
    trainSteps: Annotated[int, WithinRange(1, 10000000)] = 1000
    trainDevice: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    # set by the panel, not by a widget
    modelName: str = "demo-128"
    qaView: str = "frontal"
    outputVolume: vtkMRMLScalarVolumeNode


#
# Widget
#


class CPMAEDeidentifyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Every handler returns within ~100 ms: engine work, PNG export, model export and
    the GPU query are jobs polled by one timer (``_poll``); nothing here waits on a process."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # running mask, remodel or PNG job
        self._training = None
        self._background = []  # (runner, callback): GPU query, model export
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)
        self._catalogue = []
        self._plotWidget = None
        self._qaNodes = []
        self._queue = None  # batch review queue (CPMAEDeidentifyLib.faceqa.BatchQueue)
        self._queueNodes = []  # the volumes loaded for the queue's current case
        self._shortcuts = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CPMAEDeidentify.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # the loss curve: qMRMLPlotView has no designer plugin, so the plot widget is made here
        self._plotWidget = slicer.qMRMLPlotWidget()
        self._plotWidget.setMRMLScene(slicer.mrmlScene)
        self._plotWidget.minimumHeight = 180
        qt.QVBoxLayout(self.ui.lossPlotPlaceholder).addWidget(self._plotWidget)

        self.logic = CPMAEDeidentifyLogic(tempRoot=slicer.app.temporaryPath)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        from cpmae.render import STANDARD_VIEWS, VIEW_LABELS  # the spec's cameras, in its order

        for view in STANDARD_VIEWS:
            self.ui.qaViewComboBox.addItem(VIEW_LABELS[view], view)
        self.ui.trainResolutionComboBox.addItems(GRID_CHOICES)  # before the parameter node connects

        # the parameter node is connected first: handlers below may read it
        self.initializeParameterNode()

        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.computeMaskButton.connect("clicked(bool)", self.onComputeMask)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.showFaceQAButton.connect("clicked(bool)", self.onShowFaceQA)
        self.ui.qaViewComboBox.connect("currentIndexChanged(int)", self.onQAViewChanged)
        self.ui.qaThresholdSlider.connect("valueChanged(double)", self.onQAThresholdChanged)
        self.ui.showChangesButton.connect("clicked(bool)", self.onShowChanges)
        self.ui.approveButton.connect("clicked(bool)", lambda checked=False: self.onDecision(True))
        self.ui.rejectButton.connect("clicked(bool)", lambda checked=False: self.onDecision(False))
        self.ui.exportPngButton.connect("clicked(bool)", self.onExportPng)
        self.ui.openQueueButton.connect("clicked(bool)", self.onOpenQueue)
        self.ui.previousCaseButton.connect("clicked(bool)", lambda checked=False: self.onMoveCase(-1))
        self.ui.nextCaseButton.connect("clicked(bool)", lambda checked=False: self.onMoveCase(+1))
        self.ui.nextUndecidedButton.connect("clicked(bool)", lambda checked=False: self.onMoveCase(0))
        self.ui.reviewTable.connect("cellDoubleClicked(int,int)", lambda row, column: self.onGoToCase(row))
        for keys, step in (("Alt+Left", -1), ("Alt+Right", +1), ("Alt+Down", 0)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda step=step: self.onMoveCase(step))
            self._shortcuts.append(shortcut)
        self.ui.trainStartButton.connect("clicked(bool)", lambda checked=False: self.onTrainStart(resume=False))
        self.ui.trainResumeButton.connect("clicked(bool)", lambda checked=False: self.onTrainStart(resume=True))
        self.ui.trainStopButton.connect("clicked(bool)", self.onTrainStop)
        self.ui.checkpointListWidget.connect("currentRowChanged(int)",
                                             lambda row: self.ui.useModelButton.setEnabled(row >= 0))
        self.ui.useModelButton.connect("clicked(bool)", self.onUseModel)

        self._fillModelSelector()
        self._selectModel(self._parameterNode.modelName)
        self._startGpuQuery()

    def cleanup(self) -> None:
        """Module closed or application exiting: never leave an engine process or loss nodes behind."""
        self._cancelJobs(wait=True)
        self._removeLossNodes()
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelJobs()  # the timer reaps the cancelled processes; their results are never added
        self._resetProgress()
        self._qaNodes = []
        self._queueNodes = []
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
            index = self.ui.qaViewComboBox.findData(self._parameterNode.qaView)
            if index >= 0:
                self.ui.qaViewComboBox.currentIndex = index
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self._job is not None and self._job.running
        hasInput = bool(p and p.inputVolume)
        hasPair = bool(p and p.inputVolume and p.outputVolume)
        self.ui.applyButton.enabled = hasInput or busy
        self.ui.applyButton.text = _("Cancel") if busy else _("Apply")
        self.ui.computeMaskButton.enabled = hasInput and not busy
        self.ui.showFaceQAButton.enabled = hasPair
        self.ui.showChangesButton.enabled = hasPair
        self.ui.qaThresholdSlider.enabled = hasPair and bool(self._qaNodes)
        self.ui.approveButton.enabled = hasPair
        self.ui.rejectButton.enabled = hasPair
        self.ui.exportPngButton.enabled = hasPair and bool(p.qaFolder) and not busy
        for button in (self.ui.previousCaseButton, self.ui.nextCaseButton, self.ui.nextUndecidedButton):
            button.enabled = self._queue is not None
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
        self._showResolution()

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode is None or index < 0 or index >= len(self._catalogue):
            return
        self._parameterNode.modelName = self._catalogue[index].name
        self._showResolution()

    def _resolution(self) -> int:
        """The grid of the weights that will run: a local bundle's manifest, else the catalogue entry."""
        local = self._parameterNode.localWeights
        if local:
            return models.bundleResolution(local)
        entry = next((e for e in self._catalogue if e.name == self._parameterNode.modelName), None)
        return entry.resolution if entry is not None else int(DEFAULT_GRID_CHOICE)

    def _showResolution(self) -> None:
        if self._parameterNode is None:
            return
        try:
            self.ui.resolutionValueLabel.text = f"{self._resolution()}³"
        except Exception as exc:  # an unreadable local bundle: say so where the grid would be
            self.ui.resolutionValueLabel.text = str(exc)

    def _resolveWeights(self) -> Optional[str]:
        """The bundle folder to use: the local folder if given, else the catalogue entry (downloaded once)."""
        local = self._parameterNode.localWeights
        if local:
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
            self._job.cancel()  # Apply is Cancel while running; returns at once, the timer finishes it
            self._log(_("cancelling ..."))
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
                                     resolution=self._resolution(), steps=p.steps or None, seed=p.seed,
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
        self.ui.decisionLabel.text = _("not reviewed")
        # Face QA opens by itself: the reader's next step
        self.ui.faceQACollapsibleButton.collapsed = False
        self.onShowFaceQA()

    # -- jobs --------------------------------------------------------------------------------
    def _startJob(self, job, title: str) -> None:
        self._job = job
        self._jobTitle = title
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress line
        self.ui.progressBar.setFormat(title)
        self._log(title + " ...")
        self._timer.start()
        self._updateButtons()

    def _resetProgress(self) -> None:
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setFormat("%p%")

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
        if self._training is not None:
            if self._training.state == jobs.RUNNING:
                self._pollTraining()
            else:
                self._training.pollStop()  # a stopped stage's processes going away
        if self._job is not None and not self._job.poll():
            self._jobFinished()
        for runner, callback in list(self._background):
            if not runner.poll():
                self._background.remove((runner, callback))
                callback(runner)
        trainingBusy = self._training is not None and (self._training.state == jobs.RUNNING
                                                       or self._training.runner is not None
                                                       and self._training.runner.running)
        if self._job is None and not trainingBusy and not self._background:
            self._timer.stop()

    def _startBackground(self, runner, callback) -> None:
        """A side job (GPU query, model export) whose result ``callback(runner)`` handles."""
        self._background.append((runner, callback))
        self._timer.start()

    def _jobFinished(self) -> None:
        job, self._job = self._job, None
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(100 if job.state == jobs.SUCCEEDED else 0)
        self.ui.progressBar.setFormat(job.state)
        if job.state == jobs.SUCCEEDED:
            if isinstance(job, MaskJob):
                self._maskDone(job)
            elif isinstance(job, RenderJob):
                self._log(_("wrote {n} pictures to {folder}").format(n=len(job.result), folder=job.outputDir))
            else:
                self._remodelDone(job)
            self._log(_("done"))
        elif job.state == jobs.CANCELLED:
            self._log(_("cancelled: nothing was written"))
        else:
            self._log(job.errorMessage())
            slicer.util.errorDisplay(job.errorMessage(), windowTitle=_("CPMAE"))
        self._updateButtons()

    def _cancelJobs(self, wait: bool = False) -> None:
        """Cancel everything. Without ``wait`` the cancelled processes stay on the timer until
        they are gone (nothing is added to the scene: a cancelled job never reads results)."""
        runners = [runner for runner, _callback in self._background]
        if self._job is not None and self._job.running:
            runners.append(self._job.runner)
        self._job = None
        if self._training is not None and self._training.runner is not None:
            runners.append(self._training.runner)
            self._training.state = jobs.CANCELLED
        self._background = []
        for runner in runners:
            runner.cancel(grace=0.5 if wait else jobs.CANCEL_GRACE_S, wait=wait)
            if runner.running:
                self._startBackground(runner, lambda r: None)
        if not self._background:
            self._timer.stop()

    def _log(self, message: str) -> None:
        if message:
            self.ui.logTextEdit.appendPlainText(message)
            logging.info(f"CPMAE: {message}")

    def _ensureDependencies(self) -> bool:
        """Checks without importing anything (milliseconds); installs only after the user agrees."""
        from CPMAEDeidentifyLib import dependencies

        try:
            return dependencies.ensureDependencies(
                lambda message: slicer.util.confirmOkCancelDisplay(message, windowTitle=_("CPMAE")))
        except Exception as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("CPMAE"))
            return False

    def _startGpuQuery(self) -> None:
        """nvidia-smi as a job: it can take seconds, the panel must open at once."""
        self.ui.gpuInfoLabel.text = _("looking for a GPU ...")
        runner = jobs.gpuQueryJob()
        if runner is None:
            self.ui.gpuInfoLabel.text = jobs.describeGpus([])
            return
        self._startBackground(runner, lambda r: setattr(self.ui.gpuInfoLabel, "text", jobs.describeGpus(
            [e.data.get("message", "") for e in r.events if e.kind == "log"] if r.state == jobs.SUCCEEDED else [])))

    # -- face QA -----------------------------------------------------------------------------
    def onShowFaceQA(self) -> None:
        """Before and after side by side (3D, sagittal, axial), linked, skin rendering from the spec."""
        from CPMAEDeidentifyLib import faceqa, rendering

        p = self._parameterNode
        layoutManager = slicer.app.layoutManager()
        faceqa.registerLayout(layoutManager.layoutLogic().GetLayoutNode())
        layoutManager.setLayout(faceqa.LAYOUT_ID)
        viewNodes = [layoutManager.threeDWidget(i).mrmlViewNode() for i in range(2)]
        threshold = rendering.skinThreshold(slicer.util.arrayFromVolume(p.inputVolume))
        for volumeNode, viewNode in zip((p.inputVolume, p.outputVolume), viewNodes):
            rendering.showSkinRendering(self.logic.context, volumeNode, threshold, [viewNode.GetID()])
            viewNode.SetLinkedControl(True)  # one camera drives the other
            viewNode.SetBoxVisible(False)
            viewNode.SetAxisLabelsVisible(False)
        for sliceName, volumeNode in faceqa.sliceVolumes(p.inputVolume, p.outputVolume).items():
            sliceWidget = layoutManager.sliceWidget(sliceName)
            if sliceWidget is None:
                continue
            composite = sliceWidget.sliceLogic().GetSliceCompositeNode()
            composite.SetBackgroundVolumeID(volumeNode.GetID())
            composite.SetLinkedControl(True)
            sliceWidget.sliceLogic().FitSliceToAll()
        self._qaNodes = [p.inputVolume, p.outputVolume]
        self.ui.qaThresholdSlider.blockSignals(True)
        maximum = float(slicer.util.arrayFromVolume(p.inputVolume).max())
        self.ui.qaThresholdSlider.minimum = 0.0
        self.ui.qaThresholdSlider.maximum = max(maximum, threshold * 2, 1.0)
        self.ui.qaThresholdSlider.value = threshold
        self.ui.qaThresholdSlider.blockSignals(False)
        self._aimFaceQACameras()
        self._updateButtons()

    def onQAViewChanged(self, index: int) -> None:
        """The view comes from the combo itself (its item data), not from a binding that may
        run after this handler."""
        view = self.ui.qaViewComboBox.itemData(index)
        if self._parameterNode is None or not view:
            return
        self._parameterNode.qaView = view
        self._aimFaceQACameras(view)

    def onQAThresholdChanged(self, value: float) -> None:
        from CPMAEDeidentifyLib import rendering

        rendering.setSkinThreshold(self.logic.context, self._qaNodes, value)

    def _aimFaceQACameras(self, view: Optional[str] = None) -> None:
        from CPMAEDeidentifyLib import rendering

        layoutManager = slicer.app.layoutManager()
        p = self._parameterNode
        if p is None or not p.inputVolume or layoutManager.threeDViewCount < 2:
            return
        view = view or p.qaView
        for i in range(2):
            cameraNode = slicer.modules.cameras.logic().GetViewActiveCameraNode(
                layoutManager.threeDWidget(i).mrmlViewNode())
            rendering.aimCamera(cameraNode, p.inputVolume, view)

    def onShowChanges(self) -> None:
        """|after - before| outside the brain over the after volume in the QA slice views."""
        from CPMAEDeidentifyLib import faceqa

        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not compute the changes."), waitCursor=True):
            change = self.logic.changedRegion(p.inputVolume, p.outputVolume, p.brainMask)
            display = change.GetDisplayNode()
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileHotToColdRainbow.txt")
            layoutManager = slicer.app.layoutManager()
            for sliceName in faceqa.AFTER_SLICES:
                sliceWidget = layoutManager.sliceWidget(sliceName)
                if sliceWidget is not None:
                    composite = sliceWidget.sliceLogic().GetSliceCompositeNode()
                    composite.SetForegroundVolumeID(change.GetID())
                    composite.SetForegroundOpacity(0.5)  # fade between the face and its change
            if p.brainMask is not None and p.brainMask.IsA("vtkMRMLSegmentationNode"):
                p.brainMask.GetDisplayNode().SetVisibility2DFill(False)  # outline only: the mask edge
                p.brainMask.GetDisplayNode().SetVisibility(True)

    def onDecision(self, approved: bool) -> None:
        from CPMAEDeidentifyLib import faceqa

        p = self._parameterNode
        reason = self.ui.decisionReasonComboBox.currentText.strip()
        inQueue = self._queue is not None and p.outputVolume is not None and p.outputVolume in self._queueNodes
        try:
            record = faceqa.recordDecision(p.outputVolume, approved, reason)
            if inQueue:  # a batch case: its manifest and provenance record too
                self._queue.decide(approved, reason)
        except Exception as exc:  # no reason for a rejection; a batch still writing its manifest
            slicer.util.errorDisplay(str(exc), windowTitle=_("CPMAE"))
            return
        if inQueue:
            self._fillReviewTable()
        self.ui.decisionLabel.text = f"{record['decision']}" + (f" ({record['reason']})" if record["reason"] else "")
        self._log(_("review: {text}").format(text=self.ui.decisionLabel.text))

    # -- batch review ------------------------------------------------------------------------
    def onOpenQueue(self) -> None:
        from CPMAEDeidentifyLib import faceqa

        p = self._parameterNode
        try:
            self._queue = faceqa.BatchQueue(p.reviewFolder, p.reviewThumbnails or None)
        except Exception as exc:
            self._queue = None
            slicer.util.errorDisplay(str(exc), windowTitle=_("CPMAE"))
            return
        self._fillReviewTable()
        self._showCase()

    def onMoveCase(self, step: int) -> None:
        """+1 next, -1 previous, 0 next undecided (the keyboard shortcuts call this too)."""
        if self._queue is None:
            return
        self._queue.nextUndecided() if step == 0 else self._queue.move(step)
        self._showCase()

    def onGoToCase(self, row: int) -> None:
        if self._queue is not None:
            self._queue.goTo(row)
            self._showCase()

    def _fillReviewTable(self) -> None:
        table = self.ui.reviewTable
        rows = self._queue.rows()
        table.clear()
        table.setColumnCount(5)
        table.setHorizontalHeaderLabels([_("case"), _("status"), _("self-check"), _("decision"), _("reason")])
        table.setRowCount(len(rows))
        for r, values in enumerate(rows):
            for c, value in enumerate(values):
                table.setItem(r, c, qt.QTableWidgetItem(str(value)))
        table.resizeColumnsToContents()

    def _showCase(self) -> None:
        """Load the current case's output (and its recorded input, when it still exists) and
        open Face QA on them; the volumes of the previous case leave the scene."""
        queue = self._queue
        case = queue.current
        self.ui.reviewTable.selectRow(queue.index)
        for node in self._queueNodes:
            if node.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(node)
        self._queueNodes = []
        thumbnails = queue.thumbnails()
        self.ui.reviewThumbnailLabel.text = "" if thumbnails else "-"
        if thumbnails:
            self.ui.reviewThumbnailLabel.setPixmap(qt.QPixmap(str(thumbnails[0])).scaledToWidth(240))
        output = queue.outputPath()
        if output is None:
            self._log(_("{case}: {status}, nothing to show").format(case=case.case, status=case.status))
            self._updateButtons()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the case."), waitCursor=True):
            after = self.logic.context.loadVolume(output, f"{case.case} after")
            source = queue.inputPath()
            before = self.logic.context.loadVolume(source, f"{case.case} before") if source else after
            self._queueNodes = [after] + ([before] if before is not after else [])
            p = self._parameterNode
            p.inputVolume, p.outputVolume = before, after
            self.ui.decisionLabel.text = case.decision or _("not reviewed")
            self.ui.faceQACollapsibleButton.collapsed = False
            self.onShowFaceQA()
        self._updateButtons()

    def onExportPng(self) -> None:
        p = self._parameterNode
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            self._startJob(self.logic.renderFaces(p.inputVolume, p.outputVolume, p.qaFolder, waitForCompletion=False,
                                                  onEvent=self._onJobEvent), _("Rendering faces"))

    # -- training ----------------------------------------------------------------------------
    def onTrainStart(self, resume: bool) -> None:
        p = self._parameterNode
        if not p.trainOutputFolder:
            slicer.util.errorDisplay(_("Choose an output folder for the training runs."))
            return
        if not self._ensureDependencies():
            return
        settings = training.TrainingSettings(dataFolder=p.trainDataFolder, outputFolder=p.trainOutputFolder,
                                             resolution=int(p.trainResolution), steps=p.trainSteps,
                                             device=p.trainDevice)
        self._training = training.TrainingSession(settings, onEvent=self._onTrainingEvent)
        with slicer.util.tryWithErrorDisplay(_("Training failed to start.")):
            self._training.start(resume=resume)
            self._timer.start()
        self._updateButtons()

    def onTrainStop(self) -> None:
        if self._training is not None:
            self._training.stop()  # returns at once; the timer sees the processes go
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
        """Loss against step in a table + plot chart shown in the panel's plot widget.

        The nodes are the panel's own: not saved with the scene, hidden from node lists, and
        removed when the module is closed or the scene is cleared.
        """
        tableNode = self._singleton("vtkMRMLTableNode", "CPMAE training loss")
        table = tableNode.GetTable()
        if table.GetNumberOfColumns() < 2:
            for name in ("step", "loss"):
                column = vtk.vtkDoubleArray()
                column.SetName(name)
                table.AddColumn(column)
        if table.GetNumberOfRows() == len(points):
            return  # nothing new since the last tick
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
        self._plotWidget.setMRMLPlotViewNode(viewNode)

    @staticmethod
    def _singleton(className: str, name: str):
        node = slicer.mrmlScene.GetFirstNode(name, className)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass(className, name)
            node.SetSaveWithScene(False)
            node.SetHideFromEditors(True)
        return node

    def _removeLossNodes(self) -> None:
        for className, name in LOSS_NODE_NAMES:
            node = slicer.mrmlScene.GetFirstNode(name, className)
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)

    def _refreshCheckpoints(self) -> None:
        self.ui.checkpointListWidget.clear()
        for checkpoint in training.listCheckpoints(self._parameterNode.trainOutputFolder or None):
            self.ui.checkpointListWidget.addItem(f"{checkpoint.parent.parent.name}/{checkpoint.name}")

    def onUseModel(self) -> None:
        """Export the chosen checkpoint (with the newest checkpoints of the other two runs) as a
        job; the panel switches to the new bundle when it has been written."""
        item = self.ui.checkpointListWidget.currentItem()
        if item is None:
            return
        out = pathlib.Path(self._parameterNode.trainOutputFolder)
        runName, checkpointName = item.text().split("/")
        runs = [out / name for name, _ in training.STAGES]
        runs = [run / "checkpoints" / checkpointName if run.name == runName else run for run in runs]
        bundle = out / "bundle"
        self.ui.useModelButton.enabled = False
        self._log(_("exporting the model ..."))
        self._startBackground(training.exportJob(*runs, bundle, onEvent=self._onTrainingEvent),
                              lambda runner: self._modelExported(runner, bundle))

    def _modelExported(self, runner, bundle) -> None:
        self.ui.useModelButton.enabled = True
        if runner.state != jobs.SUCCEEDED:
            slicer.util.errorDisplay(_("Export of the model failed: ") + runner.errorMessage(), windowTitle=_("CPMAE"))
            return
        self._parameterNode.localWeights = str(models.useLocalFolder(bundle))
        self._showResolution()
        self._log(_("now using the weights in {folder}").format(folder=bundle))


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
    """Checks that only a real Slicer can run: the panel, its parameter node, 3D views.

    What pytest already covers outside Slicer (the .ui with a real Qt binding, the parameter
    declarations, the Logic on a real MRML scene, jobs and cancel) is not repeated here.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_binds_parameter_node()
        self.setUp()
        self.test_before_after_pictures_differ_in_the_face()
        self.setUp()
        self.test_face_qa_views()
        self.setUp()
        self.test_scene_close_and_loss_nodes()

    def _loadHead(self):
        import SampleData

        return SampleData.downloadSample("MRHead")

    def _widget(self):
        slicer.util.selectModule("CPMAEDeidentify")
        return slicer.modules.cpmaedeidentify.widgetRepresentation().self()

    def test_panel_binds_parameter_node(self):
        self.delayDisplay("Panel and parameter node")
        widget = self._widget()
        head = self._loadHead()
        widget.initializeParameterNode()
        parameters = widget._parameterNode
        parameters.inputVolume = head
        self.assertEqual(widget.ui.inputSelector.currentNode(), head)
        self.assertIsNone(parameters.brainMask)  # the node union admits None
        self.assertEqual(widget.ui.localWeightsPathLineEdit.currentPath, "")  # no "." default
        widget.ui.seedSpinBox.value = 7
        self.assertEqual(parameters.seed, 7)
        self.assertIn(widget.ui.resolutionValueLabel.text, ("128³", "256³"))
        self.assertTrue(widget.ui.applyButton.enabled)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        widget.ui.qaViewComboBox.currentIndex = widget.ui.qaViewComboBox.findData("profile_left")
        self.assertEqual(parameters.qaView, "profile_left")

    def test_before_after_pictures_differ_in_the_face(self):
        """The PNG export (cpmae render, out of process) on MRHead and a copy without its face."""
        import tempfile

        from CPMAEDeidentifyLib import dependencies, faceqa, volumes

        self.delayDisplay("Before/after pictures")
        head = self._loadHead()
        image = volumes.imageFromVolumeNode(head)
        copy = volumes.addVolumeNodeFromImage(slicer.mrmlScene, image, "copy")
        array = slicer.util.arrayFromVolume(copy)
        array[:, :, : array.shape[2] // 3] = 0  # MRHead is stored PIR-like: the lowest third of i
        array[:, : array.shape[1] // 3, :] = 0  # and of j; one of them is the face for any orientation
        slicer.util.arrayFromVolumeModified(copy)
        if dependencies.missingPackages():
            self.delayDisplay("engine dependencies not installed: picture check skipped")
            return
        logic = CPMAEDeidentifyLogic()
        with tempfile.TemporaryDirectory() as folder:
            job = logic.renderFaces(head, copy, folder, views=("frontal", "profile_right"), size=192)
            self.assertEqual(set(job.result), {"before_frontal", "after_frontal", "before_profile_right",
                                               "after_profile_right", "before_after"})
            before = faceqa.readPng(job.result["before_frontal"])
            after = faceqa.readPng(job.result["after_frontal"])
            self.assertGreater(before.mean(), 5)
            self.assertGreater(faceqa.faceRegionDifference(before, after, "frontal"), 2.0)
        self.assertEqual(logic.context.volumeRenderingLogic.GetFirstVolumeRenderingDisplayNode(head), None,
                         "the export must not switch on volume rendering in the scene")

    def test_face_qa_views(self):
        self.delayDisplay("Face QA views")
        from CPMAEDeidentifyLib import faceqa

        widget = self._widget()
        head = self._loadHead()
        widget.initializeParameterNode()
        widget._parameterNode.inputVolume = head
        widget._parameterNode.outputVolume = head
        widget.onShowFaceQA()
        layoutManager = slicer.app.layoutManager()
        self.assertEqual(layoutManager.layout, faceqa.LAYOUT_ID)
        self.assertGreaterEqual(layoutManager.threeDViewCount, 2)
        self.assertTrue(layoutManager.threeDWidget(0).mrmlViewNode().GetLinkedControl())
        for name in faceqa.BEFORE_SLICES + faceqa.AFTER_SLICES:
            self.assertIsNotNone(layoutManager.sliceWidget(name), name)
        widget.onDecision(True)
        self.assertEqual(faceqa.nodeDecision(head)["decision"], "approved")
        self.delayDisplay("Test passed")

    def test_scene_close_and_loss_nodes(self):
        """Closing the scene stops the busy progress bar; the loss curve's nodes are the panel's."""
        self.delayDisplay("Scene close and loss nodes")
        widget = self._widget()
        widget.initializeParameterNode()
        widget._startJob(type("Idle", (), {"running": False, "poll": lambda self: False})(), "busy")
        self.assertEqual(widget.ui.progressBar.maximum, 0)  # busy indicator
        widget._job = None
        slicer.mrmlScene.Clear()
        self.assertEqual(widget.ui.progressBar.maximum, 100)
        widget._updateLossCurve([(1, 0.5), (2, 0.25)])
        for className, name in LOSS_NODE_NAMES:
            node = slicer.mrmlScene.GetFirstNode(name, className)
            self.assertIsNotNone(node, name)
            self.assertFalse(node.GetSaveWithScene(), name)
        widget._removeLossNodes()
        for className, name in LOSS_NODE_NAMES:
            self.assertIsNone(slicer.mrmlScene.GetFirstNode(name, className), name)
        self.delayDisplay("Test passed")
