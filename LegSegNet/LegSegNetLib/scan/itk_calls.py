"""Calling SimpleITK from the readers: quietly (its native chatter kept off the terminal), with a short
reason when it fails, and the pixel types the readers accept."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import SimpleITK as sitk

T = TypeVar("T")
BYTES_PER_COMPONENT = {
    sitk.sitkInt8: 1,
    sitk.sitkUInt8: 1,
    sitk.sitkInt16: 2,
    sitk.sitkUInt16: 2,
    sitk.sitkInt32: 4,
    sitk.sitkUInt32: 4,
    sitk.sitkInt64: 8,
    sitk.sitkUInt64: 8,
    sitk.sitkFloat32: 4,
    sitk.sitkFloat64: 8,
}


_native_hooks = threading.local()  # this thread's callback for `before_native_calls`


@contextmanager
def before_native_calls(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, `callback` runs on this thread before each ITK call of the readers (`call_quietly`).

    SimpleITK releases the GIL in its calls, so that is when work on another thread stops slowing a read down:
    a DICOM folder's headers are parsed in Python first, its voxels then read in native code.
    """
    previous = getattr(_native_hooks, "callback", None)
    _native_hooks.callback = callback
    try:
        yield
    finally:
        _native_hooks.callback = previous


def call_quietly(call: Callable[[], T]) -> tuple[T | None, RuntimeError | None, str]:
    """Run an ITK call with the native libraries' chatter kept off the terminal.

    ITK, GDCM and MetaIO write warnings straight to file descriptor 2, but the CLI promises a single
    `error:` line; so fd 2 points at a temporary file meanwhile. Returns (result, ITK error, chatter).
    """
    hook = getattr(_native_hooks, "callback", None)
    if hook is not None:
        hook()
    warnings_were_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    result, error, chatter = None, None, ""
    try:
        saved_fd = os.dup(2)
    except OSError:  # no stderr at all: nothing to protect
        saved_fd = None
    try:
        with tempfile.TemporaryFile() as sink:
            if saved_fd is not None:
                _flush_python_stderr()
                os.dup2(sink.fileno(), 2)
            try:
                result = call()
            except RuntimeError as exc:
                error = exc
            finally:
                if saved_fd is not None:
                    os.dup2(saved_fd, 2)
                sink.seek(0)
                chatter = sink.read(4096).decode("utf-8", "replace")
    finally:
        if saved_fd is not None:
            os.close(saved_fd)
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_shown)
    return result, error, chatter


def _flush_python_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass


def itk_reason(exc: BaseException, chatter: str) -> str:
    """A short reason: the ITK exception's last meaningful line, plus the first line the library printed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[-1] if lines else ""
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        if prefix in reason:
            reason = reason.split(prefix, 1)[1].strip()
    reason = (
        reason.split("): ", 1)[-1] if reason.startswith(("GDCMImageIO(", "NiftiImageIO(", "MetaImageIO(")) else reason
    )
    said = next((ln.strip() for ln in chatter.splitlines() if ln.strip()), "")
    if said and said not in reason:
        reason = f"{reason}; {said}" if reason else said
    return reason[:200] or "unknown reason"


def as_one_slice(image: sitk.Image) -> sitk.Image:
    """A 2D image as a 3D volume of one slice (unit spacing along the new axis)."""
    return sitk.JoinSeries([image])
