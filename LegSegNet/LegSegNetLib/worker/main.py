"""The worker process that Slicer (and anyone who wants machine-readable progress) launches.

    python -m LegSegNetLib.worker segment SLAB.nrrd -o OUTDIR [same options as `legsegnet segment`]
    python -m LegSegNetLib.worker quantify CT LABELS -o OUTDIR

It runs the same pipeline as the CLI, but reports on stdout with one JSON object per line:

    {"event": "progress", "stage": "segmenting", "done": 12, "total": 40, "seconds_left": 3.1}
    {"event": "note", "text": "engine: threshold"}
    {"event": "result", "outdir": "...", "labels": ".../labels.nii.gz", "metrics": ".../metrics.json"}
    {"event": "error", "message": "...", "exit_code": 2}

Exit status as the CLI (0, 1, 2). The first event is `{"event": "started", "pid": ...}`, the real
interpreter's pid (inside Slicer a launcher, PythonSlicer, sits between the reader and this process).

Stopping: when `LEGSEGNET_STOP_FILE` names a file, the worker polls for it and, once it exists, stops
gracefully as on SIGTERM: segmentation unwinds with a CancelledError (the atomic report writer leaves
nothing half-written), training stops after the current iteration and keeps its checkpoint. The file
needs no signal to pass through a launcher. SIGTERM, SIGINT, SIGHUP, the death of the parent process and
a closed output pipe (nobody reads any more) stop it the same way.

Two commands exist only here, for the Slicer module: `devices` (engines.devices.probe of this
interpreter's PyTorch) and `install-packages STEPS.json` (worker/install.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..cli import build_parser, join_option_values, run_command
from ..core.errors import CancelledError, error_exit_code
from ..core.errors import one_line as _one_line
from ..core.progress import JsonLinesProgress
from ..core.signals import signal_name, stop_signals_raise
from ..engines import use_passive_openmp_threads
from .launcher import STOP_FILE_ENV

PARENT_POLL_S = 1.0
STOP_FILE_POLL_S = 0.2


def _cancelled(signum: int) -> CancelledError:
    return CancelledError(f"cancelled ({signal_name(signum)})")


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


_stop_once = threading.Lock()


def request_graceful_stop() -> None:
    """Stop as SIGTERM would (the handlers in force decide how: CancelledError, or training's stop after
    the iteration). raise_signal delivers it to this process on every platform; once is enough."""
    if _stop_once.acquire(blocking=False):
        signal.raise_signal(signal.SIGTERM)


def _watch_stop_file() -> None:
    path = os.environ.get(STOP_FILE_ENV)
    if not path:
        return

    def watch() -> None:
        while not os.path.exists(path):
            threading.Event().wait(STOP_FILE_POLL_S)
        request_graceful_stop()

    threading.Thread(target=watch, name="stop-file-watch", daemon=True).start()


def _worker_only_command(argv: list[str], progress: JsonLinesProgress) -> bool:
    """Run `devices` or `install-packages`; False for every command the CLI parser knows."""
    if argv[:1] == ["devices"]:
        from ..engines import devices

        progress.result(value=devices.probe())
        return True
    if argv[:1] == ["install-packages"] and len(argv) == 2:
        from . import install

        progress.result(value=install.run_steps(argv[1], progress))
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    # SIGINT, SIGTERM and SIGHUP cancel the run as the CLI's Ctrl-C does (core/signals.py): clean-ups run
    with stop_signals_raise(_cancelled):
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    use_passive_openmp_threads()
    argv = join_option_values(list(sys.argv[1:] if argv is None else argv))
    progress = JsonLinesProgress(sys.stdout, on_broken_pipe=request_graceful_stop)
    progress.started(os.getpid())
    _die_with_parent()
    _watch_stop_file()
    try:
        if _worker_only_command(argv, progress):
            return 0
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
