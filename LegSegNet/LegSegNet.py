"""3D Slicer module LegSegNet: lower-leg CT tissue segmentation (SAT, SM, IAT, Bone) and body composition.

This file keeps only what needs Slicer's GUI: the module description, the widget, the parameter node
and the self-test entry. Everything that can run without Qt lives in LegSegNetLib (slicer_logic/ and
worker/) and is tested there. Nothing here waits for a process: every run (segmentation, training,
model install, device check, package install) is a run handle polled from a QTimer.
"""

import logging
import os
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Maximum, Minimum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LegSegNetLib.core.text import format_duration
from LegSegNetLib.slicer_logic import dependencies, widget_rules
from LegSegNetLib.slicer_logic.annotation_logic import AnnotationLogic
from LegSegNetLib.slicer_logic.logic import LegSegNetLogic as LegSegNetCoreLogic
from LegSegNetLib.slicer_logic.packages import PackageSetup

PUBLISHED_MODEL_NOTICE = (
    "The published LegSegNet weights (Chen et al. 2026, Hugging Face {repo}) are licensed {licence}: "
    "non-commercial use only, with attribution ({url}). About 100 MB are downloaded from the Hugging Face hub "
    "and PyTorch is needed to verify them."
)
POLL_INTERVAL_MS = 100
MAX_SLICE_INDEX = 99999  # the slice spin boxes' maximum in the .ui until a volume sets its own
MAX_BATCH_SIZE = 1024


#
# LegSegNet
#


class LegSegNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LegSegNet")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LegSegNet contributors"]
        self.parent.helpText = _("""
Segments lower-leg CT into subcutaneous adipose tissue (SAT), skeletal muscle (SM), inter/intramuscular
adipose tissue (IAT) and bone, and measures volumes, mean and SD of HU, derived ratios, per-leg numbers and
a profile along the leg. Choose the slices to analyse, press Apply, correct the segments in Segment Editor,
then press Update measurements. Under Review and training, review a few sampled slices per scan, add them to
a training set and train the next round's model (model-in-the-loop annotation).
See <a href="https://github.com/legsegnet/SlicerLegSegNet">the documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Method: Chen et al., "LegSegNet: A Public Deep Learning System for Lower Extremity CT Tissue Segmentation
and Quantification" (2026). Test data: NLM Visible Human Project.
""")
        # at startup, not when the module is first opened: scripts and loaded scenes show the segments' terminology
        slicer.app.connect("startupCompleted()", registerTerminology)


def registerTerminology() -> None:
    """Load the tissues' terminology (Resources/LegSegNet.term.json) into Slicer, once."""
    try:
        widget_rules.register_terminology(slicer.modules.terminologies.logic())
    except Exception as exc:  # a missing terminology must not stop Slicer's startup; the segments still work
        logging.warning(f"LegSegNet: could not load the terminology: {exc}")


#
# LegSegNetParameterNode
#


@parameterNodeWrapper
class LegSegNetParameterNode:
    """The module's GUI state, saved with the scene.

    firstSlice/lastSlice - inclusive range of slice indices along the volume's superior/inferior axis.
    engine/device/tta - worker options; folds: comma-separated nnU-Net folds ("" = all in the model).
    batchSize - slices per forward pass (0 = engine default).
    checkpoint - nnU-Net checkpoint: default (final for a results folder, best for the published layout), best, final.
    outputSegmentation - segmentation to overwrite (None: a new one named after the volume).
    referenceSegmentation - a reference segmentation of the same CT for "Compare with reference".
    reviewSlicesPerScan/reviewSeed - slices sampled per scan for review (1-50) and the sampling seed.
    reviewMode/reviewMinGap - stratified random or the most uncertain slices (nnU-Net), and their minimum gap.
    datasetFolder/patientId/annotationRound - where reviewed slices go, whose they are, which round.
    trainEpochs/trainModelName - settings of "Train next round".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    # Each int bound to a spin box has the .ui's minimum and maximum: without a Maximum the GUI connection
    # overwrites the .ui's maximum with 2^31-1 (tests/test_packaging.py compares them).
    firstSlice: Annotated[int, Minimum(0), Maximum(MAX_SLICE_INDEX)] = 0
    lastSlice: Annotated[int, Minimum(0), Maximum(MAX_SLICE_INDEX)] = 0
    showRange: bool = False  # the range box is drawn (an ROI node added) only when asked for
    engine: Annotated[str, Choice(["auto", "threshold", "nnunet"])] = "auto"
    model: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    folds: str = ""
    tta: Annotated[str, Choice(["default", "on", "off"])] = "default"
    batchSize: Annotated[int, Minimum(0), Maximum(MAX_BATCH_SIZE)] = 0
    checkpoint: Annotated[str, Choice(["default", "best", "final"])] = "default"
    outputSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    reviewSlicesPerScan: Annotated[int, Minimum(1), Maximum(50)] = 3
    reviewSeed: Annotated[int, Minimum(0), Maximum(999999)] = 0
    reviewMode: Annotated[str, Choice(["stratified", "uncertain"])] = "stratified"
    reviewMinGap: Annotated[int, Minimum(1), Maximum(1000)] = 3
    datasetFolder: str = ""
    patientId: str = ""
    annotationRound: Annotated[int, Minimum(0), Maximum(999)] = 1
    trainEpochs: Annotated[int, Minimum(1), Maximum(5000)] = 200
    trainModelName: str = ""


#
# LegSegNetWidget
#


class LegSegNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._handle = None  # the running segmentation (a run_handle.RunHandle, as all runs below)
        self._rangeROI = None
        self._rangeSync = widget_rules.SliceRangeSync()
        self._modelNames = []
        self._exportDefault = None  # the export folder last filled in by the module (not chosen by the user)
        self._packageSetup = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._pollWorker)
        self.annotationLogic = None
        self._trainingHandle = None  # the running training
        self._trainingTimer = qt.QTimer()
        self._trainingTimer.setInterval(500)
        self._trainingTimer.timeout.connect(self._pollTraining)
        self._task = None  # a model install, device check or package install: (handle, dialog, then)
        self._taskTimer = qt.QTimer()
        self._taskTimer.setInterval(POLL_INTERVAL_MS)
        self._taskTimer.timeout.connect(self._pollTask)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LegSegNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LegSegNetLogic()
        self.logic.registerTerminology()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.autoRangeButton.connect("clicked(bool)", self.onAutoRange)
        self.ui.fullRangeButton.connect("clicked(bool)", self.onFullRange)
        self.ui.firstFromViewButton.connect("clicked(bool)", lambda: self.onRangeFromView(first=True))
        self.ui.lastFromViewButton.connect("clicked(bool)", lambda: self.onRangeFromView(first=False))
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.installPublishedModelButton.connect("clicked(bool)", self.onInstallPublishedModel)
        self.ui.installModelFromFileButton.connect("clicked(bool)", self.onInstallModelFromFile)
        self.ui.checkDeviceButton.connect("clicked(bool)", self.onCheckDevice)
        self.ui.updateMeasurementsButton.connect("clicked(bool)", self.onUpdateMeasurements)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.showResultsButton.connect("clicked(bool)", self.onShowResults)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareWithReference)
        self.ui.progressBar.hide()

        self.annotationLogic = AnnotationLogic()
        self.ui.sampleSlicesButton.connect("clicked(bool)", self.onSampleSlices)
        self.ui.nextUnreviewedButton.connect("clicked(bool)", self.onNextUnreviewed)
        self.ui.markReviewedButton.connect("clicked(bool)", self.onMarkReviewed)
        self.ui.browseDatasetButton.connect("clicked(bool)", self.onBrowseDataset)
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainNextRound)
        self.ui.trainProgressBar.hide()

        self.refreshModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancelRun()
        if self._task is not None:
            self._task[0].cancel()
        self._taskTimer.stop()
        if self._trainingHandle is not None and self._trainingHandle.running:
            self._trainingHandle.stop()  # the worker keeps a checkpoint; training again can resume it
        self._trainingTimer.stop()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload also re-reads LegSegNetLib (Slicer's own reload re-reads only this file; it calls cleanup())."""
        widget_rules.forget_library_modules("LegSegNetLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRun()  # closing the scene kills the worker tree; nothing is added afterwards
        self._rangeROI = None
        self._rangeSync.forget()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[LegSegNetParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # .ui widgets carry a "SlicerParameterName" dynamic property naming their parameter
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        volume = p.inputVolume if p else None
        running = self._handle is not None and self._handle.running
        valid = False
        if volume is not None and volume.GetImageData() is not None:
            try:
                n = self.logic.sliceCount(volume)

                def writeRange(first: int, last: int) -> None:
                    with slicer.util.NodeModify(p):
                        p.firstSlice, p.lastSlice = first, last

                # a new volume: all its slices (or the range saved with the scene), never a clamped remainder
                self._rangeSync.update(
                    volume.GetID(),
                    n,
                    (p.firstSlice, p.lastSlice),
                    (self.ui.firstSliceSpinBox, self.ui.lastSliceSpinBox),
                    writeRange,
                )
                self._updateExportFolder(volume)
                first, last = min(p.firstSlice, n - 1), min(p.lastSlice, n - 1)
                self.ui.firstSlicePositionLabel.text = f"S {self.logic.slicePositionMm(volume, first):.1f} mm"
                self.ui.lastSlicePositionLabel.text = f"S {self.logic.slicePositionMm(volume, last):.1f} mm"
                valid = first <= last
                self.ui.rangeInfoLabel.text = (
                    _("{count} of {total} slices").format(count=last - first + 1, total=n)
                    if valid
                    else _("the first slice comes after the last")
                )
                self._updateRangeDisplay(volume, first, last, valid and p.showRange)
            except Exception as exc:  # an oblique or non-CT volume: say why Apply is disabled
                self.ui.rangeInfoLabel.text = str(exc)
        else:
            self.ui.rangeInfoLabel.text = _("select a CT volume")
            self._updateRangeDisplay(None, 0, 0, False)
        self.ui.applyButton.enabled = running or valid
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the segmentation") if running else _("Segment the chosen slices")
        segmentation = p.outputSegmentation if p else None
        hasResults = segmentation is not None and volume is not None and not running
        for button in (self.ui.updateMeasurementsButton, self.ui.exportButton, self.ui.showResultsButton):
            button.enabled = hasResults
        self.ui.compareButton.enabled = hasResults and p.referenceSegmentation is not None
        self._syncModelCombo()
        self._updateReviewDisplay()

    def _updateRangeDisplay(self, volume, first: int, last: int, visible: bool) -> None:
        if volume is None or not visible:
            if self._rangeROI is not None and self._rangeROI.GetDisplayNode():
                self._rangeROI.GetDisplayNode().SetVisibility(False)
            return
        if self._rangeROI is not None and self._rangeROI.GetScene() is None:
            self._rangeROI = None
        self._rangeROI = self.logic.updateRangeROI(volume, first, last, self._rangeROI)
        self._rangeROI.GetDisplayNode().SetVisibility(True)

    # ------------------------------------------------------------------ range
    def onFullRange(self) -> None:
        volume = self._parameterNode.inputVolume
        if volume:
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.firstSlice = 0
                self._parameterNode.lastSlice = self.logic.sliceCount(volume) - 1

    def onAutoRange(self) -> None:
        volume = self._parameterNode.inputVolume
        with slicer.util.tryWithErrorDisplay(_("Could not find the legs."), waitCursor=True):
            first, last = self.logic.detectLegRange(volume)
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.firstSlice = first
                self._parameterNode.lastSlice = last

    def onRangeFromView(self, first: bool) -> None:
        """Take the slice shown in the red (axial) view as the first or last slice."""
        volume = self._parameterNode.inputVolume
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        sliceToRAS = sliceNode.GetSliceToRAS()
        ras = [sliceToRAS.GetElement(r, 3) for r in range(3)]
        index = self.logic.sliceIndexAtRAS(volume, ras)
        if first:
            self._parameterNode.firstSlice = index
        else:
            self._parameterNode.lastSlice = index

    # ------------------------------------------------------------------ models and device
    def refreshModels(self) -> None:
        try:
            names = self.logic.installedModels()
        except Exception as exc:  # an unreadable store must not break the module: threshold still works
            logging.warning(f"LegSegNet: could not list models: {exc}")
            names = []
        self._modelNames = names
        self._syncModelCombo()

    def _syncModelCombo(self) -> None:
        """The combo box shows the parameter node's model (also after loading a scene, and one that is not
        installed here), with its signals blocked so that showing it does not write it back."""
        entries, index = widget_rules.model_combo_entries(
            self._modelNames, self._parameterNode.model if self._parameterNode else ""
        )
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            if [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count)] != entries:
                combo.clear()
                for label, name in entries:
                    combo.addItem(label, name)
            combo.currentIndex = index
        finally:
            combo.blockSignals(wasBlocked)

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or ""

    def onInstallPublishedModel(self) -> None:
        from LegSegNetLib.models import hub

        notice = PUBLISHED_MODEL_NOTICE.format(
            repo=hub.PUBLISHED_REPO, licence=hub.PUBLISHED_LICENCE, url=hub.LICENCE_URLS.get(hub.PUBLISHED_LICENCE, "")
        )
        if not slicer.util.confirmOkCancelDisplay(notice + "\n\n" + _("Download and install them?")):
            return
        self._runModelsCommand(["install", hub.PUBLISHED_SOURCE])

    def onInstallModelFromFile(self) -> None:
        # a file dialog picks files or folders, not both: a folder is chosen by its plans.json
        path = qt.QFileDialog.getOpenFileName(
            self.parent,
            _("nnU-Net model: a .zip, or the plans.json inside a model folder"),
            "",
            _("nnU-Net model (*.zip plans.json);;All files (*)"),
        )
        if path:
            self._runModelsCommand(["install", widget_rules.model_install_source(path)])

    def _runModelsCommand(self, arguments) -> None:
        # installing verifies the checkpoints with torch
        self._withDependencies(
            "nnunet",
            lambda: self._startTask(
                self.logic.modelsCommandAsync(arguments), _("Installing the model..."), self._onModelsCommandFinished
            ),
        )

    def _onModelsCommandFinished(self, handle) -> None:
        if handle.state == "succeeded":
            model = (handle.result or {}).get("model") or {}
            self.ui.statusLabel.text = _("installed model {name}").format(name=model.get("name", ""))
        elif handle.state == "failed":
            slicer.util.errorDisplay(_("Installing the model failed.") + "\n" + handle.errorMessage)
        self.refreshModels()

    def onCheckDevice(self) -> None:
        self.ui.deviceStatusLabel.text = _("checking...")
        self._startTask(self.logic.deviceProbeAsync(), _("Checking the GPU..."), self._onDeviceChecked)

    def _onDeviceChecked(self, handle) -> None:
        self.ui.deviceStatusLabel.text = (
            self.logic.describeDevices(handle.result)
            if handle.state == "succeeded"
            else _("Could not check the GPU: {error}").format(error=handle.errorMessage)
        )

    # ------------------------------------------------------------------ short runs with a progress dialog
    def _startTask(self, handle, title: str, then=None) -> None:
        """Show `handle` (model install, device check, package install) in a progress dialog whose Cancel
        ends it; `then(handle)` runs when it has ended, whatever the outcome."""
        if self._task is not None:
            self._task[0].cancel()
        dialog = qt.QProgressDialog(title, _("Cancel"), 0, 0, self.parent)
        dialog.minimumDuration = 500
        dialog.connect("canceled()", handle.cancel)
        handle.onProgress = lambda h: setattr(dialog, "labelText", f"{title}\n{h.notes[-1][:120] if h.notes else ''}")
        self._task = (handle, dialog, then)
        self._taskTimer.start()

    def _pollTask(self) -> None:
        if self._task is None or self._task[0].poll():
            return
        handle, dialog, then = self._task
        self._task = None
        self._taskTimer.stop()
        dialog.close()
        if then is not None:
            then(handle)

    # ------------------------------------------------------------------ run
    def onApplyButton(self) -> None:
        if self._handle is not None and self._handle.running:
            self._cancelRun()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            engine = self.logic.engineFor(p.engine, p.model)  # the engine `auto` stands for, decided below the GUI
            self._withDependencies(engine, self._startSegmentation)

    def _startSegmentation(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            folds = [int(f) for f in p.folds.split(",") if f.strip()] or None
            tta = {"default": None, "on": True, "off": False}[p.tta]
            self._handle = self.logic.processAsync(
                p.inputVolume,
                p.firstSlice,
                p.lastSlice,
                engine=p.engine,
                device=p.device,
                model=p.model or None,
                segmentation=p.outputSegmentation,
                onProgress=self._onProgress,
                onFinished=self._onFinished,
                folds=folds,
                tta=tta,
                batchSize=p.batchSize or None,
                checkpoint=None if p.checkpoint == "default" else p.checkpoint,
            )
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("starting the worker...")
            self._timer.start()
        self._onParameterNodeModified()

    def _pollWorker(self) -> None:
        if self._handle is None or not self._handle.poll():
            self._timer.stop()

    def _cancelRun(self) -> None:
        if self._handle is not None and self._handle.running:
            self._handle.cancel()
        self._timer.stop()

    def _onProgress(self, handle) -> None:
        progress = handle.progress
        self.ui.progressBar.value = int(100 * progress.get("fraction", 0.0))
        text = progress.get("stage", "")
        if progress.get("total"):
            text += f" {progress['done']}/{progress['total']}"
        left = progress.get("seconds_left")
        if left is not None:
            text += _(", about {time} left").format(time=format_duration(left))
        if handle.notes:
            text += " - " + handle.notes[-1]
        self.ui.statusLabel.text = text

    def _onFinished(self, handle) -> None:
        self._timer.stop()
        self.ui.progressBar.hide()
        if handle.state == "succeeded":
            result = handle.result
            self._parameterNode.outputSegmentation = result.segmentation
            seconds = handle.progress.get("elapsed") or 0.0
            self.ui.statusLabel.text = _("done in {time}").format(time=format_duration(seconds))
            self._showResults(result.segmentation)
        elif handle.state == "cancelled":
            self.ui.statusLabel.text = _("cancelled; the scene was left as it was")
        else:
            self.ui.statusLabel.text = _("failed")
            slicer.util.errorDisplay(handle.errorMessage)  # the worker's own error line, no traceback
        self._onParameterNodeModified()

    def _withDependencies(self, engine: str, then) -> None:
        """Call `then()` once the engine's packages are there (packages.PackageSetup: the PyTorch extension
        from the Extension Manager when missing, one dialog naming what is missing, torch through PyTorch
        Utils' installer, then pip's exact list confirmed and installed; every install runs in the worker)."""
        self._packageSetup = PackageSetup(
            logic=self.logic,
            engine=engine,
            then=then,
            confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, _("LegSegNet needs Python packages")),
            error=slicer.util.errorDisplay,
            startTask=self._startTask,
            installPyTorchExtension=self._installPyTorchExtension,
            restart=slicer.util.restart,
            pytorchUtilsAvailable=hasattr(slicer.modules, "pytorchutils"),
        )
        self._packageSetup.start()

    @staticmethod
    def _installPyTorchExtension() -> bool:
        """The PyTorch extension (PyTorch Utils) from the Extension Manager, as SlicerNNUnet does; True when
        installed (Slicer must restart to load it)."""
        manager = slicer.app.extensionsManagerModel()
        name = dependencies.PYTORCH_EXTENSION
        if manager.isExtensionInstalled(name):
            return True
        return bool(manager.installExtensionFromServer(name, False))  # LegSegNet asks for the restart itself

    # ------------------------------------------------------------------ results
    def onUpdateMeasurements(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Measuring failed."), waitCursor=True):
            self.logic.quantify(p.outputSegmentation, p.inputVolume)
            self._showResults(p.outputSegmentation)
            self.ui.statusLabel.text = _("measurements updated")

    def _updateExportFolder(self, volume) -> None:
        """Fill in the default export folder (beside the saved scene, else Documents/LegSegNet/<volume>)
        unless the user chose one; never Slicer's working directory or a filesystem root."""
        shown = self.ui.exportDirectoryButton.directory
        if shown and shown != self._exportDefault and not widget_rules.is_unset_folder(shown):
            return  # the user's choice
        folder = str(self._exportFolderFor(volume, ""))
        if folder != shown:
            self._exportDefault = folder
            self.ui.exportDirectoryButton.directory = folder

    def _exportFolderFor(self, volume, chosen: str):
        documents = qt.QStandardPaths.writableLocation(qt.QStandardPaths.DocumentsLocation)
        return widget_rules.export_folder(
            chosen,
            volume.GetName() if volume else "",
            slicer.mrmlScene.GetURL() or "",
            documents,
            working_directory=os.getcwd(),
        )

    def onExport(self) -> None:
        p = self._parameterNode
        chosen = self.ui.exportDirectoryButton.directory
        folder = str(self._exportFolderFor(p.inputVolume, "" if chosen == self._exportDefault else chosen))
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self.logic.exportResults(p.outputSegmentation, p.inputVolume, folder)
            self.ui.statusLabel.text = _("wrote {count} files to {folder}").format(count=len(written), folder=folder)

    def onCompareWithReference(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Comparison failed."), waitCursor=True):
            table = self.logic.compareWithReference(p.outputSegmentation, p.referenceSegmentation, p.inputVolume)
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
            self.ui.statusLabel.text = _("compared with {name}").format(name=p.referenceSegmentation.GetName())

    def onShowResults(self) -> None:
        self._showResults(self._parameterNode.outputSegmentation)

    def _showResults(self, segmentation) -> None:
        """Segments over the CT, the tissue table and the profile plot in a four-up layout."""
        nodes = self.logic.resultNodes(segmentation)
        volume = nodes["inputVolume"] or self._parameterNode.inputVolume
        if volume is not None:
            slicer.util.setSliceViewerLayers(background=volume)
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        if nodes["tissueTable"] is not None:
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetActiveTableID(nodes["tissueTable"].GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
        if nodes["chart"] is not None:
            slicer.modules.plots.logic().ShowChartInLayout(nodes["chart"])

    # ------------------------------------------------------------------ review and training
    def _updateReviewDisplay(self) -> None:
        p = self._parameterNode
        segmentation = p.outputSegmentation if p else None
        volume = p.inputVolume if p else None
        ready = segmentation is not None and volume is not None
        state = None
        if ready:
            self.ui.reviewStatusLabel.text = self.annotationLogic.reviewSummary(segmentation)
            try:
                state = self.annotationLogic.reviewState(segmentation)
            except Exception:
                state = None
        else:
            self.ui.reviewStatusLabel.text = _("segment a volume (Apply) or choose an output segmentation to review")
        self.ui.sampleSlicesButton.enabled = ready
        self.ui.nextUnreviewedButton.enabled = state is not None and not state.complete
        self.ui.markReviewedButton.enabled = state is not None
        self.ui.addToTrainingSetButton.enabled = state is not None and state.done > 0 and bool(p.datasetFolder)
        training = self._trainingHandle is not None and self._trainingHandle.running
        self.ui.trainButton.enabled = training or bool(p and p.datasetFolder)
        self.ui.trainButton.text = _("Stop training") if training else _("Train next round")

    def _redSliceIndex(self, volume) -> int:
        """The slice nearest to the red view's centre (world coordinates, transforms included)."""
        sliceToRAS = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode().GetSliceToRAS()
        return self.logic.sliceIndexAtRAS(volume, [sliceToRAS.GetElement(r, 3) for r in range(3)])

    def onSampleSlices(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not sample the slices."), waitCursor=True):
            sampling = {"mode": p.reviewMode, "minGap": p.reviewMinGap}
            atStake = self.annotationLogic.progressAStartWouldDrop(
                p.outputSegmentation, p.inputVolume, p.reviewSlicesPerScan, p.reviewSeed, **sampling
            )
            if atStake is not None and not slicer.util.confirmOkCancelDisplay(
                _(
                    "This segmentation is under review ({summary}). A new sample starts the review again: "
                    "the marks are dropped (the corrected labels stay). Continue?"
                ).format(summary=atStake.summary())
            ):
                return
            state = self.annotationLogic.startReview(
                p.outputSegmentation,
                p.inputVolume,
                p.reviewSlicesPerScan,
                p.reviewSeed,
                replace=atStake is not None,
                **sampling,
            )
            if state.slices:
                self._jumpTo(state.slices[0])
        self._updateReviewDisplay()

    def onNextUnreviewed(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not find the next slice."), waitCursor=True):
            index = self.annotationLogic.nextUnreviewedSlice(p.outputSegmentation, self._redSliceIndex(p.inputVolume))
            if index is not None:
                self._jumpTo(index)
        self._updateReviewDisplay()

    def _jumpTo(self, sliceIndex: int) -> None:
        p = self._parameterNode
        slicer.util.setSliceViewerLayers(background=p.inputVolume)
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        self.annotationLogic.jumpToSlice(p.inputVolume, sliceIndex, sliceNode)

    def onMarkReviewed(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not mark the slice."), waitCursor=True):
            redView = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            self.annotationLogic.markReviewed(p.outputSegmentation, self.logic.sliceIndexInView(p.inputVolume, redView))
        self._updateReviewDisplay()

    def onBrowseDataset(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            self.parent, _("Training set folder"), self._parameterNode.datasetFolder
        )
        if folder:
            self._parameterNode.datasetFolder = folder

    def onAddToTrainingSet(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Adding the slices to the training set failed."), waitCursor=True):
            result = self.annotationLogic.addReviewedSlices(
                p.outputSegmentation,
                p.inputVolume,
                p.datasetFolder,
                patient=p.patientId or None,
                trainingRound=p.annotationRound,
                inputFormat=self.annotationLogic.modelInputFormat(self.annotationLogic.modelToRefine(p.model)),
            )
            self.ui.trainStatusLabel.text = _(
                "{added} added, {replaced} replaced, {unchanged} unchanged; the training set holds {total} slices"
            ).format(
                added=len(result.added),
                replaced=len(result.replaced),
                unchanged=len(result.unchanged),
                total=result.total_cases,
            )
        self._updateReviewDisplay()

    def onTrainNextRound(self) -> None:
        if self._trainingHandle is not None and self._trainingHandle.running:
            self._trainingHandle.stop()
            self.ui.trainStatusLabel.text = _("stopping after the current iteration (a checkpoint is kept)...")
            return
        self._withDependencies("nnunet", self._chooseTrainingRun)

    def _chooseTrainingRun(self) -> None:
        p = self._parameterNode
        runs = self.annotationLogic.interruptedRuns(p.datasetFolder)
        name = p.trainModelName or None
        if runs and slicer.util.confirmYesNoDisplay(
            _("An interrupted training run exists: {name}. Continue it?").format(name=runs[-1])
        ):
            self._startTraining(runs[-1], resume=True)
        elif p.device in ("cuda", "mps"):
            self._startTraining(name)
        elif p.device == "auto":  # is there a GPU? asked in the worker, without waiting here
            self._startTask(
                self.logic.deviceProbeAsync(),
                _("Checking the GPU..."),
                lambda handle: self._confirmCpuTraining(
                    name, gpu=handle.state == "succeeded" and self.logic.hasGpu(handle.result)
                ),
            )
        else:
            self._confirmCpuTraining(name, gpu=False)

    def _confirmCpuTraining(self, name, gpu: bool) -> None:
        """On a CPU, say how long training will roughly take before starting it."""
        p = self._parameterNode
        if not gpu:
            seconds = self.annotationLogic.expectedTrainingSeconds(
                self.annotationLogic.modelToRefine(p.model), p.trainEpochs
            )
            expected = (
                _("roughly {time}").format(time=format_duration(seconds))
                if seconds is not None
                else _("many hours to days (training from scratch)")
            )
            if not slicer.util.confirmOkCancelDisplay(
                _(
                    "No GPU is available: training runs on the CPU, which is slow: {expected} for {epochs} epochs. "
                    "The progress bar shows the time left once training runs; Stop training keeps a checkpoint "
                    "from which training can continue later. Start?"
                ).format(expected=expected, epochs=p.trainEpochs)
            ):
                return
        self._startTraining(name)

    def _startTraining(self, name, resume: bool = False) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start the training."), waitCursor=True):
            self._trainingHandle = self.annotationLogic.trainAsync(
                p.datasetFolder,
                fromModel=self.annotationLogic.modelToRefine(p.model),
                epochs=p.trainEpochs,
                device=p.device,
                name=name,
                resume=resume,
                onProgress=self._onTrainingProgress,
                onFinished=self._onTrainingFinished,
            )
            self.ui.trainProgressBar.value = 0
            self.ui.trainProgressBar.show()
            self.ui.trainStatusLabel.text = _("starting the training process...")
            self._trainingTimer.start()
        self._updateReviewDisplay()

    def _pollTraining(self) -> None:
        if self._trainingHandle is None or not self._trainingHandle.poll():
            self._trainingTimer.stop()

    def _onTrainingProgress(self, handle) -> None:
        progress = handle.progress
        self.ui.trainProgressBar.value = int(100 * progress.get("fraction", 0.0))
        text = progress.get("stage", "")
        if progress.get("total"):
            text += f" {progress['done']}/{progress['total']}"
        left = progress.get("seconds_left")
        if left is not None:
            text += _(", about {time} left").format(time=format_duration(left))
        if handle.notes:
            text += " - " + handle.notes[-1]
        self.ui.trainStatusLabel.text = text

    def _onTrainingFinished(self, handle) -> None:
        self._trainingTimer.stop()
        self.ui.trainProgressBar.hide()
        if handle.state == "succeeded":
            model = handle.result.get("model")
            self.refreshModels()
            if model:
                self._parameterNode.model = model
                self.ui.modelComboBox.currentIndex = max(0, self.ui.modelComboBox.findData(model))
            self.ui.trainStatusLabel.text = _("model {name} (round {round}) installed and selected").format(
                name=model, round=handle.result.get("round")
            )
        elif handle.state == "cancelled":
            self.ui.trainStatusLabel.text = _("training stopped; Train next round offers to continue it")
        else:
            self.ui.trainStatusLabel.text = _("training failed")
            slicer.util.errorDisplay(handle.errorMessage)
        self._updateReviewDisplay()


#
# LegSegNetLogic
#


class LegSegNetLogic(ScriptedLoadableModuleLogic, LegSegNetCoreLogic):
    """The library logic (LegSegNetLib/slicer_logic/logic.py) plus Slicer's parameter node and application services."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        LegSegNetCoreLogic.__init__(self)

    def getParameterNode(self):
        return LegSegNetParameterNode(super().getParameterNode())

    def registerTerminology(self) -> None:
        """Make the segments' terminology entries browsable in Slicer's terminology selector (done at
        startup already; loading twice is avoided)."""
        registerTerminology()


#
# LegSegNetTest
#


class LegSegNetTest(ScriptedLoadableModuleTest):
    """Runs LegSegNetLib.slicer_logic.selftest, the same checks the pytest suite runs with slicer-core."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LegSegNet_selftest()

    def test_LegSegNet_selftest(self):
        from LegSegNetLib.slicer_logic import selftest

        self.delayDisplay("Starting the LegSegNet self-test")
        summary = selftest.run_selftest(slicer.mrmlScene, log=self.delayDisplay, logic=LegSegNetLogic())
        self.delayDisplay(f"Test passed: Dice {summary['dice']}")
