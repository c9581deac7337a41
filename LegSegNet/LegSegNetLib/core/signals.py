"""The one signal policy: SIGINT, SIGTERM and SIGHUP all stop a run the way Ctrl-C does.

    with stop_signals_raise(): ...                 the CLI: a stop signal raises `Stopped` (a KeyboardInterrupt)
    with stop_signals_raise(CancelledError): ...   the worker: the same, as its own exception
    with stop_signals_deferred(): ...              steps that must not be cut in half (swapping a result set in)

Python's default for SIGTERM and SIGHUP is to die on the spot, so no `finally` runs and staging folders stay
behind. Raising instead unwinds the stack: every clean-up runs, and the run ends with one `error:` line.
Training installs its own handler for the same signals (stop after the current iteration). SIGKILL cannot be
caught; what a killed run leaves is swept by the next run (core/output_set.py, the model store).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

# SIGHUP: the terminal or the ssh session closed. Windows has no SIGHUP.
STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, so whatever handles Ctrl-C handles it too."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal_name(signum)
        super().__init__(f"interrupted ({self.signal_name})")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


_deferring = 0
_pending: list[int] = []
_raise: Callable[[int], BaseException] = Stopped
_owner = os.getpid()  # the process whose handlers these are


def _on_stop_signal(signum, _frame) -> None:
    if os.getpid() != _owner:  # a forked helper (a pool worker) inherited this handler: behave as Python's default
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _deferring:
        _pending.append(signum)  # raised when the deferred block ends
        return
    raise _raise(signum)


@contextlib.contextmanager
def stop_signals_raise(make_exception: Callable[[int], BaseException] = Stopped) -> Iterator[None]:
    """Within the block a stop signal raises `make_exception(signum)` in the main thread; the handlers in force
    before come back after it. Outside the main thread (where Python cannot set handlers) it does nothing."""
    global _raise, _owner
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    previous_raise, _raise, _owner = _raise, make_exception, os.getpid()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _raise = previous_raise


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Run the block to its end; a stop signal that arrives meanwhile takes effect right after it.
    Only our handler defers (the one `stop_signals_raise` installs); others act as they always do."""
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            signum = _pending[0]
            _pending.clear()
            raise _raise(signum)
