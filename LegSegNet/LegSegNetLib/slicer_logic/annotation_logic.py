"""The Slicer side of model-in-the-loop annotation, on MRML only (no Qt): review, export, train.

    logic = AnnotationLogic()
    state = logic.startReview(segmentationNode, volumeNode, slicesPerScan=3, seed=0)
    logic.jumpToSlice(volumeNode, logic.nextUnreviewedSlice(segmentationNode), redSliceNode)
    ... correct that slice in Segment Editor ...
    logic.markReviewed(segmentationNode, sliceIndex)
    logic.addReviewedSlices(segmentationNode, volumeNode, "/data/legs-training", patient="P017", trainingRound=1)
    handle = logic.trainAsync("/data/legs-training", fromModel="legs-round1")   # poll() it from a timer

The review state lives in attributes of the segmentation node (review.ReviewState.to_attributes), so saving
the scene saves it. Export runs in Slicer's process (dataset.add_slices: numpy and SimpleITK only); training
runs `legsegnet train` in the worker process with JSON progress (a run_handle.RunHandle), and `stop()` asks it to
stop after the current iteration (it keeps a checkpoint; training again with "resume" continues from there).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from ..annotation import dataset, manifest, review, training, training_runs
from ..annotation.review import ReviewState
from ..core.errors import InputError
from ..worker import launcher
from ..worker.launcher import make_workdir
from . import checks, frames
from . import scene as slicer_io
from .logic import Launcher, LegSegNetLogic, check_segmentation_of, default_launcher, stored_slice_range
from .run_handle import STOP_GRACE_S, RunHandle, default_python, start_run

TrainingHandle = RunHandle  # the name `trainAsync` returned before all runs shared one handle


class AnnotationLogic:
    """Review sampling and state, export of reviewed slices, and training rounds, for a MRML scene."""

    def __init__(self, launcher: Launcher | None = None, python: Sequence[str] | None = None, store=None) -> None:
        self.launcher: Launcher = launcher or default_launcher
        self._python = list(python) if python else None
        self._store = store

    @property
    def python(self) -> list[str]:
        if self._python is None:
            self._python = default_python()
        return self._python

    @property
    def store(self):
        if self._store is None:
            from ..models.store import ModelStore

            self._store = ModelStore()
        return self._store

    # ------------------------------------------------------------------ review
    def reviewRange(self, segmentationNode, inputVolume) -> tuple[int, int]:
        """The analysed range stored by the segmentation run, else the whole volume."""
        return stored_slice_range(segmentationNode, inputVolume)

    def startReview(
        self,
        segmentationNode,
        inputVolume,
        slicesPerScan: int = review.DEFAULT_SLICES_PER_SCAN,
        seed: int = 0,
        firstSlice: int | None = None,
        lastSlice: int | None = None,
        replace: bool = False,
        mode: str = review.MODE_STRATIFIED,
        minGap: int = review.DEFAULT_MIN_GAP,
    ) -> ReviewState:
        """Sample the slices to review and store the new state: stratified random (review.sample_slices), or with
        mode "uncertain" the most uncertain slices at least `minGap` apart (review.most_uncertain_slices, from the
        per-slice uncertainty the nnU-Net run left on the segmentation: `sliceUncertainty`).

        Asking again for the sample already stored changes nothing. A different sample would drop the review's
        progress (slices marked reviewed or added to a training set): refused unless `replace` is True.
        """
        state = self._new_review(
            segmentationNode, inputVolume, slicesPerScan, seed, firstSlice, lastSlice, mode, minGap
        )
        current = self.reviewState(segmentationNode)
        if not replace and _has_progress(current):
            if _same_sample(current, state):
                return current
            raise InputError(
                f"'{segmentationNode.GetName()}' is under review ({current.summary()}); a new sample would drop that "
                "progress: finish the review, or start a new one on purpose (replace=True; in the module, confirm "
                "the question Sample slices asks)"
            )
        self.saveReviewState(segmentationNode, state)
        return state

    def progressAStartWouldDrop(
        self,
        segmentationNode,
        inputVolume,
        slicesPerScan: int = review.DEFAULT_SLICES_PER_SCAN,
        seed: int = 0,
        firstSlice: int | None = None,
        lastSlice: int | None = None,
        mode: str = review.MODE_STRATIFIED,
        minGap: int = review.DEFAULT_MIN_GAP,
    ) -> ReviewState | None:
        """The review in progress that `startReview` with these settings would replace (None: nothing would be
        lost), so the module can ask first."""
        state = self._new_review(
            segmentationNode, inputVolume, slicesPerScan, seed, firstSlice, lastSlice, mode, minGap
        )
        current = self.reviewState(segmentationNode)
        return current if _has_progress(current) and not _same_sample(current, state) else None

    def sliceUncertainty(self, segmentationNode) -> dict[int, float]:
        """{volume slice: uncertainty} of the nnU-Net run that filled the segmentation (engines/uncertainty.py),
        saved on it as the attribute review.UNCERTAINTY_ATTRIBUTE; empty for other engines and edited results."""
        if segmentationNode is None:
            return {}
        return review.decode_uncertainty(segmentationNode.GetAttribute(review.UNCERTAINTY_ATTRIBUTE))

    def _new_review(
        self, segmentationNode, inputVolume, slicesPerScan, seed, firstSlice, lastSlice, mode, minGap
    ) -> ReviewState:
        self._require(segmentationNode, inputVolume)
        stored_first, stored_last = self.reviewRange(segmentationNode, inputVolume)
        first, last = checks.slice_range(
            inputVolume,
            stored_first if firstSlice is None else firstSlice,
            stored_last if lastSlice is None else lastSlice,
        )
        review.check_mode(mode)
        uncertainty = self.sliceUncertainty(segmentationNode) if mode == review.MODE_UNCERTAIN else None
        return ReviewState.start(
            first,
            last,
            review.check_slices_per_scan(slicesPerScan),
            checks.seed(seed),
            mode,
            uncertainty,
            review.check_min_gap(minGap),
        )

    def reviewState(self, segmentationNode) -> ReviewState | None:
        if segmentationNode is None:
            return None
        return ReviewState.from_attributes(segmentationNode.GetAttribute)

    def saveReviewState(self, segmentationNode, state: ReviewState) -> None:
        was = segmentationNode.StartModify()
        try:
            for name, value in state.to_attributes().items():
                segmentationNode.SetAttribute(name, value)
        finally:
            segmentationNode.EndModify(was)

    def markReviewed(self, segmentationNode, sliceIndex: int, reviewed: bool = True) -> ReviewState:
        """Mark a slice reviewed (or not). In the module the slice is the one the red view shows
        (LegSegNetLogic.sliceIndexInView, transforms included)."""
        sliceIndex = checks.slice_number(sliceIndex)
        state = self._state_or_error(segmentationNode)
        state = state.mark(sliceIndex, reviewed)
        self.saveReviewState(segmentationNode, state)
        return state

    def nextUnreviewedSlice(self, segmentationNode, after: int | None = None) -> int | None:
        after = None if after is None else checks.slice_number(after)
        return self._state_or_error(segmentationNode).next_unreviewed(after)

    def reviewSummary(self, segmentationNode) -> str:
        try:
            state = self.reviewState(segmentationNode)
        except InputError as exc:
            return str(exc)
        if state is None:
            return "no review started: press Sample slices"
        todo = state.unreviewed()
        text = state.summary()
        if todo:
            text += f"; next: slice {todo[0]}"
        return text

    def jumpToSlice(self, inputVolume, sliceIndex: int, sliceNode) -> list[float]:
        """Show slice `sliceIndex` of the volume in an axial slice view; returns the world RAS point jumped to
        (the volume's parent transforms applied, as the view shows it)."""
        first, _ = checks.slice_range(checks.volume(inputVolume), sliceIndex, sliceIndex)
        ras = [float(v) for v in frames.slice_position_world(inputVolume, first)]
        sliceNode.JumpSliceByOffsetting(*ras)
        return ras

    def _state_or_error(self, segmentationNode) -> ReviewState:
        state = self.reviewState(segmentationNode)
        if state is None:
            raise InputError("no review started for this segmentation: press Sample slices first")
        return state

    @staticmethod
    def _require(segmentationNode, inputVolume) -> None:
        if segmentationNode is None:
            raise InputError("no segmentation selected; run the segmentation first or choose one")
        if inputVolume is None:
            raise InputError("no CT volume selected; choose the volume the segmentation belongs to")
        check_segmentation_of(segmentationNode, inputVolume)

    # ------------------------------------------------------------------ export
    def patientId(self, inputVolume) -> str | None:
        """The DICOM Patient ID of the volume's patient in the subject hierarchy, when it came from DICOM."""
        scene = inputVolume.GetScene()
        sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") if scene is not None else None
        if sh is None:
            return None
        item = sh.GetItemByDataNode(inputVolume)
        while item and item != sh.GetSceneItemID():
            value = sh.GetItemAttribute(item, "DICOM.PatientID")
            if value:
                return value
            item = sh.GetItemParent(item)
        return None

    def volumeSource(self, inputVolume) -> str:
        storage = inputVolume.GetStorageNode()
        path = storage.GetFileName() if storage is not None else None
        return str(path) if path else f"slicer:{inputVolume.GetName()}"

    def modelToRefine(self, chosen: str | None) -> str | None:
        """The model a training round refines: the chosen one, else the one `--engine auto` segments with."""
        if chosen:
            return chosen
        default = self.store.default()
        return default.name if default is not None else None

    def modelInputFormat(self, modelName: str | None) -> str | None:
        """The input format (png or hu) of an installed model, or None when none is chosen or it is unknown."""
        if not modelName:
            return None
        for info in self.store.list():
            if info.name == modelName:
                return info.input_format if info.input_format in manifest.FORMATS else None
        return None

    def addReviewedSlices(
        self,
        segmentationNode,
        inputVolume,
        datasetFolder: str | Path,
        patient: str | None = None,
        trainingRound: int = 0,
        inputFormat: str | None = None,
    ) -> dataset.AddResult:
        """Write the reviewed slices (labels as they are now in the segmentation) into the training set.

        Slices added before are skipped when unchanged and replaced when edited since (dataset.add_slices).
        """
        self._require(segmentationNode, inputVolume)
        if not str(datasetFolder or "").strip():
            raise InputError("no training set folder chosen; choose a folder for the training set first")
        state = self._state_or_error(segmentationNode)
        if not state.reviewed:
            raise InputError("no slice is marked reviewed yet; correct the sampled slices and press Mark reviewed")
        if not slicer_io.tissue_segment_ids(segmentationNode):
            raise InputError(f"'{segmentationNode.GetName()}' has no segment named SAT, SM, IAT or Bone")
        volume = slicer_io.ct_volume_from_node(inputVolume)
        labels_kji = slicer_io.labels_from_segmentation(segmentationNode, inputVolume, visible_only=False)
        labels = slicer_io.labels_image(labels_kji, inputVolume)
        result = dataset.add_slices(
            datasetFolder,
            volume,
            labels,
            list(state.reviewed),
            patient=patient or self.patientId(inputVolume),
            training_round=trainingRound,
            input_format=inputFormat,
            source=self.volumeSource(inputVolume),
        )
        self.saveReviewState(segmentationNode, state.mark_exported(state.reviewed, str(result.dataset)))
        return result

    # ------------------------------------------------------------------ training
    def trainCommand(
        self,
        datasetFolder: str | Path,
        fromModel: str | None = None,
        epochs: int | None = None,
        device: str = "auto",
        name: str | None = None,
        iterations: int | None = None,
        resume: bool = False,
        batchSize: int | None = None,
    ) -> list[str]:
        return launcher.train_command(
            self.python,
            datasetFolder,
            from_model=fromModel,
            epochs=epochs,
            device=device,
            name=name,
            iterations=iterations,
            resume=resume,
            batch_size=batchSize,
        )

    def trainAsync(
        self,
        datasetFolder: str | Path,
        fromModel: str | None = None,
        epochs: int | None = None,
        device: str = "auto",
        name: str | None = None,
        iterations: int | None = None,
        resume: bool = False,
        batchSize: int | None = None,
        onProgress: Callable[[RunHandle], None] | None = None,
        onFinished: Callable[[RunHandle], None] | None = None,
        stopGraceSeconds: float = STOP_GRACE_S,
    ) -> RunHandle:
        """Start `legsegnet train` in the worker process and return at once (poll the handle from a timer).
        `handle.stop()` ends it after the current iteration with a checkpoint kept (resume continues it)."""
        if not str(datasetFolder or "").strip():
            raise InputError("no training set folder chosen; choose the folder the reviewed slices were added to")
        manifest.load_dataset(datasetFolder, verify=False)  # a clear error now rather than from the worker
        command = self.trainCommand(datasetFolder, fromModel, epochs, device, name, iterations, resume, batchSize)
        return start_run(
            self.launcher,
            command,
            make_workdir("legsegnet-train-"),
            what="training",
            onProgress=onProgress,
            onFinished=onFinished,
            stopGraceSeconds=stopGraceSeconds,
            stopMessage="training stopped; train again with resume to continue",
        )

    def interruptedRuns(self, datasetFolder: str | Path) -> list[str]:
        """Names of the training runs of this dataset that stopped before their model was installed."""
        if not str(datasetFolder or "").strip():
            return []
        runs = Path(datasetFolder) / training_runs.RUNS_DIR
        names = []
        if runs.is_dir():
            for child in sorted(runs.iterdir()):
                try:
                    status = json.loads((child / training_runs.RUN_FILE).read_text(encoding="utf-8")).get("status")
                except (OSError, ValueError):
                    continue
                if status != "registered":
                    names.append(child.name)
        return names

    def expectedTrainingSeconds(
        self,
        fromModel: str | None,
        epochs: int | None = None,
        iterations: int = training.DEFAULT_ITERATIONS,
        device: str = "cpu",
    ) -> float | None:
        """A rough training time for fine-tuning `fromModel` (None when unknown, e.g. from scratch)."""
        if not fromModel:
            return None
        from ..annotation.time_estimate import estimate_seconds_per_iteration
        from ..engines.nnunet import cpu_threads
        from ..models.folder import CONFIGURATION
        from ..models.store import resolve_model

        try:
            plans = resolve_model(fromModel, self.store).plans()
            configuration = plans["configurations"][CONFIGURATION]
            per_iteration = estimate_seconds_per_iteration(configuration, device, cpu_threads())
        except (InputError, KeyError, TypeError, ValueError):
            return None
        return per_iteration * iterations * (epochs or training.DEFAULT_FINE_TUNE_EPOCHS)

    def gpuAvailable(self, timeout_s: float = 120.0) -> bool:
        """True when the worker's PyTorch sees a CUDA or Apple MPS device (scripts; the widget runs
        LegSegNetLogic.deviceProbeAsync, the same probe, without waiting)."""
        from ..engines import devices

        try:
            return devices.has_gpu(LegSegNetLogic(self.launcher, self.python).deviceProbeAsync().wait(timeout_s))
        except Exception:  # noqa: BLE001 - no torch, or the probe failed: no GPU to use
            return False


def _has_progress(state: ReviewState | None) -> bool:
    return state is not None and bool(state.reviewed or state.exported)


def _same_sample(a: ReviewState, b: ReviewState) -> bool:
    """The same request: range, K and mode, and the seed (stratified) or the minimum gap (uncertain)."""
    setting = b.seed if b.mode == review.MODE_STRATIFIED else b.min_gap
    mine = a.seed if a.mode == review.MODE_STRATIFIED else a.min_gap
    return (a.first, a.last, a.slices_per_scan, a.mode, mine) == (b.first, b.last, b.slices_per_scan, b.mode, setting)


__all__ = ["AnnotationLogic", "TrainingHandle"]
