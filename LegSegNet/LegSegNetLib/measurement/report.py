"""The output files of a run: labels.nii.gz, metrics.json/.csv, profile.csv/.png, overlay.png.

They are one set, replaced as a whole or not at all by output_set.OutputSet: written into a staging folder
beside OUTDIR, then swapped in with one rename; the user's other files in OUTDIR stay.

Figures use matplotlib's object API with the Agg canvas, never pyplot, so no GUI backend is touched
(this also runs inside 3D Slicer's Python).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..core.output_set import OutputSet
from ..core.progress import Progress
from ..core.text import json_safe
from ..core.tissues import MAX_LABEL, TISSUES
from ..scan.ct_volume import CTVolume
from .quantify import PROFILE_COLUMNS, Measurements

OUTPUT_FILES = ("labels.nii.gz", "metrics.json", "metrics.csv", "profile.csv", "overlay.png", "profile.png")
UNCERTAINTY_COLUMN = "uncertainty"  # profile.csv's column of nnU-Net runs (engines/uncertainty.py)
OPTIONAL_OUTPUT_FILES = ("seg.dcm", "sr.dcm")  # written with --dicom; part of the set either way
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)  # level 40, width 400
OVERLAY_ALPHA = 0.45
OVERLAY_SLICES = 12
OVERLAY_MARGIN_VOXELS = 12  # around the labelled region the overlay is cropped to
PNG_OPTIONS = {"compress_level": 1}  # zlib's fastest level: a few per cent larger files, a fifth of the time


def write_outputs(
    outdir: str | Path,
    volume: CTVolume,
    labels_slab: np.ndarray,
    first: int,
    last: int,
    measurements: Measurements,
    run_info: dict,
    progress: Progress | None = None,
    inputs: Sequence[str | Path] = (),
    extra_files: Mapping[str, bytes] | None = None,
    slice_uncertainty: Sequence[float] | np.ndarray | None = None,
    overlay: OverlayAhead | None = None,
) -> dict:
    """Write the contract's output files to OUTDIR as one set (core/output_set.py); return metrics.json's content.

    `inputs`: the files the results were made from; an output file that is one of them is refused.
    `extra_files` (name -> content, e.g. seg.dcm and sr.dcm from dicom_results) join the same set.
    `slice_uncertainty`: one value per slab slice (engines/uncertainty.py; NaN: none), written as profile.csv's
    last column `uncertainty`; without it (engines without class probabilities) the column is absent.
    `overlay`: overlay.png already being drawn for these labels (`OverlayAhead`); drawn here without it.
    """
    progress = progress or Progress()
    if labels_slab.shape[0] != last - first + 1 or (measurements.first, measurements.last) != (first, last):
        raise ValueError(
            f"labels ({labels_slab.shape[0]} slices) and measurements ({measurements.first}:{measurements.last}) "
            f"do not both cover slices {first}:{last}"
        )
    run_info = {**run_info, "legsegnet_version": run_info.get("legsegnet_version", __version__)}
    metrics = json_safe({**run_info, **measurements.to_dict()})

    writers: list[tuple[str, Callable[[Path], None]]] = [
        ("labels.nii.gz", lambda p: _write_labels(p, volume, labels_slab, first)),
        ("metrics.json", lambda p: _write_text(p, json.dumps(metrics, indent=2, allow_nan=False) + "\n")),
        ("metrics.csv", lambda p: _write_csv(p, [_csv_run_info(run_info) | measurements.csv_row()])),
        ("profile.csv", lambda p: _write_csv(p, *profile_table(measurements, slice_uncertainty))),
    ]
    if _have_matplotlib():
        writers += [
            (
                "overlay.png",
                (lambda p: p.write_bytes(overlay.png()))
                if overlay is not None and overlay.drawing
                else (lambda p: write_overlay_png(p, volume, labels_slab, first, measurements.z_mm)),
            ),
            ("profile.png", lambda p: write_profile_png(p, measurements)),
        ]
    else:  # Slicer does not ship matplotlib; the numbers matter more than the pictures there
        progress.note("matplotlib is not installed: overlay.png and profile.png were not drawn")
    writers += [(name, lambda p, data=data: p.write_bytes(data)) for name, data in (extra_files or {}).items()]
    # every name belongs to the set: figures or DICOM objects of an earlier run do not stay beside new numbers
    OutputSet(outdir, OUTPUT_FILES + OPTIONAL_OUTPUT_FILES, inputs).write(writers, progress)
    return metrics


def profile_table(
    measurements: Measurements, slice_uncertainty: Sequence[float] | np.ndarray | None = None
) -> tuple[list[dict], tuple[str, ...]]:
    """profile.csv's rows and columns: PROFILE_COLUMNS, then `uncertainty` when the engine gave one per slice."""
    rows = measurements.profile_rows()
    if slice_uncertainty is None:
        return rows, PROFILE_COLUMNS
    values = np.asarray(slice_uncertainty, dtype=float)
    if values.shape != (len(rows),):
        raise ValueError(f"{values.size} uncertainty values for {len(rows)} profile rows")
    for row, value in zip(rows, values):
        row[UNCERTAINTY_COLUMN] = float(value)  # NaN (no body on the slice) is written as an empty cell
    return rows, PROFILE_COLUMNS + (UNCERTAINTY_COLUMN,)


def write_file_set(
    outdir: str | Path,
    writers: list[tuple[str, Callable[[Path], None]]],
    progress: Progress | None = None,
    inputs: Sequence[str | Path] = (),
) -> None:
    """Write the files of `writers` into OUTDIR as one set (core/output_set.py): all of them or none."""
    OutputSet(outdir, [name for name, _ in writers], inputs).write(writers, progress)


# ---------------------------------------------------------------------------------------------- files
def _write_labels(path: Path, volume: CTVolume, labels_slab: np.ndarray, first: int) -> None:
    write_label_image(path, volume.labels_to_image(np.asarray(labels_slab, dtype=np.uint8), first))


def write_label_image(path: Path, image: sitk.Image) -> None:
    """Write a label image as compressed NIfTI (`labels.nii.gz`), or raise OSError.

    SimpleITK does not notice when the compressed stream cannot be written to the end (a full disk, a file size
    limit): it leaves a cut-off file and reports success. So the file's end is checked: a gzip stream ends with
    the length of what it holds, which must be the NIfTI header plus every voxel (a cut-off file ends in the
    middle of compressed data instead). Reading that costs microseconds, not a second pass over the file.
    """
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as exc:  # SimpleITK reports the I/O failures it notices as RuntimeError
        raise OSError(f"writing {path.name} failed: {str(exc).strip().splitlines()[-1]}") from exc
    voxel_bytes = (
        int(np.prod(image.GetSize())) * image.GetSizeOfPixelComponent() * image.GetNumberOfComponentsPerPixel()
    )
    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(NIFTI1_HEADER_BYTES)
        order = "<" if struct.unpack_from("<i", header, 0)[0] == NIFTI1_HEADER_BYTES else ">"  # sizeof_hdr
        vox_offset = int(struct.unpack_from(order + "f", header, NIFTI1_VOX_OFFSET_AT)[0])
        with open(path, "rb") as raw:
            raw.seek(-4, os.SEEK_END)
            stored_length = struct.unpack("<I", raw.read(4))[0]  # gzip's ISIZE: the length modulo 2**32
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise OSError(
            f"writing {path.name} failed: the file cannot be read back ({exc}); check free disk space"
        ) from exc
    if len(header) < NIFTI1_HEADER_BYTES or stored_length != (vox_offset + voxel_bytes) % 2**32:
        raise OSError(f"writing {path.name} failed: the file was cut off; check free disk space")


NIFTI1_HEADER_BYTES = 348
NIFTI1_VOX_OFFSET_AT = 108  # byte offset of the float32 vox_offset field (in the header's byte order)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _write_csv(
    path: Path, rows: list[dict], columns: tuple[str, ...] | None = None, cell: Callable[[object], object] | None = None
) -> None:
    columns = columns or tuple(rows[0])
    cell = cell or _csv_value
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: cell(row[key]) for key in columns})


def _csv_value(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""  # undefined (e.g. the mean HU of an empty tissue)
    return value


def _csv_run_info(run_info: dict) -> dict:
    """Run info as CSV cells: scalars as they are, lists and dicts as JSON text."""
    return {k: json.dumps(json_safe(v)) if isinstance(v, (list, tuple, dict)) else v for k, v in run_info.items()}


# ---------------------------------------------------------------------------------------------- figures
def display_orientation(volume: CTVolume) -> tuple[bool, bool, bool, float, float]:
    """How to show a slab slice in radiological convention: patient's right on the image's left, anterior up.

    Returns (transpose, flip_vertical, flip_horizontal, vertical_spacing_mm, horizontal_spacing_mm) to apply,
    in this order, to a (rows, cols) slice. Decided from the direction cosines, not the storage order.
    """
    direction = np.array(volume.image.GetDirection()).reshape(3, 3)
    spacing = volume.image.GetSpacing()
    row_axis, col_axis = volume.inplane_axes
    transpose = abs(direction[0, row_axis]) > abs(direction[0, col_axis])  # rows run left-right: make them columns
    horizontal, vertical = (row_axis, col_axis) if transpose else (col_axis, row_axis)
    flip_horizontal = direction[0, horizontal] < 0  # screen rightwards must go to LPS +x (patient's left)
    flip_vertical = direction[1, vertical] < 0  # screen downwards must go to LPS +y (posterior)
    return transpose, flip_vertical, flip_horizontal, float(spacing[vertical]), float(spacing[horizontal])


def orient_for_display(slice_2d: np.ndarray, orientation: tuple[bool, bool, bool, float, float]) -> np.ndarray:
    transpose, flip_vertical, flip_horizontal, _, _ = orientation
    out = slice_2d.T if transpose else slice_2d
    if flip_vertical:
        out = out[::-1, :]
    if flip_horizontal:
        out = out[:, ::-1]
    return out


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


class OverlayAhead:
    """overlay.png drawn on a worker thread from the CT and the labels while the caller goes on (measures): the
    figure needs nothing else. Use as a context manager (leaving it waits for the drawing) and hand it to
    `write_outputs`, which takes the PNG from it. Without matplotlib it draws nothing."""

    def __init__(self, volume: CTVolume, labels_slab: np.ndarray, first: int) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._png: Future | None = None
        if _have_matplotlib():
            z_mm = volume.slice_z_mm(first, first + labels_slab.shape[0] - 1)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="legsegnet-overlay")
            self._png = self._pool.submit(_overlay_png_bytes, volume, labels_slab, first, z_mm)

    @property
    def drawing(self) -> bool:
        return self._png is not None

    def png(self) -> bytes:
        """The PNG's bytes (waits for the drawing; raises what the drawing raised)."""
        if self._png is None:
            raise RuntimeError("matplotlib is not installed: no overlay was drawn")
        return self._png.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> OverlayAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _overlay_png_bytes(volume: CTVolume, labels_slab: np.ndarray, first: int, z_mm: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    write_overlay_png(buffer, volume, labels_slab, first, z_mm)
    return buffer.getvalue()


def overlay_slices(n_slices: int, count: int = OVERLAY_SLICES) -> np.ndarray:
    """Up to `count` slab indices spread evenly from the first to the last slice."""
    return np.unique(np.round(np.linspace(0, n_slices - 1, min(count, n_slices))).astype(int))


def write_overlay_png(
    path: Path | BinaryIO, volume: CTVolume, labels_slab: np.ndarray, first: int, z_mm: np.ndarray
) -> None:
    """A grid of axial slices, labels semi-transparent over the CT in a soft-tissue window, with a legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    picks = overlay_slices(labels_slab.shape[0])
    hu = volume.slab(first, first + labels_slab.shape[0] - 1)
    orientation = display_orientation(volume)
    spacing_v, spacing_h = orientation[3], orientation[4]
    shown_labels = [orient_for_display(np.asarray(labels_slab[k]), orientation) for k in picks]
    crop_v, crop_h = _crop_box(np.any(np.stack(shown_labels) > 0, axis=0))

    # One picture of all the panels, blended here (labels at OVERLAY_ALPHA over the windowed CT, as matplotlib
    # would composite two layers) and shown by one image: per-panel axes cost most of the figure's time.
    colours = np.zeros((MAX_LABEL + 1, 3), np.float32)
    alpha = np.zeros(MAX_LABEL + 1, np.float32)
    for t in TISSUES:
        colours[t.value], alpha[t.value] = t.rgb_float, OVERLAY_ALPHA
    n_cols = min(4, len(picks))
    n_rows = math.ceil(len(picks) / n_cols)
    h, w = crop_v.stop - crop_v.start, crop_h.stop - crop_h.start
    row_aspect = spacing_v / spacing_h  # a row's height in column widths: pixels keep their true shape
    panel_w, title_h, pad, max_panel_h = 3.2, 0.3, 0.05, 6.0  # inches
    inch = min(panel_w / w, max_panel_h / (h * row_aspect))  # inches per column
    gap = max(1, round(2 * pad / inch))  # columns between panels
    band = max(1, round(title_h / (inch * row_aspect)))  # rows above each panel for its title
    canvas = np.ones((n_rows * (h + band), n_cols * (w + gap), 3), np.float32)  # white between the panels
    low, high = SOFT_TISSUE_WINDOW_HU
    corners = []
    for i, k in enumerate(picks):
        row, col = divmod(i, n_cols)
        y0, x0 = row * (h + band) + band, col * (w + gap) + gap // 2
        ct = orient_for_display(np.asarray(hu[k]), orientation)[crop_v, crop_h]
        grey = np.clip((ct.astype(np.float32) - low) / (high - low), 0.0, 1.0)[..., None]
        shown = shown_labels[i][crop_v, crop_h]
        a = alpha[shown][..., None]
        canvas[y0 : y0 + h, x0 : x0 + w] = grey * (1.0 - a) + colours[shown] * a
        corners.append((y0, x0, k))

    top_h, bottom_h = 0.35, 0.4  # the figure's title; the legend
    canvas_w, canvas_h = canvas.shape[1] * inch, canvas.shape[0] * inch * row_aspect
    fig_w, fig_h = max(canvas_w, 8.2), canvas_h + top_h + bottom_h  # at least the legend's width
    fig = Figure(figsize=(fig_w, fig_h), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes(((fig_w - canvas_w) / 2 / fig_w, bottom_h / fig_h, canvas_w / fig_w, canvas_h / fig_h))
    ax.imshow(canvas, aspect=row_aspect, interpolation="nearest")
    ax.set_axis_off()
    for y0, x0, k in corners:
        ax.text(
            x0 + w / 2, y0 - band / 2, f"slice {first + k}   z {z_mm[k]:.1f} mm", fontsize=9, ha="center", va="center"
        )
        for x, y, letter in ((0.02, 0.5, "R"), (0.98, 0.5, "L"), (0.5, 0.03, "A"), (0.5, 0.97, "P")):
            ax.text(x0 + x * w, y0 + y * h, letter, color="yellow", fontsize=8, ha="center", va="center")
    handles = [Patch(facecolor=t.rgb_float, edgecolor="none", label=f"{t.key}: {t.name}") for t in TISSUES]
    fig.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=len(TISSUES), fontsize=8, frameon=False
    )
    fig.suptitle(
        "LegSegNet labels (radiological view: patient's right on the left)", fontsize=10, y=1 - 0.08 / fig_h, va="top"
    )
    fig.savefig(path, format="png", pil_kwargs=PNG_OPTIONS)


def _crop_box(labelled: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns around the labelled pixels (plus a margin); everything when nothing is labelled."""
    rows, cols = np.nonzero(labelled.any(axis=1))[0], np.nonzero(labelled.any(axis=0))[0]
    if rows.size == 0:
        return slice(0, labelled.shape[0]), slice(0, labelled.shape[1])
    m = OVERLAY_MARGIN_VOXELS
    return (
        slice(max(0, rows[0] - m), min(labelled.shape[0], rows[-1] + m + 1)),
        slice(max(0, cols[0] - m), min(labelled.shape[1], cols[-1] + m + 1)),
    )


def write_profile_png(path: Path, measurements: Measurements) -> None:
    """Tissue cross-sectional area against the slices' z position (superior to the right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.085, right=0.98, bottom=0.12, top=0.93)  # fixed margins: no layout passes
    ax = fig.add_subplot(1, 1, 1)
    few_points = measurements.z_mm.size <= 30
    for j, t in enumerate(TISSUES):
        ax.plot(
            measurements.z_mm,
            measurements.areas_cm2[:, j],
            color=t.rgb_float,
            label=t.key,
            linewidth=1.5,
            marker="o" if few_points else None,
            markersize=3,
        )
    ax.set_xlabel("z (mm, patient superior/inferior; larger is superior)")
    ax.set_ylabel("cross-sectional area (cm²)")
    ax.set_title(f"Tissue area per slice, slices {measurements.first}-{measurements.last}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", pil_kwargs=PNG_OPTIONS)
