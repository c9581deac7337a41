"""The options of `legsegnet batch` (the engine options are `segment`'s, added by the CLI)."""

from __future__ import annotations

import argparse

DEFAULT_SLURM = {"cores": 4, "memory": "16GB", "walltime": "04:00:00"}


def add_batch_options(batch: argparse.ArgumentParser, positive_int) -> None:
    batch.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files, DICOM series folders or folder trees to search (every CT series found once)",
    )
    batch.add_argument(
        "-o", "--outdir", required=True, help="output folder: scans/<id>/ per scan and cohort.csv (reuse it to resume)"
    )
    batch.add_argument(
        "--manifest",
        default=None,
        metavar="FILE.csv",
        help="CSV with a 'scan' column (path) and optional id, patient, slices (FIRST:LAST), series_uid",
    )
    batch.add_argument(
        "--dicom",
        action="store_true",
        help="also write seg.dcm (DICOM SEG) and sr.dcm (TID 1500 report) for every DICOM scan "
        "(image files get none; cohort.csv's dicom_files column says which scans have them)",
    )
    batch.add_argument("--retry-failed", action="store_true", help="rerun scans that failed in an earlier run")
    where = batch.add_argument_group("where the scans run (default: a local Dask cluster on this machine)")
    where.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="local worker processes, one scan each (default: as many as the cores and memory allow; "
        "one per GPU for nnU-Net on CUDA); with --slurm: the number of jobs",
    )
    where.add_argument(
        "--worker-memory",
        type=_memory,
        default=None,
        metavar="SIZE",
        help="memory limit per local worker, e.g. 4GB (default: the available memory shared out); "
        "a worker above it is restarted and its scan rerun once",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="run on an existing Dask cluster (workers see INPUT and OUTDIR at the same paths)",
    )
    where.add_argument("--slurm", action="store_true", help="run the workers as Slurm jobs (dask-jobqueue)")
    where.add_argument(
        "--slurm-cores",
        type=positive_int,
        default=DEFAULT_SLURM["cores"],
        metavar="N",
        help=f"CPU cores per job (default {DEFAULT_SLURM['cores']})",
    )
    where.add_argument(
        "--slurm-memory",
        type=_memory,
        default=DEFAULT_SLURM["memory"],
        metavar="SIZE",
        help=f"memory per job (default {DEFAULT_SLURM['memory']})",
    )
    where.add_argument(
        "--slurm-walltime",
        default=DEFAULT_SLURM["walltime"],
        metavar="HH:MM:SS",
        help=f"time limit per job (default {DEFAULT_SLURM['walltime']}); the batch resumes in new jobs",
    )
    where.add_argument("--slurm-partition", default=None, metavar="NAME", help="Slurm partition (queue)")
    where.add_argument("--slurm-account", default=None, metavar="NAME", help="Slurm account to charge")
    where.add_argument("--slurm-gpu", action="store_true", help="one GPU per job (--gres=gpu:1)")
    where.add_argument(
        "--slurm-directive",
        action="append",
        metavar="TEXT",
        help="extra #SBATCH directive, e.g. --slurm-directive=--constraint=avx2 (repeatable)",
    )
    where.add_argument(
        "--slurm-prologue",
        action="append",
        metavar="COMMAND",
        help="shell command run before the worker starts, e.g. 'module load cuda' (repeatable)",
    )
    where.add_argument("--slurm-log-dir", default=None, metavar="DIR", help="folder for the jobs' output files")
    where.add_argument(
        "--print-job-script",
        action="store_true",
        help="print the Slurm job script the options give, and exit without submitting",
    )


def _memory(text: str) -> str:
    from dask.utils import parse_bytes

    try:
        if parse_bytes(text) < (64 << 20):
            raise ValueError
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"wants a memory size of at least 64MB like 4GB or 500MB, not '{text}'"
        ) from None
    return text


def check_combinations(args) -> None:
    from ..core.errors import InputError

    if args.print_job_script:
        return
    if args.scheduler and args.slurm:
        raise InputError("give either --scheduler or --slurm, not both")
    if args.scheduler and (args.workers or args.worker_memory):
        raise InputError(
            "--workers and --worker-memory apply to the local cluster or --slurm; an existing scheduler "
            "(--scheduler) has the workers it has"
        )
    if args.scheduler and "://" not in args.scheduler:
        raise InputError(f"--scheduler wants an address like tcp://HOST:PORT, not '{args.scheduler}'")
    if not args.inputs and not args.manifest:
        raise InputError("give the scans: INPUT files or folders, or --manifest FILE.csv")
