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
runs `legsegnet train` in the worker process with JSON progress, and Cancel asks it to stop after the current
iteration (it keeps a checkpoint; training again with "resume" continues from there).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from . import dataset, review, slicer_io, training
from .errors import CancelledError, InputError, LegSegNetError
from .logic import Launcher, default_launcher, stored_slice_range
from .review import ReviewState
from .worker_process import WorkerEvent, WorkerProcess, default_python, make_workdir, worker_environment

TRAINING_STOP_GRACE_S = 120.0  # time a cancelled training gets to finish its iteration and save a checkpoint


class TrainingHandle:
    """A running `trainAsync`: poll() it from a timer, cancel() it, or wait() for it.

    States: "running", "stopping" (cancel asked; the worker is saving its checkpoint), "succeeded", "failed",
    "cancelled". `progress`: stage, done, total, seconds_left, fraction (0-1 of the current stage), elapsed.
    `result` (on success): the worker's summary, with the new model's "model" name and "round".
    """

    def __init__(self, worker: WorkerProcess, onProgress: Callable[["TrainingHandle"], None] | None = None,
                 onFinished: Callable[["TrainingHandle"], None] | None = None,
                 stopGraceSeconds: float = TRAINING_STOP_GRACE_S) -> None:
        self.worker = worker
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.stopGraceSeconds = stopGraceSeconds
        self.state = "running"
        self.progress: dict = {"stage": "starting", "done": 0, "total": None, "seconds_left": None, "fraction": 0.0}
        self.notes: list[str] = []
        self.error: BaseException | None = None
        self.result: dict | None = None
        self.started = time.monotonic()
        self._stop_requested_at: float | None = None

    @property
    def running(self) -> bool:
        return self.state in ("running", "stopping")

    @property
    def errorMessage(self) -> str:
        return "" if self.error is None else str(self.error)

    def poll(self) -> bool:
        """Handle new worker output; True while the worker runs."""
        if not self.running:
            return False
        for event in self.worker.poll():
            self._on_event(event)
        if self.worker.finished:
            self._complete()
        elif self._stop_requested_at is not None and time.monotonic() - self._stop_requested_at > self.stopGraceSeconds:
            self.worker.cancel()  # it did not stop in time: end the tree (the last epoch's checkpoint remains)
            self._complete()
        return self.running

    def wait(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                while self.poll():
                    time.sleep(0.1)
                raise TimeoutError(f"training did not finish within {timeout} s; it was stopped")
            time.sleep(0.1)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def cancel(self) -> None:
        """Ask the worker to stop after the current iteration and keep a checkpoint (returns at once)."""
        if self.state != "running":
            return
        self.state = "stopping"
        self._stop_requested_at = time.monotonic()
        self.progress = {**self.progress, "stage": "stopping"}
        if os.name == "nt":  # no SIGTERM there: the tree is ended and the last epoch's checkpoint is kept
            self.worker.cancel()
            return
        try:
            os.killpg(self.worker.pid, signal.SIGTERM)  # the worker runs in its own process group
        except (ProcessLookupError, PermissionError):
            pass
        if self.onProgress:
            self.onProgress(self)

    def _on_event(self, event: WorkerEvent) -> None:
        if event.event == "progress":
            data = event.data
            done, total = data.get("done") or 0, data.get("total")
            self.progress = {
                "stage": str(data.get("stage") or ""), "done": done, "total": total,
                "seconds_left": data.get("seconds_left"), "fraction": (done / total) if total else 0.0,
                "elapsed": time.monotonic() - self.started,
            }
        elif event.event == "note":
            self.notes.append(str(event.data.get("text", "")))
        else:
            return
        if self.onProgress:
            self.onProgress(self)

    def _complete(self) -> None:
        stopping = self._stop_requested_at is not None
        if self.worker.succeeded:
            self.result = (self.worker.result or {}).get("value") or {}
            self.state = "succeeded"
        elif stopping:
            self.state = "cancelled"
            self.error = CancelledError(self.worker.error_message or "training stopped; train again with resume to continue")
        else:
            code = self.worker.error_exit_code or self.worker.returncode
            self.state = "failed"
            self.error = (InputError if code == InputError.exit_code else LegSegNetError)(self.worker.failure_message())
        self.worker.cleanup()
        if self.onFinished:
            self.onFinished(self)


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
            from .models import ModelStore

            self._store = ModelStore()
        return self._store

    # ------------------------------------------------------------------ review
    def reviewRange(self, segmentationNode, inputVolume) -> tuple[int, int]:
        """The analysed range stored by the segmentation run, else the whole volume."""
        return stored_slice_range(segmentationNode, inputVolume)

    def startReview(self, segmentationNode, inputVolume, slicesPerScan: int = review.DEFAULT_SLICES_PER_SCAN,
                    seed: int = 0, firstSlice: int | None = None, lastSlice: int | None = None) -> ReviewState:
        """Sample the slices to review (stratified random, see review.sample_slices) and store the new state."""
        self._require(segmentationNode, inputVolume)
        first, last = self.reviewRange(segmentationNode, inputVolume)
        first = first if firstSlice is None else int(firstSlice)
        last = last if lastSlice is None else int(lastSlice)
        slicer_io.check_range(first, last, slicer_io.slice_count(inputVolume))
        state = ReviewState.start(first, last, slicesPerScan, seed)
        self.saveReviewState(segmentationNode, state)
        return state

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
        state = self._state_or_error(segmentationNode)
        state = state.mark(sliceIndex, reviewed)
        self.saveReviewState(segmentationNode, state)
        return state

    def nextUnreviewedSlice(self, segmentationNode, after: int | None = None) -> int | None:
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
        """Show slice `sliceIndex` of the volume in an axial slice view; returns the RAS point jumped to."""
        ras = [float(v) for v in slicer_io.slice_position_ras(inputVolume, sliceIndex)]
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
                return info.input_format if info.input_format in dataset.FORMATS else None
        return None

    def addReviewedSlices(self, segmentationNode, inputVolume, datasetFolder: str | Path, patient: str | None = None,
                          trainingRound: int = 0, inputFormat: str | None = None) -> dataset.AddResult:
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
            datasetFolder, volume, labels, list(state.reviewed), patient=patient or self.patientId(inputVolume),
            training_round=trainingRound, input_format=inputFormat, source=self.volumeSource(inputVolume),
        )
        self.saveReviewState(segmentationNode, state.mark_exported(state.reviewed, str(result.dataset)))
        return result

    # ------------------------------------------------------------------ training
    def trainCommand(self, datasetFolder: str | Path, fromModel: str | None = None, epochs: int | None = None,
                     device: str = "auto", name: str | None = None, iterations: int | None = None,
                     resume: bool = False, batchSize: int | None = None) -> list[str]:
        command = [*self.python, "-m", "LegSegNetLib.worker", "train", str(datasetFolder), "--device", device]
        if fromModel:
            command += ["--from", str(fromModel)]
        if epochs:
            command += ["--epochs", str(int(epochs))]
        if iterations:
            command += ["--iterations", str(int(iterations))]
        if batchSize:
            command += ["--batch-size", str(int(batchSize))]
        if name:
            command += ["--name", name]
        if resume:
            command.append("--resume")
        return command

    def trainAsync(self, datasetFolder: str | Path, fromModel: str | None = None, epochs: int | None = None,
                   device: str = "auto", name: str | None = None, iterations: int | None = None, resume: bool = False,
                   batchSize: int | None = None, onProgress: Callable[[TrainingHandle], None] | None = None,
                   onFinished: Callable[[TrainingHandle], None] | None = None) -> TrainingHandle:
        """Start `legsegnet train` in the worker process and return at once (poll the handle from a timer)."""
        if not str(datasetFolder or "").strip():
            raise InputError("no training set folder chosen; choose the folder the reviewed slices were added to")
        dataset.load_dataset(datasetFolder, verify=False)  # a clear error now rather than from the worker
        command = self.trainCommand(datasetFolder, fromModel, epochs, device, name, iterations, resume, batchSize)
        workdir = make_workdir("legsegnet-train-")
        try:
            worker = self.launcher(command, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return TrainingHandle(worker, onProgress, onFinished)

    def interruptedRuns(self, datasetFolder: str | Path) -> list[str]:
        """Names of the training runs of this dataset that stopped before their model was installed."""
        if not str(datasetFolder or "").strip():
            return []
        runs = Path(datasetFolder) / training.RUNS_DIR
        names = []
        if runs.is_dir():
            for child in sorted(runs.iterdir()):
                try:
                    status = json.loads((child / training.RUN_FILE).read_text(encoding="utf-8")).get("status")
                except (OSError, ValueError):
                    continue
                if status != "registered":
                    names.append(child.name)
        return names

    def expectedTrainingSeconds(self, fromModel: str | None, epochs: int | None = None,
                                iterations: int = training.DEFAULT_ITERATIONS, device: str = "cpu") -> float | None:
        """A rough training time for fine-tuning `fromModel` (None when unknown, e.g. from scratch)."""
        if not fromModel:
            return None
        from . import models
        from .engines.nnunet import cpu_threads

        try:
            plans = models.resolve_model(fromModel, self.store).plans()
            configuration = plans["configurations"][training.CONFIGURATION]
            per_iteration = training.estimate_seconds_per_iteration(configuration, device, cpu_threads())
        except (InputError, KeyError, TypeError, ValueError):
            return None
        return per_iteration * iterations * (epochs or training.DEFAULT_FINE_TUNE_EPOCHS)

    def gpuAvailable(self, timeout_s: float = 120.0) -> bool:
        """True when the worker's PyTorch sees a CUDA or Apple MPS device (checked in a subprocess)."""
        probe = ("import torch, sys; mps = getattr(torch.backends, 'mps', None); "
                 "sys.exit(0 if torch.cuda.is_available() or (mps is not None and mps.is_available()) else 3)")
        try:
            completed = subprocess.run([*self.python, "-c", probe], capture_output=True, env=worker_environment(),
                                       timeout=timeout_s)
        except (OSError, subprocess.SubprocessError):
            return False
        return completed.returncode == 0


__all__ = ["AnnotationLogic", "TrainingHandle", "TRAINING_STOP_GRACE_S"]
