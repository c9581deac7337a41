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

Everything else that starts a process runs through the same `RunHandle` and returns at once: model
installs (`modelsCommandAsync`), the device probe (`deviceProbeAsync`) and package installs
(`installPackagesAsync`); their blocking forms (`runModelsCommand`, `deviceReport`) are for scripts.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..annotation import review
from ..core.errors import CancelledError, InputError
from ..core.text import json_safe
from ..core.tissues import TISSUE_KEYS
from ..measurement.report import UNCERTAINTY_COLUMN
from ..scan.ct_volume import check_same_grid
from ..worker import launcher
from ..worker.launcher import WorkerProcess, make_workdir, segment_command, worker_environment
from . import checks, frames
from . import scene as slicer_io
from . import tables as slicer_tables
from .run_handle import RunHandle, default_python, start_run

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


EXPORT_FILES = ("labels.nii.gz", "metrics.json", "tissues.csv", "derived.csv", "profile.csv")  # exportResults


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


ProcessHandle = RunHandle  # the name `processAsync` returned before all runs shared one handle


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
        """S coordinate (world RAS, mm; parent transforms applied) of a slice's centre, as shown next to the slice
        numbers and in the slice views."""
        return float(frames.slice_position_world(inputVolume, sliceIndex)[2])

    def sliceIndexAtRAS(self, inputVolume, ras: Sequence[float]) -> int:
        """The slice nearest to a world RAS point (e.g. a slice view's centre: "From view"), clamped to the volume."""
        return frames.slice_index_at_world(inputVolume, ras)

    def sliceIndexInView(self, inputVolume, sliceNode) -> int:
        """The slice of the volume a slice view shows ("Mark reviewed"); InputError when it shows none of them
        (its plane is beyond the volume, or tilted against the volume's slices)."""
        return frames.slice_index_in_view(inputVolume, sliceNode)

    def detectLegRange(self, inputVolume) -> tuple[int, int]:
        """The slices where legs are present (axial_range.detect_leg_range); InputError if none."""
        from ..anatomy import axial_range

        return axial_range.detect_leg_range(slicer_io.ct_volume_from_node(inputVolume))

    def updateRangeROI(self, inputVolume, firstSlice: int, lastSlice: int, roiNode=None):
        """A locked ROI box around the chosen slices, aligned with the volume's voxel axes."""
        import vtk

        first, last = checks.slice_range(checks.volume(inputVolume), firstSlice, lastSlice)
        center, size, axes = slicer_io.slab_corners_ras(inputVolume, first, last)
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
        roiNode.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())  # the box is in the volume's frame
        display = roiNode.GetDisplayNode()
        if display is not None:
            display.SetFillOpacity(0.0)
            display.SetHandlesInteractive(False)
            display.SetPropertiesLabelVisibility(False)
        return roiNode

    # ------------------------------------------------------------------ segmentation
    def startWorker(self, command: Sequence[str], workdir: Path | None = None, **handleOptions) -> RunHandle:
        """Launch `command` with `workdir` (a new temporary folder when None) and return its handle at once."""
        return start_run(self.launcher, command, workdir, **handleOptions)

    def process(
        self,
        inputVolume,
        firstSlice: int | None = None,
        lastSlice: int | None = None,
        engine: str = "auto",
        device: str = "auto",
        model: str | None = None,
        segmentation=None,
        table=None,
        **options,
    ):
        """Segment the chosen slices in a worker process and return (segmentationNode, tissueTableNode).

        Blocks until done. Extra options: folds, tta, batchSize, checkpoint ("best", "final", None: the model's
        default), outputFolder (keep the worker's files there).
        """
        handle = self.processAsync(
            inputVolume, firstSlice, lastSlice, engine, device, model, segmentation, table, **options
        )
        try:
            result = handle.wait()
        finally:
            handle.cancel()  # interrupted (e.g. Ctrl-C in a script): the worker does not outlive the call
        return result.segmentation, result.tissueTable

    def processAsync(
        self,
        inputVolume,
        firstSlice: int | None = None,
        lastSlice: int | None = None,
        engine: str = "auto",
        device: str = "auto",
        model: str | None = None,
        segmentation=None,
        table=None,
        onProgress: Callable[[RunHandle], None] | None = None,
        onFinished: Callable[[RunHandle], None] | None = None,
        folds: Sequence[int] | None = None,
        tta: bool | None = None,
        batchSize: int | None = None,
        checkpoint: str | None = None,
        outputFolder: str | Path | None = None,
    ) -> RunHandle:
        """Start the worker and return at once; the caller polls `handle.poll()` (e.g. every 100 ms).

        Every argument is checked before the worker starts. The run is cancelled when the scene closes, when the
        volume or a chosen output node is removed from the scene, or when the volume's grid or voxels change
        meanwhile (the labels would no longer fit it).
        """
        import vtk

        started = time.monotonic()
        scene = checks.volume(inputVolume).GetScene()
        first, last = checks.slice_range(inputVolume, firstSlice, lastSlice)
        checks.segmentation(segmentation, scene, "output segmentation", optional=True)
        checks.table(table, scene, "output table")
        if segmentation is not None:
            self.reviewedSlicesToKeep(segmentation, inputVolume)  # refuses another volume's review now
        workdir = make_workdir()
        try:
            slab = slicer_io.slab_image_from_node(inputVolume, first, last)
            slab_path = workdir / "input.nrrd"
            sitk.WriteImage(slab, str(slab_path), useCompression=False)
            outdir = Path(outputFolder) if outputFolder else workdir / "output"
            command = segment_command(
                self.python,
                slab_path,
                outdir,
                engine=engine,
                device=device,
                model=model,
                folds=folds,
                tta=tta,
                batch_size=batchSize,
                checkpoint=checkpoint,
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        slab_geometry = slicer_io.geometry_of_image(slab)
        del slab
        launched = time.monotonic()
        given = volume_state(inputVolume)

        def changed() -> str | None:
            now = volume_state(inputVolume)
            what = [name for name in given if now[name] != given[name]]
            if not what:
                return None
            return (
                f"volume '{inputVolume.GetName()}' changed while it was being segmented (its {' and '.join(what)}); "
                "the segmentation was cancelled and the scene left as it was: press Apply again to segment the "
                "volume as it is now"
            )

        def finish(finished: WorkerProcess) -> ProcessResult:
            reason = changed()  # also edits that sent no event
            if reason:
                raise CancelledError(reason)
            importing = time.monotonic()
            result = self._import_results(
                inputVolume, first, last, outdir, slab_geometry, segmentation, table, notes=handle.notes
            )
            result.timings = {
                "write": launched - started,
                "worker": importing - launched,
                "import": time.monotonic() - importing,
            }
            return result

        handle = self.startWorker(
            command,
            workdir,
            what="segmentation",
            finish=finish,
            onProgress=onProgress,
            onFinished=onFinished,
            stageSpan=STAGE_SPAN,
            cancelMessage="segmentation cancelled; the scene was left as it was",
        )
        meant = f"volume '{inputVolume.GetName()}' (slices {first}:{last})"
        handle.inputNames = {f"'{slab_path}'": meant, str(slab_path): meant, f"'{slab_path.name}'": meant}
        handle.watchScene(scene, inputVolume, {"the output segmentation": segmentation, "the output table": table})
        handle.watchNode(inputVolume, (vtk.vtkCommand.ModifiedEvent, inputVolume.ImageDataModifiedEvent), changed)
        return handle

    def _import_results(
        self,
        inputVolume,
        first: int,
        last: int,
        outdir: Path,
        slab_geometry,
        segmentation,
        table,
        notes: Sequence[str] = (),
    ) -> ProcessResult:
        """Read the worker's files and put them in the scene; on any failure the scene is put back as it was.

        The review rule: when `segmentation` holds slices marked reviewed, their labels (the corrections) are kept
        and only the other slices get the new run's labels, so no reviewed mark ever stands on labels nobody
        reviewed; the tables then measure what the segmentation holds.
        """
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

    def reviewedSlicesToKeep(self, segmentationNode, inputVolume) -> tuple[int, ...]:
        """The slices of `segmentationNode` marked reviewed, whose labels a new run into it keeps (the review rule).

        InputError when the segmentation holds a review of another volume (its labels cannot be kept on this
        one, and dropping them would leave reviewed marks on labels nobody reviewed).
        """
        from ..annotation.review import ReviewState

        state = ReviewState.from_attributes(segmentationNode.GetAttribute)
        if state is None or not (state.reviewed or state.exported):
            return ()
        owner = other_input_volume(segmentationNode, inputVolume)
        if owner is not None:
            raise InputError(
                f"'{segmentationNode.GetName()}' holds a review of volume '{owner.GetName()}' ({state.summary()}); "
                f"segmenting '{inputVolume.GetName()}' into it would mix two scans: choose another output "
                f"segmentation (or none) for '{inputVolume.GetName()}'"
            )
        return tuple(state.reviewed)

    def _with_kept_slices(
        self, segmentation, inputVolume, labels_kji: np.ndarray, first: int, last: int, kept: Sequence[int]
    ) -> tuple[np.ndarray, int]:
        """The run's slab labels with the kept (reviewed) slices taken from the segmentation as it is now:
        (labels over slices lo..hi, lo), widened to cover every kept slice."""
        axis = 2 - slicer_io.axial_axis_of_node(inputVolume)  # numpy axis of the slices
        lo, hi = min(first, *kept), max(last, *kept)
        shape = list(labels_kji.shape)
        shape[axis] = hi - lo + 1
        merged = np.zeros(shape, np.uint8)
        merged[_along(axis, slice(first - lo, last - lo + 1))] = labels_kji
        current = slicer_io.labels_from_segmentation(segmentation, inputVolume, visible_only=False)
        for k in kept:
            merged[_along(axis, k - lo)] = current[_along(axis, k)]
        return merged, lo

    def _store_results(
        self,
        inputVolume,
        labels_kji: np.ndarray | None,
        first: int,
        last: int,
        metrics: dict,
        profile: list[dict],
        segmentation,
        table,
    ) -> ProcessResult:
        """Fill (or add) the segmentation, tables and chart. Any failure puts the scene back: nodes added are
        removed, existing nodes get their earlier content back (copied before they are touched)."""
        scene = inputVolume.GetScene()
        changes = SceneChanges(scene)
        try:
            name = inputVolume.GetName()
            segmentation = changes.use(segmentation, "vtkMRMLSegmentationNode", f"{name} segmentation")
            if labels_kji is not None:
                kept = self.reviewedSlicesToKeep(segmentation, inputVolume)
                labels_first = first
                if kept:
                    labels_kji, labels_first = self._with_kept_slices(
                        segmentation, inputVolume, labels_kji, first, last, kept
                    )
                slicer_io.fill_segmentation(segmentation, inputVolume, labels_kji, labels_first)
                segmentation.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())  # the volume's frame
                segmentation.SetAttribute(SLICES_ATTRIBUTE, f"{first}:{last}")
                # the run's per-slice uncertainty (nnU-Net; none for other engines, so an older one is cleared)
                segmentation.SetAttribute(review.UNCERTAINTY_ATTRIBUTE, _uncertainty_text(profile))
                if kept:  # the worker measured its own labels; measure what the segmentation holds now
                    measurements, _, _, _ = self._measure(segmentation, inputVolume)
                    metrics = {
                        **measurements.to_dict(),
                        **{k: metrics[k] for k in RUN_KEYS if k in metrics},
                        "notes": list(metrics.get("notes") or [])
                        + [f"the corrections of the reviewed slices {', '.join(map(str, kept))} were kept"],
                    }
                    profile = slicer_tables.profile_rows_as_dicts(measurements.profile_rows())
            tissue_table = changes.use(
                table if table is not None else segmentation.GetNodeReference(ROLE_TISSUE_TABLE),
                "vtkMRMLTableNode",
                f"{name} tissues",
            )
            derived_table = changes.use(
                segmentation.GetNodeReference(ROLE_DERIVED_TABLE), "vtkMRMLTableNode", f"{name} derived metrics"
            )
            profile_table = changes.use(
                segmentation.GetNodeReference(ROLE_PROFILE_TABLE), "vtkMRMLTableNode", f"{name} profile"
            )
            chart = changes.use(
                segmentation.GetNodeReference(ROLE_CHART), "vtkMRMLPlotChartNode", f"{name} profile chart"
            )
            series = {
                key: changes.use(
                    chart.GetNodeReference(ROLE_SERIES + key), "vtkMRMLPlotSeriesNode", f"{name} {key} area"
                )
                for key in TISSUE_KEYS
            }
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
            changes.undo()
            raise
        return ProcessResult(
            segmentation, tissue_table, derived_table, profile_table, chart, metrics, first, last, changes.created
        )

    # ------------------------------------------------------------------ measurement after edits
    def measure(self, segmentationNode, inputVolume):
        """Measurements of the segmentation's visible tissue segments on the volume: (Measurements, first, last)."""
        check_segmentation_of(segmentationNode, inputVolume)
        measurements, first, last, _ = self._measure(segmentationNode, inputVolume)
        return measurements, first, last

    def _measure(self, segmentationNode, inputVolume):
        """(Measurements, first, last, labels_kji) of the visible tissue segments, from one reading of them."""
        from ..measurement import quantify as quantify_module

        if not slicer_io.visible_tissue_segment_ids(segmentationNode):
            raise InputError(
                f"'{segmentationNode.GetName()}' has no visible segment named SAT, SM, IAT or Bone; "
                "show the tissue segments (or name your segments so) and measure again"
            )
        labels_kji = slicer_io.labels_from_segmentation(segmentationNode, inputVolume, visible_only=True)
        first, last = self._measured_range(segmentationNode, inputVolume, labels_kji)
        volume = slicer_io.ct_volume_from_node(inputVolume)
        labels_slab = slicer_io.labels_slab(volume, labels_kji, first, last)
        return quantify_module.quantify(volume, labels_slab, first, last), first, last, labels_kji

    def quantify(self, segmentationNode, inputVolume, table=None):
        """Measure the segments again (e.g. after Segment Editor changes) and refresh the tables and plot.

        Measures the stored range, widened to every slice that holds a label. Returns the tissue table.
        """
        scene = check_segmentation_of(segmentationNode, inputVolume)
        checks.table(table, scene)
        measurements, first, last, _ = self._measure(segmentationNode, inputVolume)
        metrics = self._run_metrics(measurements, segmentationNode, inputVolume)
        profile = slicer_tables.profile_rows_as_dicts(measurements.profile_rows())
        result = self._store_results(inputVolume, None, first, last, metrics, profile, segmentationNode, table)
        self.lastResult = result
        return result.tissueTable

    @staticmethod
    def _run_metrics(measurements, segmentationNode, inputVolume) -> dict:
        """metrics.json's content for measurements made in Slicer (the run's engine and model as stored)."""
        return {
            "input": inputVolume.GetName(),
            "engine": segmentationNode.GetAttribute(ATTRIBUTE_PREFIX + "Engine"),
            "model": segmentationNode.GetAttribute(ATTRIBUTE_PREFIX + "Model"),
            **measurements.to_dict(),
        }

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
    def compareWithReference(
        self,
        segmentationNode,
        referenceNode,
        inputVolume,
        table=None,
        firstSlice: int | None = None,
        lastSlice: int | None = None,
    ):
        """Dice, IoU, ASSD, HD95 and volume difference per tissue against a reference segmentation: a table node.

        Slices firstSlice..lastSlice, by default the range the segmentation run analysed (else all). The table
        is kept with the segmentation and refilled by the next comparison. See reference_comparison.py.
        """
        from .reference_comparison import compare_with_reference

        scene = check_segmentation_of(segmentationNode, inputVolume)
        checks.segmentation(referenceNode, scene, "reference segmentation")
        checks.table(table, scene, "comparison table")
        if firstSlice is not None or lastSlice is not None:
            firstSlice, lastSlice = checks.slice_range(inputVolume, firstSlice, lastSlice)
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

        Every file comes from one fresh measurement of the segmentation as it is now (the same visible segments
        in each; edits since the last Update included), not from the table nodes. The files are one set
        (output_set.OutputSet): prepared beside the folder and swapped in as a whole, the folder's other files
        kept; if anything fails the folder keeps its previous set. The scene is not changed.
        """
        from ..core.output_set import OutputSet
        from ..measurement.report import write_label_image

        if not str(folder if folder is not None else "").strip():
            raise InputError("no export folder chosen; choose a folder for the results")
        check_segmentation_of(segmentationNode, inputVolume)
        output = OutputSet(folder, EXPORT_FILES, option="the export folder")
        measurements, _, _, labels_kji = self._measure(segmentationNode, inputVolume)
        metrics = self._run_metrics(measurements, segmentationNode, inputVolume)
        profile = slicer_tables.profile_rows_as_dicts(measurements.profile_rows())

        def table_csv(fill, content):
            def write(path: Path) -> None:
                import slicer

                scratch = slicer.vtkMRMLTableNode()  # never added to the scene
                fill(scratch, content)
                slicer_tables.write_csv(scratch, path)

            return write

        writers = [
            ("labels.nii.gz", lambda path: write_label_image(path, slicer_io.labels_image(labels_kji, inputVolume))),
            ("metrics.json", lambda path: path.write_text(json.dumps(json_safe(metrics), indent=2), encoding="utf-8")),
            ("tissues.csv", table_csv(slicer_tables.fill_tissue_table, metrics)),
            ("derived.csv", table_csv(slicer_tables.fill_derived_table, metrics)),
            ("profile.csv", table_csv(slicer_tables.fill_profile_table, profile)),
        ]
        output.write(writers)
        return sorted(output.folder / name for name, _ in writers)

    # ------------------------------------------------------------------ models and devices
    def installedModels(self) -> list[str]:
        """Names of the models in the shared model store (the one `legsegnet models list` shows)."""
        from ..models.store import ModelStore

        return [info.name for info in ModelStore().list()]

    def modelsCommandAsync(
        self,
        arguments: Sequence[str],
        onProgress: Callable[[RunHandle], None] | None = None,
        onFinished: Callable[[RunHandle], None] | None = None,
    ) -> RunHandle:
        """`models list|install|remove|default ...` in the worker's interpreter (it has torch to verify
        checkpoints); returns at once. The handle's result is the command's summary (e.g. the installed model)."""
        return self.startWorker(
            launcher.models_command(self.python, *arguments),
            what="model store",
            onProgress=onProgress,
            onFinished=onFinished,
        )

    def runModelsCommand(self, arguments: Sequence[str], timeout_s: float = 3600.0) -> dict:
        """`modelsCommandAsync`, waited for (scripts); raises InputError/LegSegNetError with the command's
        own `error:` line."""
        return self.modelsCommandAsync(arguments).wait(timeout_s)

    def deviceProbeAsync(self, onFinished: Callable[[RunHandle], None] | None = None) -> RunHandle:
        """Which accelerators the worker's PyTorch sees (engines.devices.probe in the worker; Slicer need not
        import torch); returns at once. The handle's result is the probe's dict."""
        return self.startWorker(launcher.devices_command(self.python), what="device check", onFinished=onFinished)

    def deviceReport(self, timeout_s: float = 120.0) -> str:
        """The device probe, waited for and said in one line (scripts; the widget uses `deviceProbeAsync`)."""
        return self.describeDevices(self.deviceProbeAsync().wait(timeout_s))

    @staticmethod
    def describeDevices(probe: dict) -> str:
        from ..engines import devices

        return devices.describe(probe)

    @staticmethod
    def hasGpu(probe: dict) -> bool:
        from ..engines import devices

        return devices.has_gpu(probe)

    def installPackagesAsync(
        self,
        plan,
        onProgress: Callable[[RunHandle], None] | None = None,
        onFinished: Callable[[RunHandle], None] | None = None,
    ) -> RunHandle:
        """Install what a dependencies.InstallPlan lists, in the worker's interpreter; returns at once.
        Slicer's own packages stay pinned by the plan's constraints file (see packages.PackageSetup)."""
        from .packages import start_install_run

        return start_install_run(
            self,
            lambda constraints, folder: plan.install_steps(constraints),
            "package installation",
            plan,
            onProgress=onProgress,
            onFinished=onFinished,
        )

    def engineFor(self, engine: str, model: str | None = None) -> str:
        """What `engine` means here (`auto`: nnU-Net when a model is chosen or installed): engines.choose_engine."""
        from ..engines import choose_engine

        return choose_engine(engine, model or None)

    # ------------------------------------------------------------------ lookups
    @staticmethod
    def resultNodes(segmentationNode) -> dict:
        """The tables and chart a segmentation's results live in (None where absent)."""
        roles = {
            "inputVolume": ROLE_INPUT,
            "tissueTable": ROLE_TISSUE_TABLE,
            "derivedTable": ROLE_DERIVED_TABLE,
            "profileTable": ROLE_PROFILE_TABLE,
            "chart": ROLE_CHART,
        }
        return {name: segmentationNode.GetNodeReference(role) for name, role in roles.items()}


RUN_KEYS = ("input", "engine", "model", "device", "legsegnet_version")  # what a run adds to the measurements


def volume_state(volumeNode) -> dict:
    """What the worker's labels depend on: the volume's grid and its voxel buffer (object and modification time).
    Compared before and after a run to notice a volume changed meanwhile."""
    image = volumeNode.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None and image.GetPointData() is not None else None
    try:
        geometry = slicer_io.node_geometry(volumeNode)
        size, spacing, position = geometry.size_ijk, geometry.spacing, (geometry.origin, geometry.direction)
    except InputError as exc:
        size = spacing = position = str(exc)
    voxels = None if scalars is None else (scalars.GetAddressAsString("vtkDataArray"), scalars.GetMTime())
    return {"size": size, "spacing": spacing, "position": position, "voxels": voxels}


class SceneChanges:
    """What an import changes, so a failure can undo it: nodes it adds are removed again, and existing nodes it
    refills get back the copy of their content (attributes and references included) taken before."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.created: list = []
        self._saved: list[tuple[object, object]] = []

    def use(self, existing, class_name: str, name: str):
        """`existing` (its content remembered first), or a new node added to the scene when it is None."""
        if existing is None:
            node = self.scene.AddNewNodeByClass(class_name, name)
            self.created.append(node)
            return node
        if all(existing is not saved for saved, _ in self._saved):
            copy = self.scene.CreateNodeByClass(existing.GetClassName())
            copy.Copy(existing)
            self._saved.append((existing, copy))
        return existing

    def undo(self) -> None:
        for node in reversed(self.created):
            self.scene.RemoveNode(node)
        for node, copy in self._saved:
            node.Copy(copy)


def _uncertainty_text(profile: Sequence[dict]) -> str:
    """The uncertainty attribute's value from profile rows (volume slice indices): their `uncertainty` column,
    which only nnU-Net runs have (empty text otherwise)."""
    column = UNCERTAINTY_COLUMN
    return review.encode_uncertainty({int(r["slice_index"]): float(r[column]) for r in profile if column in r})


def _along(axis: int, index) -> tuple:
    """A numpy index that takes `index` along `axis` of a 3-D array."""
    where: list = [slice(None)] * 3
    where[axis] = index
    return tuple(where)


def other_input_volume(segmentationNode, inputVolume):
    """The volume a LegSegNet run or measurement made the segmentation from, when that is not `inputVolume`."""
    owner = segmentationNode.GetNodeReference(ROLE_INPUT)
    return owner if owner is not None and owner.GetID() != inputVolume.GetID() else None


def check_segmentation_of(segmentationNode, inputVolume):
    """The validation step of everything that reads a segmentation on a CT (quantify, export, review, comparison):
    a CT volume and a segmentation of its scene that was made from that volume (its labels on another volume's
    HU would give wrong numbers). Returns the scene."""
    if segmentationNode is None:
        raise InputError("no segmentation selected; run the segmentation first or choose one")
    scene = checks.volume(inputVolume).GetScene()
    checks.segmentation(segmentationNode, scene)
    owner = other_input_volume(segmentationNode, inputVolume)
    if owner is not None:
        raise InputError(
            f"'{segmentationNode.GetName()}' was made from volume '{owner.GetName()}', not from "
            f"'{inputVolume.GetName()}', and its labels measured on another volume's HU would be wrong numbers; "
            f"choose '{owner.GetName()}' as the CT volume (or segment '{inputVolume.GetName()}' itself)"
        )
    return scene


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
