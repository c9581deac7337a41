"""The files `legsegnet evaluate` writes, all or none (the report writer's staging folder, `report.write_file_set`).

    evaluation.csv   one row per scan and tissue (EVALUATION_COLUMNS)
    slices.csv       Dice per slice and tissue, a profile along the leg (SLICE_COLUMNS)
    summary.json     cohort statistics per tissue, volume / mean HU agreement, the scans, the definitions
    dice_boxplot.png, bland_altman.png, correlation.png   (skipped, with a note, without matplotlib)

In the CSV files an undefined value (NaN) is an empty cell and an infinite distance is `inf`; summary.json
has null for both. Figures draw the numbers of summary.json (bias, limits of agreement, r, ICC), so what a
reader sees is what the file says. matplotlib's object API with the Agg canvas, never pyplot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..core.progress import Progress
from ..core.text import json_safe
from ..core.tissues import TISSUE_BY_KEY, TISSUE_KEYS
from ..measurement.report import _have_matplotlib, _write_csv, write_file_set

EVALUATION_COLUMNS = (
    "id",
    "tissue",
    "dice",
    "iou",
    "assd_mm",
    "hd95_mm",
    "volume_pred_cm3",
    "volume_ref_cm3",
    "volume_diff_cm3",
    "rel_volume_diff_pct",
    "voxels_pred",
    "voxels_ref",
    "voxels_both",
    "mean_hu_pred",
    "mean_hu_ref",
    "mean_hu_diff",
    "first_slice",
    "last_slice",
)
SLICE_COLUMNS = ("id", "slice_index", "z_mm") + tuple(f"dice_{key}" for key in TISSUE_KEYS)
FIGURES = ("dice_boxplot.png", "bland_altman.png", "correlation.png")
OUTPUT_FILES = ("evaluation.csv", "slices.csv", "summary.json") + FIGURES


def csv_cell(value):
    """NaN: empty cell (undefined); inf: 'inf' (a distance to an empty mask); floats at full precision."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(float(value))
    return value


def write_evaluation(outdir, results, summary: dict, progress: Progress | None = None) -> None:
    from .run import slice_rows, tissue_rows

    progress = progress or Progress()
    evaluation = tissue_rows(results)
    slices = slice_rows(results)
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
    writers = [
        ("evaluation.csv", lambda p: _write_csv(p, evaluation, EVALUATION_COLUMNS, cell=csv_cell)),
        ("slices.csv", lambda p: _write_csv(p, slices, SLICE_COLUMNS, cell=csv_cell)),
        ("summary.json", lambda p: p.write_text(text, encoding="utf-8")),
    ]
    if _have_matplotlib():
        writers += [
            ("dice_boxplot.png", lambda p: write_dice_boxplot(p, evaluation)),
            ("bland_altman.png", lambda p: write_bland_altman(p, evaluation, summary)),
            ("correlation.png", lambda p: write_correlation(p, evaluation, summary)),
        ]
    else:
        progress.note(f"matplotlib is not installed: {', '.join(FIGURES)} were not drawn")
    write_file_set(outdir, writers, progress)


# ---------------------------------------------------------------------------------------------- figures
def _quantities(summary: dict) -> list[tuple[str, str, str, str]]:
    """(summary key, pred column, ref column, axis label) of the agreement figures' rows."""
    rows = [("volume_cm3", "volume_pred_cm3", "volume_ref_cm3", "volume (cm³)")]
    if summary.get("n_scans_with_ct"):
        rows.append(("mean_hu", "mean_hu_pred", "mean_hu_ref", "mean HU"))
    return rows


def _pairs(evaluation: list[dict], key: str, pred_column: str, ref_column: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([row[pred_column] for row in evaluation if row["tissue"] == key], dtype=float)
    y = np.array([row[ref_column] for row in evaluation if row["tissue"] == key], dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _figure(n_rows: int, n_cols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(n_cols * width, n_rows * height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _format(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_dice_boxplot(path: Path, evaluation: list[dict]) -> None:
    """Per-scan Dice per tissue: a box (median, quartiles) with every scan as a point."""
    fig = _figure(1, 1, 6.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    data = [np.array([row["dice"] for row in evaluation if row["tissue"] == key], dtype=float) for key in TISSUE_KEYS]
    data = [values[np.isfinite(values)] for values in data]
    positions = [i + 1 for i, values in enumerate(data) if values.size]
    if positions:
        boxes = ax.boxplot(
            [data[p - 1] for p in positions], positions=positions, widths=0.5, patch_artist=True, showfliers=False
        )
        for patch, p in zip(boxes["boxes"], positions):
            patch.set_facecolor((*TISSUE_BY_KEY[TISSUE_KEYS[p - 1]].rgb_float, 0.35))
    rng = np.random.default_rng(0)  # fixed jitter: the same files for the same numbers
    for i, values in enumerate(data):
        ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, values.size), values, s=12, color="black", zorder=3)
    ax.set_xticks(range(1, len(TISSUE_KEYS) + 1), TISSUE_KEYS)
    ax.set_ylabel("Dice")
    ax.set_title(f"Dice per scan ({len({row['id'] for row in evaluation})} scans)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, format="png")


def write_bland_altman(path: Path, evaluation: list[dict], summary: dict) -> None:
    """Per tissue (columns) and quantity (rows): difference pred - ref against the mean, bias and limits."""

    def panel(ax, key, x, y, agreement, label):
        ax.scatter((x + y) / 2.0, x - y, s=14, color=TISSUE_BY_KEY[key].rgb_float)
        ba = agreement["bland_altman"]
        for value, style in ((ba["bias"], "-"), (ba["loa_lower"], "--"), (ba["loa_upper"], "--")):
            if value is not None:
                ax.axhline(value, color="grey", linestyle=style, linewidth=1)
        ax.set_title(
            f"{key}: bias {_format(ba['bias'])}, LoA {_format(ba['loa_lower'])} to {_format(ba['loa_upper'])}",
            fontsize=8,
        )
        ax.set_xlabel(f"mean of pred and ref {label}", fontsize=8)
        ax.set_ylabel(f"pred - ref {label}", fontsize=8)

    _agreement_figure(
        path,
        evaluation,
        summary,
        panel,
        3.4,
        "Bland-Altman: prediction minus reference (lines: bias and bias ± 1.96 SD)",
    )


def write_correlation(path: Path, evaluation: list[dict], summary: dict) -> None:
    """Per tissue and quantity: prediction against reference with the identity line, r and ICC."""

    def panel(ax, key, x, y, agreement, label):
        ax.scatter(y, x, s=14, color=TISSUE_BY_KEY[key].rgb_float)
        if x.size:
            low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set_title(
            f"{key}: r {_format(agreement['pearson']['r'], 3)}, ICC {_format(agreement['icc']['icc'], 3)}", fontsize=8
        )
        ax.set_xlabel(f"reference {label}", fontsize=8)
        ax.set_ylabel(f"prediction {label}", fontsize=8)

    _agreement_figure(path, evaluation, summary, panel, 3.2, "Prediction against reference (line: identity)")


def _agreement_figure(path: Path, evaluation: list[dict], summary: dict, panel, width: float, title: str) -> None:
    """One panel per tissue (columns) and quantity (rows: volume, and mean HU with a CT)."""
    quantities = _quantities(summary)
    fig = _figure(len(quantities), len(TISSUE_KEYS), width, 3.2)
    for i, (name, pred_column, ref_column, label) in enumerate(quantities):
        for j, key in enumerate(TISSUE_KEYS):
            ax = fig.add_subplot(len(quantities), len(TISSUE_KEYS), i * len(TISSUE_KEYS) + j + 1)
            x, y = _pairs(evaluation, key, pred_column, ref_column)
            panel(ax, key, x, y, summary["tissues"][key][name], label)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, format="png")
