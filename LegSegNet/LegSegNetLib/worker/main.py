"""The worker process that Slicer (and anyone who wants machine-readable progress) launches.

    python -m LegSegNetLib.worker segment SLAB.nrrd -o OUTDIR [same options as `legsegnet segment`]
    python -m LegSegNetLib.worker quantify CT LABELS -o OUTDIR

It runs the same pipeline as the CLI, but reports on stdout with one JSON object per line:

    {"event": "progress", "stage": "segmenting", "done": 12, "total": 40, "seconds_left": 3.1}
    {"event": "note", "text": "engine: threshold"}
    {"event": "result", "outdir": "...", "labels": ".../labels.nii.gz", "metrics": ".../metrics.json"}
    {"event": "error", "message": "...", "exit_code": 2}

Exit status as the CLI (0, 1, 2). SIGTERM, SIGINT or the death of the parent process stop it promptly:
a CancelledError unwinds the pipeline, whose atomic report writer leaves nothing half-written.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Sequence

from ..cli import _one_line, build_parser, error_exit_code, join_option_values, run_command
from ..engines import use_passive_openmp_threads
from ..core.errors import CancelledError
from ..core.progress import JsonLinesProgress

PARENT_POLL_S = 1.0


def _raise_cancelled(signum, _frame):
    raise CancelledError(f"cancelled (signal {signum})")


def _die_with_parent() -> None:
    """Stop when the launching process disappears, so a crashed Slicer leaves no worker behind."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGTERM when the parent exits: no polling needed
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
    if parent == 1:  # already orphaned
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while True:
            threading.Event().wait(PARENT_POLL_S)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    use_passive_openmp_threads()
    argv = join_option_values(list(sys.argv[1:] if argv is None else argv))
    progress = JsonLinesProgress(sys.stdout)
    signal.signal(signal.SIGTERM, _raise_cancelled)
    signal.signal(signal.SIGINT, _raise_cancelled)
    _die_with_parent()
    try:
        args = build_parser("legsegnet-worker").parse_args(argv)
        result = run_command(args, progress)
        if getattr(args, "outdir", None):
            outdir = Path(args.outdir)
            progress.result(
                outdir=str(outdir), labels=str(outdir / "labels.nii.gz"), metrics=str(outdir / "metrics.json")
            )
        else:  # `models ...` has no output folder: report what the command returned
            progress.result(value=result)
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one error line and event
        code, message = error_exit_code(exc)
        if "--debug" in argv:
            traceback.print_exc()
        message = _one_line(message)
        try:
            progress.error(message, code)
        except (BrokenPipeError, OSError):  # the reader is gone; the stderr line still says why
            pass
        print(f"error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
