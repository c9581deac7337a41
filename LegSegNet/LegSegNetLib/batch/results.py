"""What a batch leaves in OUTDIR, and how it is kept whole when the batch is killed at any moment.

    OUTDIR/scans/<id>/        segment's six files and status.json (a failed scan: status.json only, plus
                              traceback.txt for an internal error)
    OUTDIR/cohort.csv         one row per scan, rebuilt from the status.json files (COLUMNS, in this order)
    OUTDIR/.batch/            the lock of the running batch and its markers of scans in flight

A scan is written into a fresh hidden folder `scans/.<id>.work-<random>/` (the pipeline's own atomic writer
fills it, then status.json is written last), and only then renamed to `scans/<id>` (an older result is renamed
aside first and deleted after). A rename is atomic, so `scans/<id>` is always either a complete result with
its status.json, or absent. Hidden work folders left by a killed batch are deleted when the next batch starts
(it holds OUTDIR's lock, so no other batch is writing them).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import uuid
from pathlib import Path

from ..core.tissues import TISSUES
from ..measurement.quantify import DERIVED_KEYS, SIDES, region_csv_names
from .qc import VALUE_COLUMNS

STATUS_FILE = "status.json"
STATUS_VERSION = 1
SCANS = "scans"
COHORT_CSV = "cohort.csv"
INTERNAL = ".batch"

IDENTITY_COLUMNS = ("id", "patient", "source", "series_uid", "status", "error", "engine", "model", "model_round")
RANGE_COLUMNS = ("first_slice", "last_slice", "n_slices", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm")
METRIC_COLUMNS = tuple(region_csv_names("") + [name for side in SIDES for name in region_csv_names(f"{side}_")])
RUN_COLUMNS = (
    "qc_flags",
    "seconds",
    *VALUE_COLUMNS,
    "attempts",
    "worker",
    "worker_peak_mb",
    "finished_at",
    "legsegnet_version",
    "dicom_files",
)
COLUMNS = IDENTITY_COLUMNS + RANGE_COLUMNS + METRIC_COLUMNS + RUN_COLUMNS


# ---------------------------------------------------------------------------------------------- folders
def scans_dir(outdir: Path) -> Path:
    return outdir / SCANS


def scan_dir(outdir: Path, scan_id: str) -> Path:
    return outdir / SCANS / scan_id


def new_work_dir(outdir: Path, scan_id: str) -> Path:
    work = scans_dir(outdir) / f".{scan_id}.work-{uuid.uuid4().hex[:12]}"
    work.mkdir(parents=True)
    return work


def publish(outdir: Path, scan_id: str, work: Path) -> Path:
    """Move the complete `work` folder to scans/<id>, replacing an older result."""
    final = scan_dir(outdir, scan_id)
    old = None
    if final.exists():
        old = final.with_name(f".{scan_id}.old-{uuid.uuid4().hex[:12]}")
        os.rename(final, old)
    os.rename(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_work(outdir: Path) -> int:
    """Delete the hidden work and old-result folders a killed batch left in scans/; returns how many."""
    folder = scans_dir(outdir)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and (".work-" in entry.name or ".old-" in entry.name) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_status(outdir: Path, scan_id: str) -> dict | None:
    """The scan's status.json, or None when there is no complete result (or it is unreadable)."""
    try:
        status = json.loads((scan_dir(outdir, scan_id) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and status.get("status") in ("ok", "error") else None


def read_metrics(outdir: Path, scan_id: str) -> dict | None:
    try:
        return json.loads((scan_dir(outdir, scan_id) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- cohort
def cohort_row(status: dict, metrics: dict | None) -> dict:
    """One cohort.csv row from a scan's status.json and (for a finished scan) its metrics.json."""
    row = dict.fromkeys(COLUMNS)
    for key in (
        "id",
        "patient",
        "source",
        "series_uid",
        "status",
        "error",
        "engine",
        "model",
        "model_round",
        "seconds",
        "attempts",
        "worker",
        "worker_peak_mb",
        "finished_at",
        "legsegnet_version",
    ):
        row[key] = status.get(key)
    row["qc_flags"] = ";".join(status.get("qc_flags") or [])
    row["dicom_files"] = ";".join(status.get("dicom_files") or [])
    row.update({k: v for k, v in (status.get("qc") or {}).items() if k in VALUE_COLUMNS})
    if metrics:
        row["engine"] = metrics.get("engine", row["engine"])
        row["model"] = metrics.get("model", row["model"])
        first, last = metrics.get("slices", [None, None])
        row["first_slice"], row["last_slice"], row["n_slices"] = first, last, metrics.get("n_slices")
        spacing = metrics.get("spacing_mm") or [None, None, None]
        row["spacing_x_mm"], row["spacing_y_mm"], row["spacing_z_mm"] = spacing
        row.update(_region_cells(metrics, ""))
        for side in SIDES:
            region = (metrics.get("legs") or {}).get(side)
            if region:
                row.update(_region_cells(region, f"{side}_"))
    return row


def _region_cells(region: dict, prefix: str) -> dict:
    """metrics.json's tissues and derived metrics of one region under metrics.csv's column names."""
    values: list = []
    for t in TISSUES:
        stats = (region.get("tissues") or {}).get(t.key) or {}
        values += [stats.get("voxels"), stats.get("volume_cm3"), stats.get("mean_hu"), stats.get("sd_hu")]
    derived = region.get("derived") or {}
    values += [derived.get(key) for key in DERIVED_KEYS]
    return dict(zip(region_csv_names(prefix), values, strict=True))


def write_cohort(outdir: Path, rows: list[dict]) -> Path:
    """cohort.csv (COLUMNS, one row per scan in input order), replaced atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in COLUMNS})
    path = outdir / COHORT_CSV
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _cell(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
