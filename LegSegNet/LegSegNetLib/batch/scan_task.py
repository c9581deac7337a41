"""What a Dask worker runs for one scan: `run_scan`. Plain data in, plain data out (status.json's content).

The engine is built once per worker process and reused for every scan with the same settings (`_cached_engine`,
a module-level cache: a Dask worker runs its tasks in one long-lived process, so the nnU-Net weights are loaded
once, not once per scan). Every failure a scan can cause is caught here and becomes an `error` status with the
CLI's one-line message; only the death of the worker process itself (a crash, the nanny's out-of-memory kill)
escapes, and then Dask reschedules the scan on a restarted worker.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__, pipeline
from ..anatomy import axial_range
from ..core.errors import InputError
from ..core.progress import Progress
from ..measurement import dicom_results
from ..scan import volume_io
from . import qc, results
from .settings import BatchSettings

_ENGINE_LOCK = threading.Lock()
_ENGINE_CACHE: dict[tuple, object] = {}  # one entry: the engine of the settings last used in this process


def run_scan(spec: dict, settings: dict, outdir: str, run_id: str) -> dict:
    """Segment one scan into OUTDIR/scans/<id>/ (atomically, status.json last); return its status."""
    _tune_malloc()
    outdir_path = Path(outdir)
    batch_settings = BatchSettings.from_dict(settings)
    scan_id = spec["id"]
    started = time.monotonic()
    attempt = _mark_running(outdir_path, scan_id, run_id)
    work = results.new_work_dir(outdir_path, scan_id)
    slices, auto_range = batch_settings.scan_range(spec.get("slices"))
    status = {
        "status_version": results.STATUS_VERSION,
        "id": scan_id,
        "patient": spec.get("patient") or "",
        "source": spec["source"],
        "series_uid": spec.get("series_uid") or "",
        "fingerprint": spec["fingerprint"],
        "settings_key": batch_settings.key(spec.get("slices")),
        "engine": batch_settings.engine,
        "model": batch_settings.model_name,
        "model_round": batch_settings.model_round,
        "slices_requested": slices,
        "auto_range": auto_range,
        "attempts": attempt,
        "worker": _worker_name(),
        "legsegnet_version": __version__,
        "run_id": run_id,
    }
    try:
        try:
            flags, values, notes, engine_event = _segment(spec, batch_settings, slices, auto_range, work)
            status.update(status="ok", error="", qc_flags=flags, qc=values, notes=notes, engine_cache=engine_event)
            status["dicom_files"] = sorted(p.name for p in work.glob("*.dcm"))
        except Exception as exc:  # noqa: BLE001 - every failure of one scan is that scan's error row
            from ..core.errors import error_exit_code
            from ..core.errors import one_line as _one_line

            code, message = error_exit_code(exc)
            _empty(work)
            if not isinstance(exc, InputError):
                (work / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
            status.update(status="error", error=_one_line(message), exit_code=code, qc_flags=[], qc={})
        status["seconds"] = round(time.monotonic() - started, 2)
        status["worker_peak_mb"] = _peak_memory_mb()
        status["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results.write_json_atomic(work / results.STATUS_FILE, status)
        results.publish(outdir_path, scan_id, work)
    finally:
        _clear_running(outdir_path, scan_id)
        if work.exists():  # publishing failed: leave no hidden half-result behind
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return status


def _segment(spec: dict, settings: BatchSettings, slices: str | None, auto_range: bool, work: Path):
    progress = Progress()  # silent: the batch reports per scan, not per slice
    engine, engine_event = _cached_engine(settings, progress)
    recorder = _RecordingEngine(engine)
    series_uid = spec.get("series_uid") or None

    def read(path):
        volume = volume_io.read_ct(path, series_uid=series_uid)
        if not auto_range:
            # a cohort may hold a head or trunk CT; the fixed range would measure it. The auto-range's test
            # (a run of leg slices of at least 30 mm) says "no legs found" instead; --auto-range runs it anyway.
            axial_range.detect_leg_range(volume)
        return volume

    dicom = settings.dicom and dicom_results.may_be_dicom(spec["source"])
    if settings.dicom and not dicom:
        progress.note("--dicom: not a DICOM series, so no seg.dcm or sr.dcm for this scan")
    metrics = pipeline.segment(
        spec["source"],
        work,
        slices=slices,
        auto_range=auto_range,
        progress=progress,
        engine_factory=lambda *_a, **_k: recorder,
        reader=read,
        dicom=dicom,
    )
    try:
        flags, values = qc.assess(
            recorder.slab, recorder.labels, recorder.spacing, metrics, auto_range, recorder.confidence
        )
    finally:
        recorder.release()
    return flags, values, list(progress.notes), engine_event


def _cached_engine(settings: BatchSettings, progress: Progress):
    """(engine, "loaded" | "reused"): built on this worker's first scan, reused while the settings stay."""
    key = settings.engine_key()
    with _ENGINE_LOCK:
        engine = _ENGINE_CACHE.get(key)
        if engine is not None:
            return engine, "reused"
        _ENGINE_CACHE.clear()  # other settings: free the old model before loading the new one
        engine = settings.make_engine(progress)
        _ENGINE_CACHE[key] = engine
        return engine, "loaded"


class _RecordingEngine:
    """The cached engine seen through the Engine protocol, keeping what QC needs from the run: the slab, its
    labels and spacing, and (nnU-Net) a summary of the class probabilities."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.name = engine.name
        self.slab = self.labels = self.spacing = None
        self.confidence = qc.ConfidenceSummary() if hasattr(engine, "probability_observer") else None
        # the pipeline turns the slab for an engine that wants the standard orientation (pipeline.segment_slab)
        self.standard_orientation = getattr(engine, "standard_orientation", False)
        self.slice_uncertainty = None  # the engine's per-slice uncertainty of the last segment (profile.csv)

    def info(self) -> dict:
        return self._engine.info()

    def segment(self, slab, spacing, progress):
        if self.confidence is not None:
            self._engine.probability_observer = self.confidence
        try:
            labels = self._engine.segment(slab, spacing, progress)
        finally:
            if self.confidence is not None:
                self._engine.probability_observer = None
        self.slab, self.labels, self.spacing = slab, labels, spacing
        self.slice_uncertainty = getattr(self._engine, "slice_uncertainty", None)
        return labels

    def release(self) -> None:
        self.slab = self.labels = None


# ---------------------------------------------------------------------------------------------- markers
def running_dir(outdir: Path) -> Path:
    return outdir / results.INTERNAL / "running"


def _mark_running(outdir: Path, scan_id: str, run_id: str) -> int:
    """Record that this process works on the scan (the attempt number counts this run's earlier tries,
    whose worker died)."""
    folder = running_dir(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{scan_id}.json"
    attempt = 1
    try:
        previous = json.loads(marker.read_text(encoding="utf-8"))
        if previous.get("run_id") == run_id:
            attempt = int(previous.get("attempt", 1)) + 1
    except (OSError, ValueError):
        pass
    results.write_json_atomic(
        marker,
        {
            "id": scan_id,
            "run_id": run_id,
            "attempt": attempt,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "worker": _worker_name(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return attempt


def _clear_running(outdir: Path, scan_id: str) -> None:
    try:
        (running_dir(outdir) / f"{scan_id}.json").unlink()
    except OSError:
        pass


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return f"{get_worker().address} pid {os.getpid()}"
    except (ImportError, ValueError):
        return f"{socket.gethostname()} pid {os.getpid()}"


_MALLOC_TUNED = False
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _tune_malloc() -> None:
    """Undo the cost of Dask's MALLOC_TRIM_THRESHOLD_ for scans (once per worker process, glibc only).

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's dynamic
    mmap threshold: every array above 128 KiB is then mapped and unmapped afresh, page faults and all. That
    doubled the CPU time of nnU-Net inference in a worker (measured: 1.7-2.0 s against 0.7-0.8 s for 30
    slices). These are the values the dynamic threshold settles at in a plain process (32 MiB, trim at 64 MiB);
    larger arrays (a scan's volume) are still mapped and given back to the system when freed.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, AttributeError):  # not glibc (musl): nothing to undo
        pass


def _peak_memory_mb() -> float | None:
    """The worker process's peak resident memory so far (MB): what --worker-memory must allow."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)  # bytes on macOS, KiB on Linux


def _empty(folder: Path) -> None:
    import shutil

    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
