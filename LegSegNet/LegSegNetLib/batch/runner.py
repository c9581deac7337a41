"""`legsegnet batch`: find the scans, decide what is left to do, run it on Dask, rebuild cohort.csv.

Resume: a scan is skipped when OUTDIR/scans/<id>/status.json exists with the same content fingerprint and
settings key (inputs.py, settings.py): an `ok` one always, an `error` one unless --retry-failed. Anything else
is (re)done. cohort.csv is rebuilt from the status.json files, in input order, at the end and every
COHORT_REFRESH_S while the batch runs.

Exit status: 0 every scan ok, 1 some failed (listed at the end) or the batch was interrupted, 2 bad arguments
(raised as InputError before anything is written).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.text import format_duration as _fmt_seconds
from . import inputs, results
from .options import check_combinations
from .settings import BatchSettings, resolve

COHORT_REFRESH_S = 30.0
WAIT_S = 2.0  # how often the loop looks for workers that came back when no scan finishes
MAX_TRIES = 2  # a scan whose worker died is run once more, then marked failed


@dataclass
class Plan:
    todo: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)  # id -> status of scans not redone
    reasons: dict = field(default_factory=dict)  # why scans are (re)done: reason -> count
    done_earlier: int = 0
    failed_earlier: int = 0


def run_batch(args) -> int:
    check_combinations(args)
    if args.print_job_script:
        cluster = _cluster_module().make_slurm_cluster(args)
        try:
            print(cluster.job_script())
        finally:
            cluster.close()
        return 0
    settings = resolve(
        args.engine,
        args.model,
        args.device,
        args.folds,
        args.tta,
        args.batch_size,
        args.slices,
        args.auto_range,
        dicom=args.dicom,
        checkpoint=args.checkpoint,
        precision=args.precision,
    )
    outdir = Path(args.outdir).expanduser().absolute()
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"the output path {outdir} is a file; give a folder for the batch's results")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops like Ctrl-C: workers closed, cohort kept
    try:
        found = inputs.find_scans(list(args.inputs), args.manifest)
        if not found.scans:
            raise InputError(
                f"no scans found in {', '.join(args.inputs) or args.manifest} ({found.skipped_files} other file(s) "
                "skipped); give NIfTI/NRRD/MetaImage files or folders holding DICOM series"
            )
        report = Reporter(quiet=args.quiet)
        created = not outdir.exists()
        with _locked(outdir):
            stale = results.remove_stale_work(outdir)
            _clear_running_markers(outdir)
            plan = make_plan(found.scans, settings, outdir, args.retry_failed)
            connection = None
            if plan.todo:
                try:
                    connection = _connect(args, settings.engine)
                except InputError:  # the cluster cannot be reached: nothing ran, leave nothing behind
                    if created:
                        shutil.rmtree(outdir, ignore_errors=True)
                    raise
            report.plan(found, plan, stale)
            rows = {scan_id: _row(outdir, status) for scan_id, status in plan.kept.items()}
            interrupted = False
            if connection is not None:
                try:
                    report.cluster(connection)
                    _run(connection, settings, outdir, plan.todo, rows, found.scans, report)
                except KeyboardInterrupt:
                    interrupted = True
                finally:
                    connection.close()
                results.remove_stale_work(outdir)  # what workers that died left behind (all are closed now)
            ordered = [rows[s.id] for s in found.scans if s.id in rows]
            cohort = results.write_cohort(outdir, ordered)
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [r for r in ordered if r["status"] == "error"]
    report.summary(len(found.scans), ordered, failed, cohort, interrupted)
    if interrupted:
        raise KeyboardInterrupt
    return 1 if failed else 0


def make_plan(scans: list[inputs.ScanSpec], settings: BatchSettings, outdir: Path, retry_failed: bool) -> Plan:
    plan = Plan()
    for scan in scans:
        status = results.read_status(outdir, scan.id)
        if status is None:
            reason = "new"
        elif status.get("fingerprint") != scan.fingerprint:
            reason = "input changed"
        elif status.get("settings_key") != settings.key(scan.slices):
            reason = "settings changed"
        elif status["status"] == "ok":
            plan.kept[scan.id] = status
            plan.done_earlier += 1
            continue
        elif not retry_failed:
            plan.kept[scan.id] = status
            plan.failed_earlier += 1
            continue
        else:
            reason = "retrying a failure"
        plan.todo.append(scan)
        plan.reasons[reason] = plan.reasons.get(reason, 0) + 1
    return plan


def _run(connection, settings, outdir: Path, todo: list, rows: dict, scans: list, report: Reporter) -> None:
    from distributed import wait

    from .scan_task import run_scan

    client = connection.client
    run_id = uuid.uuid4().hex[:12]
    settings_dict = settings.to_dict()
    # the largest scans first (input bytes, a stable sort): a long scan started last would run alone at the end
    # while the other workers idle
    waiting = deque(sorted(todo, key=lambda scan: -scan.input_bytes))
    in_flight: dict = {}  # future -> scan
    tries: dict[str, int] = {}  # scan id -> submissions so far
    report.start(len(todo))
    last_cohort = time.monotonic()

    def submit(scan) -> None:
        tries[scan.id] = tries.get(scan.id, 0) + 1
        future = client.submit(
            run_scan,
            scan.to_dict(),
            settings_dict,
            str(outdir),
            run_id,
            pure=False,
            key=f"legsegnet-scan-{scan.id}-{run_id}-{tries[scan.id]}",
            resources=connection.task_resources,
        )
        in_flight[future] = scan

    while waiting or in_flight:
        # no more scans in flight than live workers: a scan never waits on a busy worker, so a worker that
        # dies takes no other scan with it (and a restarted worker gets work as soon as it is back)
        if waiting:  # (asking the scheduler is a round trip: not once the last scans are in flight)
            capacity = max(1, len(client.nthreads()))
            while waiting and len(in_flight) < capacity:
                submit(waiting.popleft())
        try:
            wait(list(in_flight), timeout=WAIT_S, return_when="FIRST_COMPLETED")
        except (TimeoutError, asyncio.TimeoutError):  # the same class from Python 3.11 on
            continue
        for future in [f for f in in_flight if f.done()]:
            scan = in_flight.pop(future)
            try:
                status = future.result()
            except Exception as exc:  # noqa: BLE001 - the worker died, or Dask could not run the scan
                if _worker_died(exc) and connection.rerun_lost and tries[scan.id] < MAX_TRIES:
                    waiting.appendleft(scan)  # once more, on a restarted (or another) worker
                    continue
                status = _record_lost_scan(outdir, scan, settings, run_id, exc, connection.memory_limit)
            rows[scan.id] = _row(outdir, status)
            report.scan_done(status)
        if time.monotonic() - last_cohort > COHORT_REFRESH_S:
            results.write_cohort(outdir, [rows[s.id] for s in scans if s.id in rows])
            last_cohort = time.monotonic()


def _cluster_module():
    try:
        from . import cluster
    except ImportError as exc:
        raise InputError(
            f"legsegnet batch needs Dask ({exc}); install it with: pip install 'legsegnet[batch]'"
        ) from exc
    return cluster


def _connect(args, engine: str):
    return _cluster_module().connect(args, engine)


def _worker_died(exc: BaseException) -> bool:
    return type(exc).__name__ == "KilledWorker"


def _interrupt(signum, _frame):
    raise KeyboardInterrupt


def _record_lost_scan(
    outdir: Path, scan, settings: BatchSettings, run_id: str, exc: BaseException, memory_limit: str | None
) -> dict:
    """A scan whose workers died (or that Dask could not run) gets its error status written here."""
    from datetime import datetime, timezone

    from .. import __version__
    from .scan_task import running_dir

    attempts = None
    marker = running_dir(outdir) / f"{scan.id}.json"
    try:
        import json

        attempts = json.loads(marker.read_text(encoding="utf-8")).get("attempt")
        marker.unlink()
    except (OSError, ValueError):
        pass
    if _worker_died(exc):
        limit = f" (memory limit {memory_limit} per worker)" if memory_limit else ""
        message = (
            f"the worker process died on this scan {attempts or 'repeatedly'} time(s): it crashed or ran out of "
            f"memory{limit}; give the workers more memory (--worker-memory) or analyse fewer slices"
        )
    else:
        message = f"Dask could not run this scan ({type(exc).__name__}: {' '.join(str(exc).split())})"
    status = {
        "status_version": results.STATUS_VERSION,
        "id": scan.id,
        "patient": scan.patient,
        "source": scan.source,
        "series_uid": scan.series_uid,
        "fingerprint": scan.fingerprint,
        "settings_key": settings.key(scan.slices),
        "engine": settings.engine,
        "model": settings.model_name,
        "model_round": settings.model_round,
        "status": "error",
        "error": message,
        "exit_code": 1,
        "qc_flags": [],
        "qc": {},
        "attempts": attempts,
        "worker": None,
        "legsegnet_version": __version__,
        "run_id": run_id,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    work = results.new_work_dir(outdir, scan.id)
    results.write_json_atomic(work / results.STATUS_FILE, status)
    results.publish(outdir, scan.id, work)
    return status


def _row(outdir: Path, status: dict) -> dict:
    metrics = results.read_metrics(outdir, status["id"]) if status.get("status") == "ok" else None
    return results.cohort_row(status, metrics)


# ---------------------------------------------------------------------------------------------- OUTDIR
class _locked:
    """Hold OUTDIR/.batch/lock for the batch: a second batch on the same OUTDIR is refused, not interleaved.
    The kernel drops the lock when the process dies, even by SIGKILL."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir

    def __enter__(self):
        folder = self.outdir / results.INTERNAL
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.handle = open(folder / "lock", "a+")
        except OSError as exc:
            raise InputError(
                f"cannot write to {self.outdir} ({exc.strerror or exc}); choose an output folder you can write to"
            ) from exc
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one batch per OUTDIR is then up to the user
            return self
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise InputError(
                f"another batch is writing to {self.outdir}; wait for it to finish or choose another OUTDIR"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        self.handle.close()  # closing drops the lock
        return False


def _clear_running_markers(outdir: Path) -> None:
    from .scan_task import running_dir

    folder = running_dir(outdir)
    if folder.is_dir():
        for marker in folder.glob("*.json"):
            marker.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- progress
class Reporter:
    """Progress lines on stderr (one per finished scan: done/total, failures, time left), the summary on stdout."""

    def __init__(self, quiet: bool, stream=None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.total = self.done = self.failed = 0
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def plan(self, found: inputs.Discovery, plan: Plan, stale: int) -> None:
        parts = [f"{len(plan.todo)} to do"]
        if plan.reasons:
            parts[0] += " (" + ", ".join(f"{n} {reason}" for reason, n in plan.reasons.items()) + ")"
        if plan.done_earlier:
            parts.append(f"{plan.done_earlier} done earlier")
        if plan.failed_earlier:
            parts.append(f"{plan.failed_earlier} failed earlier (kept; --retry-failed reruns them)")
        skipped = f"; {found.skipped_files} other file(s) skipped" if found.skipped_files else ""
        self.say(f"batch: {len(found.scans)} scan(s): {', '.join(parts)}{skipped}")
        if stale:
            self.say(f"batch: removed {stale} unfinished result folder(s) of an interrupted run")

    def cluster(self, connection) -> None:
        self.say(f"batch: {connection.description}")
        self.say(
            f"batch: dashboard {connection.dashboard}"
            if connection.dashboard
            else "batch: no Dask dashboard (it needs the 'bokeh' package)"
        )

    def start(self, total: int) -> None:
        self.total, self.started = total, time.monotonic()

    def scan_done(self, status: dict) -> None:
        self.done += 1
        ok = status.get("status") == "ok"
        self.failed += 0 if ok else 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        tail = f"{self.failed} failed"
        if self.done < self.total:
            tail += f", {_fmt_seconds(left)} left"
        what = f"ok     {status['id']}" if ok else f"error  {status['id']}: {status.get('error')}"
        flags = f" [{';'.join(status['qc_flags'])}]" if ok and status.get("qc_flags") else ""
        self.say(f"[{self.done}/{self.total}] {what}{flags} ({tail})")

    def summary(self, total: int, rows: list, failed: list, cohort: Path, interrupted: bool) -> None:
        ok = sum(1 for r in rows if r["status"] == "ok")
        if not self.quiet:
            print(
                f"{total} scan(s): {ok} ok, {len(failed)} failed"
                + (f", {total - len(rows)} not done" if interrupted else "")
            )
            print(f"cohort: {cohort}")
        if failed:
            print(f"failed scans ({len(failed)}):", file=sys.stderr)
            for row in failed:
                print(f"  {row['id']}: {row['error']}", file=sys.stderr)
        if interrupted:
            print("interrupted: run the same command again to continue", file=sys.stderr)
