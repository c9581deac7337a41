"""`LegSegNetLogic`: the Slicer module's logic on MRML only (no Qt), usable from scripts and tests.

    logic = LegSegNetLogic()
    segmentation, table = logic.process(volumeNode, firstSlice=40, lastSlice=120, engine="threshold")
    ... edit segments in Segment Editor ...
    table = logic.quantify(segmentation, volumeNode)

`process` writes only the chosen slices (a slab with exact geometry) to a temporary folder, runs the
worker (`python -m LegSegNetLib.worker segment`) in a separate process, and imports its labels and
measurements. Nodes are created only after the worker succeeded, so a failed or cancelled run leaves
the scene as it was; a failure raises the worker's own `error:` message. `processAsync` is the
non-blocking variant the widget polls from a timer.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from . import slicer_io, slicer_tables
from .ct_volume import check_same_grid
from .errors import CancelledError, InputError, LegSegNetError
from .tissues import TISSUE_KEYS
from .worker_process import WorkerEvent, WorkerProcess, default_python, make_workdir, segment_command, worker_environment

ATTRIBUTE_PREFIX = "LegSegNet."
ROLE_INPUT = "LegSegNet.inputVolume"
ROLE_TISSUE_TABLE = "LegSegNet.tissueTable"
ROLE_DERIVED_TABLE = "LegSegNet.derivedTable"
ROLE_PROFILE_TABLE = "LegSegNet.profileTable"
ROLE_CHART = "LegSegNet.profileChart"
ROLE_SERIES = "LegSegNet.series."  # + tissue key
ROLE_SEGMENTATION = "LegSegNet.segmentation"
ROLE_COMPARISON_TABLE = "LegSegNet.comparisonTable"
SLICES_ATTRIBUTE = "LegSegNet.Slices"

# Rough share of the whole run that each worker stage takes, for one overall progress bar.
STAGE_SPAN = {"reading": (0.0, 0.05), "segmenting": (0.05, 0.85), "measuring": (0.85, 0.9), "writing": (0.9, 1.0)}

Launcher = Callable[[Sequence[str], Path], WorkerProcess]


def default_launcher(command: Sequence[str], workdir: Path) -> WorkerProcess:
    return WorkerProcess(command, workdir=workdir, env=worker_environment())


@dataclass
class ProcessResult:
    """The nodes a successful run filled, and the numbers behind them."""

    segmentation: object
    tissueTable: object
    derivedTable: object
    profileTable: object
    chart: object
    metrics: dict
    first: int
    last: int
    createdNodes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # seconds: "write" (slab to disk), "worker", "import"


class ProcessHandle:
    """A running `processAsync`: poll() it from a timer, cancel() it, or wait() for it.

    States: "running", "succeeded", "failed", "cancelled". `progress` holds the latest worker progress
    (stage, done, total, seconds_left) plus `fraction` (0-1 over the whole run) and `elapsed` (s).
    """

    def __init__(self, logic: "LegSegNetLogic", worker: WorkerProcess, finish: Callable[[WorkerProcess], ProcessResult],
                 onProgress: Callable[["ProcessHandle"], None] | None, onFinished: Callable[["ProcessHandle"], None] | None):
        self.logic = logic
        self.worker = worker
        self._finish = finish
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.state = "running"
        self.progress: dict = {"stage": "starting", "done": 0, "total": None, "seconds_left": None, "fraction": 0.0}
        self.notes: list[str] = []
        self.error: BaseException | None = None
        self.result: ProcessResult | None = None
        self.started = time.monotonic()
        self._observed: list[tuple[object, int]] = []
        self.inputNames: dict[str, str] = {}  # temporary file name -> what to call it in messages

    def watchScene(self, scene, inputVolume) -> None:
        """Cancel when the scene closes or the input volume is removed (nothing to put results into)."""
        if scene is None:
            return

        def on_close(caller, event):
            self.cancel()

        def on_removed(caller, event, node=None):
            if node is None or node is inputVolume:
                self.cancel()

        import vtk

        on_removed.CallDataType = vtk.VTK_OBJECT  # receive the removed node
        self._observed.append((scene, scene.AddObserver(scene.StartCloseEvent, on_close)))
        self._observed.append((scene, scene.AddObserver(scene.NodeRemovedEvent, on_removed)))

    def _unwatch(self) -> None:
        for subject, tag in self._observed:
            subject.RemoveObserver(tag)
        self._observed = []

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def errorMessage(self) -> str:
        return "" if self.error is None else str(self.error)

    def poll(self) -> bool:
        """Handle new worker output; when the worker has ended, import the results. True while running."""
        if not self.running:
            return False
        for event in self.worker.poll():
            self._on_event(event)
        if self.worker.finished:
            self._complete()
        return self.running

    def wait(self, timeout: float | None = None) -> ProcessResult:
        """Block until done (polling), then return the result or raise the run's error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"segmentation did not finish within {timeout} s; cancelled")
            time.sleep(0.05)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def cancel(self) -> None:
        """Stop the worker tree and drop its output; the scene is left untouched."""
        if not self.running:
            return
        self.worker.cancel()
        self.state = "cancelled"
        self.error = CancelledError("segmentation cancelled; the scene was left as it was")
        self._notify_finished()

    # --- internals
    def _on_event(self, event: WorkerEvent) -> None:
        if event.event == "progress":
            data = event.data
            stage = str(data.get("stage") or "")
            done, total = data.get("done") or 0, data.get("total")
            low, high = STAGE_SPAN.get(stage, (self.progress["fraction"], self.progress["fraction"]))
            within = (done / total) if total else 0.0
            fraction = max(self.progress["fraction"], low + (high - low) * min(1.0, within))
            self.progress = {
                "stage": stage,
                "done": done,
                "total": total,
                "seconds_left": data.get("seconds_left"),
                "fraction": fraction,
                "elapsed": time.monotonic() - self.started,
            }
            if self.onProgress:
                self.onProgress(self)
        elif event.event == "note":
            self.notes.append(str(event.data.get("text", "")))
            if self.onProgress:
                self.onProgress(self)

    def _complete(self) -> None:
        if self.worker.succeeded:
            try:
                self.result = self._finish(self.worker)
                self.state = "succeeded"
                self.progress = {**self.progress, "fraction": 1.0, "seconds_left": 0.0}
            except BaseException as exc:  # noqa: BLE001 - reported to the caller, scene already restored
                self.error, self.state = exc, "failed"
        else:
            code = self.worker.error_exit_code or self.worker.returncode
            error_class = InputError if code == InputError.exit_code else LegSegNetError
            message = self.worker.failure_message()
            for temporary, meant in self.inputNames.items():  # the user knows the volume, not our temp file
                message = message.replace(temporary, meant)
            self.error, self.state = error_class(message), "failed"
        self.worker.cleanup()
        self._notify_finished()

    def _notify_finished(self) -> None:
        self._unwatch()
        if self.onFinished:
            self.onFinished(self)


class LegSegNetLogic:
    """Segmentation and measurement of lower-leg CT in a MRML scene.

    `launcher(command, workdir) -> WorkerProcess` starts the worker (tests pass a real one with other
    options); `python` is the interpreter command (default: PythonSlicer inside Slicer, else this
    Python).
    """

    def __init__(self, launcher: Launcher | None = None, python: Sequence[str] | None = None) -> None:
        self.launcher: Launcher = launcher or default_launcher
        self._python = list(python) if python else None
        self.lastResult: ProcessResult | None = None

    @property
    def python(self) -> list[str]:
        if self._python is None:
            self._python = default_python()
        return self._python

    # ------------------------------------------------------------------ range helpers
    def sliceCount(self, inputVolume) -> int:
        return slicer_io.slice_count(inputVolume)

    def slicePositionMm(self, inputVolume, sliceIndex: float) -> float:
        """S coordinate (RAS/LPS z, mm) of a slice's centre, as shown next to the slice numbers."""
        return float(slicer_io.slice_position_ras(inputVolume, sliceIndex)[2])

    def sliceIndexAtRAS(self, inputVolume, ras: Sequence[float]) -> int:
        """The slice through a RAS point (e.g. the red slice view's centre)."""
        return slicer_io.slice_index_at_ras(inputVolume, ras)

    def detectLegRange(self, inputVolume) -> tuple[int, int]:
        """The slices where legs are present (axial_range.detect_leg_range); InputError if none."""
        from . import axial_range

        return axial_range.detect_leg_range(slicer_io.ct_volume_from_node(inputVolume))

    def updateRangeROI(self, inputVolume, firstSlice: int, lastSlice: int, roiNode=None):
        """A locked ROI box around the chosen slices, aligned with the volume's voxel axes."""
        import vtk

        center, size, axes = slicer_io.slab_corners_ras(inputVolume, firstSlice, lastSlice)
        scene = inputVolume.GetScene()
        if roiNode is None:
            roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{inputVolume.GetName()} LegSegNet range")
            roiNode.CreateDefaultDisplayNodes()
            roiNode.SetAttribute(ATTRIBUTE_PREFIX + "Role", "range")
        matrix = vtk.vtkMatrix4x4()
        for r in range(3):
            for c in range(3):
                matrix.SetElement(r, c, float(axes[r, c]))
            matrix.SetElement(r, 3, float(center[r]))
        roiNode.SetAndObserveObjectToNodeMatrix(matrix)
        roiNode.SetSize(*[float(s) for s in size])
        roiNode.SetLocked(True)
        if inputVolume.GetParentTransformNode() is not None:
            roiNode.SetAndObserveTransformNodeID(inputVolume.GetParentTransformNode().GetID())
        display = roiNode.GetDisplayNode()
        if display is not None:
            display.SetFillOpacity(0.0)
            display.SetHandlesInteractive(False)
            display.SetPropertiesLabelVisibility(False)
        return roiNode

    # ------------------------------------------------------------------ segmentation
    def process(self, inputVolume, firstSlice: int | None = None, lastSlice: int | None = None, engine: str = "auto",
                device: str = "auto", model: str | None = None, segmentation=None, table=None, **options):
        """Segment the chosen slices in a worker process and return (segmentationNode, tissueTableNode).

        Blocks until done. Extra options: folds, tta, batchSize, outputFolder (keep the worker's files there).
        """
        handle = self.processAsync(inputVolume, firstSlice, lastSlice, engine, device, model, segmentation, table,
                                   **options)
        result = handle.wait()
        return result.segmentation, result.tissueTable

    def processAsync(self, inputVolume, firstSlice: int | None = None, lastSlice: int | None = None,
                     engine: str = "auto", device: str = "auto", model: str | None = None, segmentation=None,
                     table=None, onProgress: Callable[[ProcessHandle], None] | None = None,
                     onFinished: Callable[[ProcessHandle], None] | None = None, folds: Sequence[int] | None = None,
                     tta: bool | None = None, batchSize: int | None = None,
                     outputFolder: str | Path | None = None) -> ProcessHandle:
        """Start the worker and return at once; the caller polls `handle.poll()` (e.g. every 100 ms)."""
        started = time.monotonic()
        n_slices = slicer_io.slice_count(inputVolume)  # also validates the node
        first = 0 if firstSlice is None else int(firstSlice)
        last = n_slices - 1 if lastSlice is None else int(lastSlice)
        slicer_io.check_range(first, last, n_slices)
        workdir = make_workdir()
        try:
            slab = slicer_io.slab_image_from_node(inputVolume, first, last)
            slab_path = workdir / "input.nrrd"
            sitk.WriteImage(slab, str(slab_path), useCompression=False)
            outdir = Path(outputFolder) if outputFolder else workdir / "output"
            command = segment_command(self.python, slab_path, outdir, engine=engine, device=device, model=model,
                                      folds=folds, tta=tta, batch_size=batchSize)
            worker = self.launcher(command, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        slab_geometry = slicer_io.geometry_of_image(slab)
        del slab
        launched = time.monotonic()

        def finish(finished: WorkerProcess) -> ProcessResult:
            importing = time.monotonic()
            result = self._import_results(inputVolume, first, last, outdir, slab_geometry, segmentation, table,
                                          notes=handle.notes)
            result.timings = {"write": launched - started, "worker": importing - launched,
                              "import": time.monotonic() - importing}
            return result

        handle = ProcessHandle(self, worker, finish, onProgress, onFinished)
        meant = f"volume '{inputVolume.GetName()}' (slices {first}:{last})"
        handle.inputNames = {f"'{slab_path}'": meant, str(slab_path): meant, f"'{slab_path.name}'": meant}
        handle.watchScene(inputVolume.GetScene(), inputVolume)
        return handle

    def _import_results(self, inputVolume, first: int, last: int, outdir: Path, slab_geometry, segmentation, table,
                        notes: Sequence[str] = ()) -> ProcessResult:
        """Read the worker's files and put them in the scene; on any failure remove what was added."""
        labels_image = sitk.ReadImage(str(outdir / "labels.nii.gz"))
        reference = slab_geometry.apply_to(sitk.Image(list(slab_geometry.size_ijk), sitk.sitkUInt8))
        check_same_grid(reference, labels_image, what="worker's label map")
        labels_kji = sitk.GetArrayFromImage(labels_image).astype(np.uint8, copy=False)
        metrics = json.loads((outdir / "metrics.json").read_text(encoding="utf-8"))
        profile = slicer_tables.read_profile_csv(outdir / "profile.csv", slice_offset=first)
        # the worker saw only the slab: its slice numbers start at 0; report the volume's own
        metrics["slices"] = [first, last]
        metrics["input"] = inputVolume.GetName()
        metrics["notes"] = list(notes)
        result = self._store_results(inputVolume, labels_kji, first, last, metrics, profile, segmentation, table)
        self.lastResult = result
        return result

    def _store_results(self, inputVolume, labels_kji: np.ndarray | None, first: int, last: int, metrics: dict,
                       profile: list[dict], segmentation, table) -> ProcessResult:
        scene = inputVolume.GetScene()
        created: list = []

        def node(existing, cls: str, name: str):
            if existing is not None:
                return existing
            new = scene.AddNewNodeByClass(cls, name)
            created.append(new)
            return new

        try:
            name = inputVolume.GetName()
            segmentation = node(segmentation, "vtkMRMLSegmentationNode", f"{name} segmentation")
            if labels_kji is not None:
                slicer_io.fill_segmentation(segmentation, inputVolume, labels_kji, first)
                if inputVolume.GetParentTransformNode() is not None:
                    segmentation.SetAndObserveTransformNodeID(inputVolume.GetParentTransformNode().GetID())
            tissue_table = node(table if table is not None else segmentation.GetNodeReference(ROLE_TISSUE_TABLE),
                                "vtkMRMLTableNode", f"{name} tissues")
            derived_table = node(segmentation.GetNodeReference(ROLE_DERIVED_TABLE), "vtkMRMLTableNode",
                                 f"{name} derived metrics")
            profile_table = node(segmentation.GetNodeReference(ROLE_PROFILE_TABLE), "vtkMRMLTableNode",
                                 f"{name} profile")
            chart = node(segmentation.GetNodeReference(ROLE_CHART), "vtkMRMLPlotChartNode", f"{name} profile chart")
            series = {key: node(chart.GetNodeReference(ROLE_SERIES + key), "vtkMRMLPlotSeriesNode", f"{name} {key} area")
                      for key in TISSUE_KEYS}
            slicer_tables.fill_tissue_table(tissue_table, metrics)
            slicer_tables.fill_derived_table(derived_table, metrics)
            slicer_tables.fill_profile_table(profile_table, profile)
            slicer_tables.fill_profile_chart(chart, profile_table, series)
            for key, series_node in series.items():
                chart.SetNodeReferenceID(ROLE_SERIES + key, series_node.GetID())
            segmentation.SetNodeReferenceID(ROLE_INPUT, inputVolume.GetID())
            segmentation.SetNodeReferenceID(ROLE_TISSUE_TABLE, tissue_table.GetID())
            segmentation.SetNodeReferenceID(ROLE_DERIVED_TABLE, derived_table.GetID())
            segmentation.SetNodeReferenceID(ROLE_PROFILE_TABLE, profile_table.GetID())
            segmentation.SetNodeReferenceID(ROLE_CHART, chart.GetID())
            for table_node in (tissue_table, derived_table, profile_table):
                table_node.SetNodeReferenceID(ROLE_SEGMENTATION, segmentation.GetID())
            segmentation.SetAttribute(SLICES_ATTRIBUTE, f"{first}:{last}")
            for key in ("engine", "model", "device"):
                if metrics.get(key) is not None:
                    segmentation.SetAttribute(ATTRIBUTE_PREFIX + key.capitalize(), str(metrics[key]))
            place_beside(inputVolume, [segmentation, tissue_table, derived_table, profile_table, chart])
        except BaseException:
            for new in reversed(created):
                scene.RemoveNode(new)
            raise
        return ProcessResult(segmentation, tissue_table, derived_table, profile_table, chart, metrics, first, last,
                             created)

    # ------------------------------------------------------------------ measurement after edits
    def measure(self, segmentationNode, inputVolume):
        """Measurements of the segmentation's visible tissue segments on the volume: (Measurements, first, last)."""
        from . import quantify as quantify_module

        if not slicer_io.visible_tissue_segment_ids(segmentationNode):
            raise InputError(
                f"'{segmentationNode.GetName()}' has no visible segment named SAT, SM, IAT or Bone; "
                "show the tissue segments (or name your segments so) and measure again"
            )
        labels_kji = slicer_io.labels_from_segmentation(segmentationNode, inputVolume, visible_only=True)
        first, last = self._measured_range(segmentationNode, inputVolume, labels_kji)
        volume = slicer_io.ct_volume_from_node(inputVolume)
        labels_slab = slicer_io.labels_slab(volume, labels_kji, first, last)
        return quantify_module.quantify(volume, labels_slab, first, last), first, last

    def quantify(self, segmentationNode, inputVolume, table=None):
        """Measure the segments again (e.g. after Segment Editor changes) and refresh the tables and plot.

        Measures the stored range, widened to every slice that holds a label. Returns the tissue table.
        """
        if segmentationNode is None:
            raise InputError("no segmentation selected; run the segmentation first or choose one")
        measurements, first, last = self.measure(segmentationNode, inputVolume)
        metrics = measurements.to_dict()
        metrics["input"] = inputVolume.GetName()
        metrics["engine"] = segmentationNode.GetAttribute(ATTRIBUTE_PREFIX + "Engine")
        metrics["model"] = segmentationNode.GetAttribute(ATTRIBUTE_PREFIX + "Model")
        profile = slicer_tables.profile_rows_as_dicts(measurements.profile_rows())
        result = self._store_results(inputVolume, None, first, last, metrics, profile, segmentationNode, table)
        self.lastResult = result
        return result.tissueTable

    def _measured_range(self, segmentationNode, inputVolume, labels_kji: np.ndarray) -> tuple[int, int]:
        axis = slicer_io.axial_axis_of_node(inputVolume)
        other = tuple(a for a in range(3) if a != 2 - axis)
        holding = np.flatnonzero(labels_kji.any(axis=other))
        stored = segmentationNode.GetAttribute(SLICES_ATTRIBUTE)
        bounds = []
        if stored:
            try:
                bounds = [int(v) for v in stored.split(":")]
            except ValueError:
                bounds = []
        if holding.size:
            bounds += [int(holding[0]), int(holding[-1])]
        if not bounds:
            raise InputError(
                f"'{segmentationNode.GetName()}' has no SAT/SM/IAT/Bone voxels to measure and no stored slice "
                "range; paint the tissues or run the segmentation first"
            )
        n = slicer_io.slice_count(inputVolume)
        return max(0, min(bounds)), min(n - 1, max(bounds))

    # ------------------------------------------------------------------ comparison with a reference
    def compareWithReference(self, segmentationNode, referenceNode, inputVolume, table=None,
                             firstSlice: int | None = None, lastSlice: int | None = None):
        """Dice, IoU, ASSD, HD95 and volume difference per tissue against a reference segmentation: a table node.

        Slices firstSlice..lastSlice, by default the range the segmentation run analysed (else all). The table
        is kept with the segmentation and refilled by the next comparison. See reference_comparison.py.
        """
        from .reference_comparison import compare_with_reference

        if segmentationNode is not None and (firstSlice is None or lastSlice is None):
            stored = stored_slice_range(segmentationNode, inputVolume)
            firstSlice = stored[0] if firstSlice is None else firstSlice
            lastSlice = stored[1] if lastSlice is None else lastSlice
        if table is None and segmentationNode is not None:
            table = segmentationNode.GetNodeReference(ROLE_COMPARISON_TABLE)
        slices = None if firstSlice is None else (int(firstSlice), int(lastSlice))
        table, _ = compare_with_reference(segmentationNode, referenceNode, inputVolume, table, slices)
        segmentationNode.SetNodeReferenceID(ROLE_COMPARISON_TABLE, table.GetID())
        table.SetNodeReferenceID(ROLE_SEGMENTATION, segmentationNode.GetID())
        place_beside(inputVolume, [table])
        return table

    # ------------------------------------------------------------------ export
    def exportResults(self, segmentationNode, inputVolume, folder: str | Path) -> list[Path]:
        """Write labels.nii.gz (on the volume's grid), metrics.json and the tables as CSV into `folder`.

        Files are written to a temporary folder beside the target and moved in only when all succeeded.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        measurements, first, last = self.measure(segmentationNode, inputVolume)
        labels_kji = slicer_io.labels_from_segmentation(segmentationNode, inputVolume, visible_only=True)
        metrics = {"input": inputVolume.GetName(), "engine": segmentationNode.GetAttribute(ATTRIBUTE_PREFIX + "Engine"),
                   "model": segmentationNode.GetAttribute(ATTRIBUTE_PREFIX + "Model"), **measurements.to_dict()}
        tables = {role: segmentationNode.GetNodeReference(role)
                  for role in (ROLE_TISSUE_TABLE, ROLE_DERIVED_TABLE, ROLE_PROFILE_TABLE)}
        staging = Path(tempfile.mkdtemp(prefix=".legsegnet-export-", dir=folder))
        try:
            sitk.WriteImage(slicer_io.labels_image(labels_kji, inputVolume), str(staging / "labels.nii.gz"),
                            useCompression=True)
            (staging / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2), encoding="utf-8")
            names = {ROLE_TISSUE_TABLE: "tissues.csv", ROLE_DERIVED_TABLE: "derived.csv",
                     ROLE_PROFILE_TABLE: "profile.csv"}
            for role, table_node in tables.items():
                if table_node is not None:
                    slicer_tables.write_csv(table_node, staging / names[role])
            written = []
            for path in sorted(staging.iterdir()):
                target = folder / path.name
                os.replace(path, target)
                written.append(target)
            return written
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------ models and devices
    def installedModels(self) -> list[str]:
        """Names of the models in the shared model store (the one `legsegnet models list` shows)."""
        from .models import ModelStore

        return [info.name for info in ModelStore().list()]

    def runModelsCommand(self, arguments: Sequence[str], timeout_s: float = 3600.0) -> str:
        """`legsegnet models ...` in the worker's interpreter (it has torch to verify checkpoints).

        Returns stdout; raises InputError/LegSegNetError with the command's own `error:` line.
        """
        import subprocess

        command = [*self.python, "-m", "LegSegNetLib.cli", "models", *arguments]
        completed = subprocess.run(command, capture_output=True, text=True, env=worker_environment(), timeout=timeout_s)
        if completed.returncode != 0:
            lines = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
            message = lines[-1][len("error:"):].strip() if lines else completed.stderr.strip()[-500:]
            raise (InputError if completed.returncode == InputError.exit_code else LegSegNetError)(message)
        return completed.stdout

    def deviceReport(self, timeout_s: float = 120.0) -> str:
        """Which accelerators the worker's PyTorch sees, checked in a subprocess (Slicer need not import torch)."""
        import subprocess

        probe = ("import torch; print('CUDA: ' + (torch.cuda.get_device_name(0) if torch.cuda.is_available() "
                 "else 'not available') + '; MPS: ' + ('available' if torch.backends.mps.is_available() "
                 "else 'not available'))")
        completed = subprocess.run([*self.python, "-c", probe], capture_output=True, text=True,
                                   env=worker_environment(), timeout=timeout_s)
        if completed.returncode != 0:
            return "PyTorch is not installed: the nnU-Net engine offers to install it; the threshold engine runs on CPU"
        return completed.stdout.strip() + " (the worker falls back to CPU with a note when the GPU cannot be used)"

    # ------------------------------------------------------------------ lookups
    @staticmethod
    def resultNodes(segmentationNode) -> dict:
        """The tables and chart a segmentation's results live in (None where absent)."""
        roles = {"inputVolume": ROLE_INPUT, "tissueTable": ROLE_TISSUE_TABLE, "derivedTable": ROLE_DERIVED_TABLE,
                 "profileTable": ROLE_PROFILE_TABLE, "chart": ROLE_CHART}
        return {name: segmentationNode.GetNodeReference(role) for name, role in roles.items()}


def stored_slice_range(segmentationNode, inputVolume) -> tuple[int, int]:
    """The analysed range a segmentation run stored on the segmentation, else the whole volume."""
    n = slicer_io.slice_count(inputVolume)
    stored = segmentationNode.GetAttribute(SLICES_ATTRIBUTE) if segmentationNode is not None else None
    if stored:
        try:
            first, last = (int(v) for v in stored.split(":"))
            if 0 <= first <= last < n:
                return first, last
        except ValueError:
            pass
    return 0, n - 1


def place_beside(volumeNode, nodes: Sequence) -> None:
    """Put `nodes` under the volume's parent in the subject hierarchy (skipped where there is none)."""
    scene = volumeNode.GetScene()
    # look it up rather than GetSubjectHierarchyNode(), which would add one to a scene that has none
    sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") if scene is not None else None
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volumeNode)
    if not volume_item:
        return  # the volume is not in the hierarchy (slicer-core has no plugin that adds it)
    parent = sh.GetItemParent(volume_item)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:
            sh.CreateItem(parent, node)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value
