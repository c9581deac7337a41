"""One way through: read → range → engine → quantify → report.

The CLI, the worker process and the Slicer logic all call these two functions; collaborators (the
engine factory, the progress reporter) are passed in so tests can use real ones on small data.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .core.output_set import check_outputs
from .core.progress import Progress
from .core.text import json_safe
from .engines import Engine, make_engine
from .measurement import dicom_results, quantify, report
from .scan import itk_calls, orientation, volume_io
from .scan.ct_volume import CTVolume

if TYPE_CHECKING:
    from .anatomy.label_checks import LabelCheck

# What the steps after reading import (scipy for the anatomy), loaded on a worker thread while the scan's voxels are
# read: the reader's native calls release the GIL (a DICOM folder's headers are parsed in Python before, and an import
# beside that would only slow it down). The steps import them as usual; one that fails is left to them to report.
# (matplotlib is left to the overlay's thread: loaded during the read, it would add to the read's peak memory, and it
# does not fit in the time the voxels take.)
PRELOADED = (f"{__package__}.anatomy.axial_range", f"{__package__}.anatomy.label_checks")


def segment(
    input_path: str | Path,
    outdir: str | Path,
    *,
    engine: str = "auto",
    model: str | None = None,
    device: str = "auto",
    slices: str | None = None,
    auto_range: bool = False,
    folds: list[int] | None = None,
    tta: bool | None = None,
    batch_size: int | None = None,
    checkpoint: str | None = None,
    precision: str | None = None,
    dicom: bool = False,
    progress: Progress | None = None,
    engine_factory: Callable[..., Engine] = make_engine,
    reader: Callable[[str | Path], CTVolume] = volume_io.read_ct,
) -> dict:
    """Segment INPUT and write the contract's output files to OUTDIR (with `dicom`, also seg.dcm and sr.dcm).
    Returns metrics.json's content.

    `reader` turns INPUT into a CTVolume (the batch passes one that picks a DICOM series and checks for legs).
    """
    progress = progress or Progress()
    check_before_reading(outdir, [input_path], dicom=dicom)
    preloading = _Preload(PRELOADED)
    try:
        progress.stage("reading")
        with itk_calls.before_native_calls(preloading.start):
            volume = reader(input_path)
        preloading.start()  # (a reader without native calls)
        _report_notes(volume, progress)
        if dicom:
            dicom_results.check_exportable(volume)
        from .anatomy import axial_range

        first, last = axial_range.choose_range(volume, slices=slices, auto=auto_range)
        if auto_range:
            progress.note(f"legs found on slices {first}:{last}")
        chosen = engine_factory(
            engine,
            model=model,
            device=device,
            folds=folds,
            tta=tta,
            batch_size=batch_size,
            checkpoint=checkpoint,
            precision=precision,
            progress=progress,
        )
        progress.note(f"engine: {chosen.name}")
        labels = segment_slab(chosen, volume, first, last, progress)
        # per-slice uncertainty (engines/uncertainty.py), from engines with class probabilities (nnU-Net) only
        uncertainty = getattr(chosen, "slice_uncertainty", None)
        checked = _check_labels(labels, volume, first, progress, getattr(chosen, "label_check", None))
        run_about = {"input": str(input_path), **chosen.info(), **checked}
        return _measure_and_write(
            outdir, volume, labels, first, last, run_about, [input_path], dicom, progress, slice_uncertainty=uncertainty
        )
    finally:
        preloading.finish()  # no import is left running behind the result or an error


def segment_slab(chosen: Engine, volume, first: int, last: int, progress: Progress):
    """The engine's labels on the storage slab; an engine that wants the standard in-plane orientation gets the
    slab turned to it (a view: swaps and reversals only) and its labels are turned back, so storage order never
    changes the labels in physical space."""
    slab = volume.slab(first, last)
    if not getattr(chosen, "standard_orientation", False):
        return chosen.segment(slab, volume.slab_spacing, progress)
    turn = volume.inplane_turn()
    if not turn.is_identity:
        progress.note(
            f"the scan is stored {volume.orientation_code()}: its slices were turned ({turn.describe()}) to "
            f"{orientation.STANDARD_DESCRIPTION} for the model; the labels are on the input's own grid"
        )
    labels = chosen.segment(turn.to_standard(slab), turn.spacing_to_standard(volume.slab_spacing), progress)
    return np.ascontiguousarray(turn.from_standard(labels))


def quantify_files(
    ct_path: str | Path,
    labels_path: str | Path,
    outdir: str | Path,
    *,
    slices: str | None = None,
    dicom: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Measure an existing (e.g. hand-corrected) label map on its CT; same outputs as `segment`."""
    progress = progress or Progress()
    check_before_reading(outdir, [ct_path, labels_path], dicom=dicom)
    progress.stage("reading")
    volume = volume_io.read_ct(ct_path)
    _report_notes(volume, progress)
    if dicom:
        dicom_results.check_exportable(volume)
    labels_image = volume_io.read_labels(labels_path, volume)
    from .anatomy import axial_range

    if slices is None:
        first, last = axial_range.labelled_range(volume, labels_image)
    else:
        first, last = axial_range.parse_slices(slices, volume.n_slices)
    labels = volume.slab_from_image(labels_image, first, last)
    checked = _check_labels(labels, volume, first, progress)
    run_about = {"input": str(ct_path), "labels": str(labels_path), "engine": "external", "model": None, **checked}
    return _measure_and_write(outdir, volume, labels, first, last, run_about, [ct_path, labels_path], dicom, progress)


def _measure_and_write(
    outdir,
    volume,
    labels,
    first: int,
    last: int,
    run_about: dict,
    inputs: list,
    dicom: bool,
    progress: Progress,
    slice_uncertainty=None,
) -> dict:
    """The common end of `segment` and `quantify_files`: measure, then write the output set (with seg.dcm and
    sr.dcm when `dicom`). `run_about` is what metrics.json records of the run; the run's notes are added here.
    `slice_uncertainty` (one value per slab slice, or None) becomes profile.csv's `uncertainty` column."""
    progress.stage("measuring")
    with report.OverlayAhead(volume, labels, first) as overlay:  # drawn on a worker thread while this one measures
        measurements = quantify.quantify(volume, labels, first, last)
        run_info = {**run_about, "notes": list(progress.notes)}
        metrics = report.write_outputs(
            outdir,
            volume,
            labels,
            first,
            last,
            measurements,
            run_info,
            progress,
            inputs=inputs,
            extra_files=_dicom_files(volume, labels, first, measurements, run_info, progress) if dicom else None,
            overlay=overlay,
            slice_uncertainty=slice_uncertainty,
        )
    progress.finish()
    return metrics


def check_before_reading(outdir: str | Path, inputs: list, *, dicom: bool = False) -> None:
    """What can be checked before the scan is read (the CLI's validation step calls it too): OUTDIR can take
    the set, no input would be replaced, and --dicom has a DICOM input (the first of `inputs`)."""
    check_outputs(outdir, report.OUTPUT_FILES + report.OPTIONAL_OUTPUT_FILES, inputs)
    if dicom:
        dicom_results.check_input_path(inputs[0])


def _dicom_files(volume, labels, first: int, measurements, run_info: dict, progress: Progress) -> dict[str, bytes]:
    """seg.dcm and sr.dcm for the report writer to stage with the other outputs."""
    progress.stage("DICOM SEG and SR")
    return dicom_results.dicom_output_files(
        volume, labels, first, json_safe(measurements.to_dict()), dicom_results.Provenance.from_run_info(run_info)
    )


def _check_labels(labels, volume, first: int, progress: Progress, engine_check: LabelCheck | None = None) -> dict:
    """The label check (the engine's own, or run here), as notes and as metrics.json's `label_checks`."""
    from .anatomy import label_checks

    if engine_check is not None and len(engine_check.bone_cm2) == labels.shape[0]:
        check = dataclasses.replace(engine_check, first=first)
    else:
        progress.stage("checking")
        check = label_checks.check_labels(labels, volume.slab_spacing, first)
    for note in check.notes():
        progress.note(note)
    return {"label_checks": check.to_dict()}


class _Preload:
    """Imports `modules` on a worker thread once `start` is called (see PRELOADED); `finish` (always) waits for them,
    or drops them when they have not started (a read that failed)."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self._modules = modules
        self._go = threading.Event()
        self._wanted = True
        self._thread = threading.Thread(target=self._run, name="legsegnet-preload", daemon=True)
        self._thread.start()

    def start(self) -> None:
        self._go.set()

    def finish(self) -> None:
        if not self._go.is_set():
            self._wanted = False
            self._go.set()
        self._thread.join()

    def _run(self) -> None:
        self._go.wait()
        for name in self._modules if self._wanted else ():
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the code that needs the module imports it again and reports it
                pass


def _report_notes(volume, progress: Progress) -> None:
    # What the reader decided on the user's behalf (series chosen, padding, PNG geometry) must be visible.
    for note in volume.notes:
        progress.note(note)
