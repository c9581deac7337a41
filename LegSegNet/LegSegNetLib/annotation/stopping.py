"""Stopping a training run between iterations: the stop request set by SIGTERM/SIGINT (or a caller), the
signal handlers that set it while the run lasts, and the quiet exit of nnU-Net's forked helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from ..core.signals import STOP_SIGNALS


class StopRequest:
    """Set by SIGTERM/SIGINT (or by a caller, e.g. a test); the trainer checks it between iterations."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""

    def set(self, why: str = "request") -> None:
        self.signal_name = why
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGINT ask the training to stop after the current iteration (a second Ctrl-C stops at
    once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    owner = os.getpid()

    def handler(signum, _frame):
        if os.getpid() != owner:  # a forked augmentation worker: the default action, as its pool expects
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(signal.Signals(signum).name)

    previous_hook = threading.excepthook
    held_back: list = []

    def loader_thread_hook(hook_args):
        # The augmentation loader's result thread fails loudly when its workers got the stop signal too, often
        # before this process has handled it: held back, and shown only if the training did not stop.
        thread = getattr(hook_args, "thread", None)
        if thread is not None and "results_loop" in thread.name:
            if not stop.requested:
                held_back.append(hook_args)
            return
        previous_hook(hook_args)

    for sig in previous:
        signal.signal(sig, handler)
    threading.excepthook = loader_thread_hook
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if not stop.requested:
            threading.excepthook = previous_hook
            for hook_args in held_back:
                previous_hook(hook_args)


@contextlib.contextmanager
def forked_helpers_exit_quietly() -> Iterator[None]:
    """nnU-Net lists files with a forked multiprocessing pool and ends it with SIGTERM; forked helpers inherit
    this process's SIGTERM handler (the worker's raises CancelledError, printing a traceback per helper).
    Here a helper exits silently, while this process itself keeps its previous handling of SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        if os.getpid() != owner:
            os._exit(0)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(owner, signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Stopped(Exception):
    """Raised out of the training loop when it stopped on request; the checkpoint is kept."""

    def __init__(self, epoch: int, iteration: int) -> None:
        super().__init__(f"stopped at epoch {epoch}, iteration {iteration}")
        self.epoch, self.iteration = epoch, iteration
