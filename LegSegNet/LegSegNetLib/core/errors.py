"""Exceptions that carry the command line's exit status.

Every failure a user can cause (bad file, bad range, bad model) is an `InputError` (exit 2); anything
else that goes wrong is a `LegSegNetError` (exit 1). The CLI and the worker turn both into one
`error: ...` line; the message must say what is wrong and what to do.
"""

from __future__ import annotations


class LegSegNetError(Exception):
    """A failure that is not the user's input: exit status 1."""

    exit_code = 1


class InputError(LegSegNetError):
    """A bad input file, argument, range or model: exit status 2."""

    exit_code = 2


class CancelledError(LegSegNetError):
    """The run was cancelled (SIGTERM, Slicer's Cancel button, parent gone)."""

    exit_code = 1


def error_exit_code(exc: BaseException) -> tuple[int, str]:
    """The exit status and the message for a failure (the CLI, the worker and the batch report it alike)."""
    from .signals import Stopped  # a stop signal's KeyboardInterrupt says which signal

    if isinstance(exc, LegSegNetError):
        return exc.exit_code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 1, str(exc) if isinstance(exc, Stopped) else "interrupted"
    if isinstance(exc, MemoryError):
        return 1, "not enough memory; close other programs, or analyse fewer slices with --slices FIRST:LAST"
    return 1, f"internal error ({type(exc).__name__}: {exc}); run again with --debug and report the traceback"


def one_line(text: str) -> str:
    """A message on one line (error: lines, the batch's error column)."""
    return " ".join(str(text).split())
