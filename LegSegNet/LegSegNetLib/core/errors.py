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
