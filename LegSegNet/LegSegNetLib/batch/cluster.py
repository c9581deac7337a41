"""The Dask cluster a batch runs on: an embedded local cluster, an existing scheduler, or Slurm jobs.

Every worker runs one scan at a time: workers have one thread and a resource `scan=1` that each scan task
needs, and the batch submits no more scans than there are live workers (runner.py), so no scan waits on a busy
worker. A worker's memory limit therefore bounds one scan, and a worker that dies takes only its own scan with
it. A scan whose worker dies (a crash, or the nanny's kill at 95 % of the memory limit) is rerun once by the
batch on a restarted worker and then marked failed: the schedulers the batch starts itself give up on the
first death (`allowed-failures` 0) and leave the one rerun to the batch. An existing scheduler keeps its own
setting (Dask's default reruns a task 3 times) and the batch adds no rerun of its own.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable

from distributed.diagnostics.plugin import WorkerPlugin

from ..core.errors import InputError
from ..scan.memory import available_memory_bytes

# Memory one worker needs for a 350 x 512 x 512 scan (measured peaks: ~0.8 GB threshold, ~2.5 GB nnU-Net on
# the CPU), with headroom; used to choose the default number of local workers.
WORKER_MEMORY_BYTES = {"threshold": 2 << 30, "nnunet": 4 << 30}
SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": 0}  # the batch itself reruns a lost scan once
# The local workers' Dask settings (the nannies hand the config they were made under to their workers): no
# statistical profiler sampling every thread's stack every 10 ms beside the scan (nobody reads its profiles;
# on a core shared by two workers it only takes time from the scans)
LOCAL_WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
# imported by each local worker as it starts (Dask's `preload`): what a scan needs, so the first scan does not
# wait for it
WORKER_PRELOAD = f"{__package__}.preload"
SCAN_RESOURCE = {"scan": 1}  # what a worker offers and a scan task needs: one scan per worker at a time
CONNECT_TIMEOUT = "10s"  # connection attempts are retried until then (a scheduler still starting)


@dataclass
class Connection:
    client: object  # distributed.Client
    description: str  # for the user: what runs where
    dashboard: str | None
    close: Callable[[], None]
    memory_limit: str | None = None  # per worker, when the batch set it
    task_resources: dict | None = None  # what each scan task asks for (None: the workers offer no `scan`)
    rerun_lost: bool = True  # the batch reruns a scan whose worker died once (False: the scheduler's own setting)


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def dashboard_available() -> bool:
    """Dask's dashboard needs bokeh; without it Dask serves no dashboard, so none is announced."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def default_workers(engine: str, device: str) -> tuple[int, int]:
    """(workers, GPUs to share among them): one per GPU for nnU-Net on CUDA, else as many as the cores and
    the memory allow."""
    gpus = _cuda_devices() if engine == "nnunet" and device in ("auto", "cuda") else 0
    if gpus:
        return gpus, gpus
    cores = cpu_cores()
    memory = available_memory_bytes() or (8 << 30)
    return max(1, min(cores, memory // WORKER_MEMORY_BYTES[engine])), 0


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def connect(args, engine: str) -> Connection:
    """A client for the cluster the options name (--scheduler, --slurm, or local --workers)."""
    _quiet_dask_logs(getattr(args, "debug", False))
    if args.scheduler:
        return _existing(args.scheduler)
    if args.slurm:
        return _slurm(args)
    return _local(args, engine)


def _local(args, engine: str) -> Connection:
    import dask
    from distributed import Client, LocalCluster

    workers, gpus = default_workers(engine, args.device)
    if args.workers:
        workers = args.workers
    cores = cpu_cores()
    memory = args.worker_memory or _memory_share(workers)
    env = {
        "LEGSEGNET_CPU_THREADS": str(max(1, cores // workers)),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    with dask.config.set({**SCHEDULER_CONFIG, **LOCAL_WORKER_CONFIG}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory,
            dashboard_address=":0",  # a free port: never clash with another cluster on 8787 (its HTTP server runs without bokeh too)
            silence_logs=logging.CRITICAL,
            env=env,
            resources=SCAN_RESOURCE,
            preload=[WORKER_PRELOAD],
        )
        client = Client(cluster)
    if gpus > 1:
        client.register_plugin(PinGpu(gpus), name="legsegnet-pin-gpu")
    description = f"local cluster: {workers} worker process(es), one scan each, memory limit {_gb(memory)} per worker"
    if gpus:
        description += f", {gpus} GPU(s)"

    def close() -> None:
        client.close()
        cluster.close()

    dashboard = _dashboard(client) if dashboard_available() else None
    return Connection(client, description, dashboard, close, memory_limit=_gb(memory), task_resources=SCAN_RESOURCE)


def _existing(address: str) -> Connection:
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(
            f"cannot reach the Dask scheduler at {address} ({exc}); start it with 'dask scheduler' and give its "
            "address as tcp://HOST:PORT"
        ) from exc
    workers = client.scheduler_info().get("workers", {})
    # scans ask for the `scan` resource only when every worker offers it: a task asking for a resource that no
    # worker has would wait forever
    offering = bool(workers) and all((w.get("resources") or {}).get("scan", 0) >= 1 for w in workers.values())
    description = f"Dask scheduler {address}: {len(workers)} worker(s) now"
    if not offering:
        threads = max((w.get("nthreads", 1) for w in workers.values()), default=1)
        description += (
            f"; without a 'scan' resource on every worker, a worker may take up to {threads} scan(s) "
            "at once (start workers with: dask worker ADDRESS --nthreads 1 --resources scan=1)"
        )
    return Connection(
        client,
        description,
        _dashboard(client),
        client.close,
        task_resources=SCAN_RESOURCE if offering else None,
        rerun_lost=False,
    )


def _slurm(args) -> Connection:
    import dask
    from distributed import Client

    with dask.config.set(SCHEDULER_CONFIG):
        cluster = make_slurm_cluster(args)
        jobs = args.workers or 1
        # adapt, not scale: it keeps `jobs` jobs running, submitting a new one when a job ends (walltime, node failure)
        cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
        client = Client(cluster)
    description = (
        f"Slurm: {jobs} job(s) of {args.slurm_cores} core(s), {args.slurm_memory}"
        f"{', 1 GPU' if args.slurm_gpu else ''}, one worker and one scan each"
    )

    def close() -> None:
        client.close()
        cluster.close()

    return Connection(
        client,
        description,
        _dashboard(client) if dashboard_available() else None,
        close,
        memory_limit=args.slurm_memory,
        task_resources=SCAN_RESOURCE,
    )


def make_slurm_cluster(args):
    """dask-jobqueue's SLURMCluster for the --slurm-* options (one worker of one thread per job; the job's
    cores go to that scan's engine through LEGSEGNET_CPU_THREADS)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise InputError("--slurm needs dask-jobqueue: pip install 'legsegnet[batch]'") from exc
    directives = ["--gres=gpu:1"] if args.slurm_gpu else []
    directives += list(args.slurm_directive or [])
    prologue = [f"export LEGSEGNET_CPU_THREADS={args.slurm_cores}", "export OMP_WAIT_POLICY=PASSIVE"]
    prologue += list(args.slurm_prologue or [])
    return SLURMCluster(
        cores=1,
        processes=1,
        job_cpu=args.slurm_cores,
        memory=args.slurm_memory,
        walltime=args.slurm_walltime,
        queue=args.slurm_partition,
        account=args.slurm_account,
        job_name="legsegnet",
        job_extra_directives=directives,
        job_script_prologue=prologue,
        python=sys.executable,
        worker_extra_args=["--resources", "scan=1"],
        log_directory=args.slurm_log_dir,
        silence_logs="critical",
        dashboard_address=":0" if dashboard_available() else None,
    )


class PinGpu(WorkerPlugin):
    """Worker plugin: each local worker sees one GPU (worker i gets GPU i mod n), set before CUDA starts."""

    def __init__(self, gpus: int) -> None:
        self.gpus = gpus

    def setup(self, worker) -> None:
        try:
            index = int(worker.name)
        except (TypeError, ValueError):
            index = abs(hash(worker.name))
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % self.gpus)


def _memory_share(workers: int) -> int:
    memory = available_memory_bytes() or (8 << 30)
    return max(256 << 20, int(memory * 0.9) // workers)


def _dashboard(client) -> str | None:
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 - a dashboard is a nicety
        return None
    return client.dashboard_link if "dashboard" in services else None


def _gb(memory) -> str:
    if isinstance(memory, str):
        return memory
    return f"{memory / (1 << 30):.1f} GiB"


def _quiet_dask_logs(debug: bool) -> None:
    # the batch reports restarts and failures itself, per scan; Dask's own warnings would bury them
    if not debug:
        for name in ("distributed", "dask_jobqueue", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
