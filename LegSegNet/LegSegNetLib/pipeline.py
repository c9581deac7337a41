"""One way through: read → range → engine → quantify → report.

The CLI, the worker process and the Slicer logic all call these two functions; collaborators (the
engine factory, the progress reporter) are passed in so tests can use real ones on small data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import axial_range, quantify, report, volume_io
from .ct_volume import CTVolume
from .engines import Engine, make_engine
from .progress import Progress


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
    progress: Progress | None = None,
    engine_factory: Callable[..., Engine] = make_engine,
    reader: Callable[[str | Path], CTVolume] = volume_io.read_ct,
) -> dict:
    """Segment INPUT and write the contract's output files to OUTDIR. Returns metrics.json's content.

    `reader` turns INPUT into a CTVolume (the batch passes one that picks a DICOM series and checks for legs).
    """
    progress = progress or Progress()
    progress.stage("reading")
    volume = reader(input_path)
    _report_notes(volume, progress)
    first, last = axial_range.choose_range(volume, slices=slices, auto=auto_range)
    if auto_range:
        progress.note(f"legs found on slices {first}:{last}")
    chosen = engine_factory(
        engine, model=model, device=device, folds=folds, tta=tta, batch_size=batch_size, progress=progress
    )
    progress.note(f"engine: {chosen.name}")
    slab = volume.slab(first, last)
    labels = chosen.segment(slab, volume.slab_spacing, progress)
    progress.stage("measuring")
    measurements = quantify.quantify(volume, labels, first, last)
    run_info = {"input": str(input_path), **chosen.info()}
    metrics = report.write_outputs(outdir, volume, labels, first, last, measurements, run_info, progress)
    progress.finish()
    return metrics


def quantify_files(
    ct_path: str | Path,
    labels_path: str | Path,
    outdir: str | Path,
    *,
    slices: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Measure an existing (e.g. hand-corrected) label map on its CT; same outputs as `segment`."""
    progress = progress or Progress()
    progress.stage("reading")
    volume = volume_io.read_ct(ct_path)
    _report_notes(volume, progress)
    labels_image = volume_io.read_labels(labels_path, volume)
    if slices is None:
        first, last = axial_range.labelled_range(volume, labels_image)
    else:
        first, last = axial_range.parse_slices(slices, volume.n_slices)
    labels = volume.slab_from_image(labels_image, first, last)
    progress.stage("measuring")
    measurements = quantify.quantify(volume, labels, first, last)
    run_info = {"input": str(ct_path), "labels": str(labels_path), "engine": "external", "model": None}
    metrics = report.write_outputs(outdir, volume, labels, first, last, measurements, run_info, progress)
    progress.finish()
    return metrics


def _report_notes(volume, progress: Progress) -> None:
    # What the reader decided on the user's behalf (series chosen, padding, PNG geometry) must be visible.
    for note in volume.notes:
        progress.note(note)
