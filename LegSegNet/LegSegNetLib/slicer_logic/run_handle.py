"""`RunHandle`: one run of the worker as the Slicer side sees it (segmentation, model install, device probe,
package install, training). No Qt: the widget polls `poll()` from a `qt.QTimer`; scripts and tests call
`wait()`.

States: "running", "stopping" (a graceful stop was asked; the worker is finishing, e.g. saving a
checkpoint), "succeeded", "failed", "cancelled". Two ways to end a run early:

- `stop()`: graceful, returns at once. The worker sees its stop file (worker/launcher.py), finishes the
  current step and exits; after `stopGraceSeconds` without that, the tree is killed. Training keeps its
  checkpoint this way, also inside Slicer where a launcher that forwards no signals sits in between.
- `cancel()`: hard, returns when the tree is gone. For segmentation (nothing worth keeping) and for a
  closed scene.

`progress` holds the latest worker progress (stage, done, total, seconds_left) plus `fraction` (0-1: over
the whole run when `stageSpan` gives each stage's share, else of the current stage) and `elapsed` (s).
The run's temporary folder is removed once the run has ended, after `finish` has read the outputs.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

from ..core.errors import CancelledError, InputError, LegSegNetError
from ..worker.launcher import WorkerEvent, WorkerProcess, make_workdir

STOP_GRACE_S = 120.0  # time a stopped run gets to finish its step (a training iteration and checkpoint)

Callback = Callable[["RunHandle"], None]


class RunHandle:
    def __init__(
        self,
        worker: WorkerProcess,
        *,
        what: str = "worker",
        finish: Callable[[WorkerProcess], object] | None = None,
        onProgress: Callback | None = None,
        onFinished: Callback | None = None,
        stageSpan: Mapping[str, tuple[float, float]] | None = None,
        stopGraceSeconds: float = STOP_GRACE_S,
        cancelMessage: str | None = None,
        stopMessage: str | None = None,
        textAsNotes: bool = False,
    ) -> None:
        self.worker = worker
        self.what = what
        self._finish = finish
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.stageSpan = dict(stageSpan or {})
        self.stopGraceSeconds = stopGraceSeconds
        self.cancelMessage = cancelMessage or f"{what} cancelled"
        self.stopMessage = stopMessage or f"{what} stopped"
        self.textAsNotes = textAsNotes
        self.state = "running"
        self.progress: dict = {"stage": "starting", "done": 0, "total": None, "seconds_left": None, "fraction": 0.0}
        self.notes: list[str] = []
        self.error: BaseException | None = None
        self.result = None
        self.started = time.monotonic()
        self.inputNames: dict[str, str] = {}  # temporary file name -> what to call it in messages
        self._stop_requested_at: float | None = None
        self._observed: list[tuple[object, int]] = []

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self.state in ("running", "stopping")

    @property
    def errorMessage(self) -> str:
        return "" if self.error is None else str(self.error)

    @property
    def workerPid(self) -> int | None:
        """The real worker's pid (behind PythonSlicer it is not the launcher's), once it has started."""
        return self.worker.worker_pid

    # ------------------------------------------------------------------ driving
    def poll(self) -> bool:
        """Handle new worker output; when the worker has ended, take its result. True while running."""
        if not self.running:
            return False
        for event in self.worker.poll():
            self._on_event(event)
        if self.worker.finished:
            self._complete()
        elif self._stop_requested_at is not None and time.monotonic() - self._stop_requested_at > self.stopGraceSeconds:
            self.worker.cancel()  # it did not stop in time: end the tree (training's last checkpoint remains)
            self._complete()
        return self.running

    def wait(self, timeout: float | None = None):
        """Block until done (polling), then return the result or raise the run's error. On timeout the
        run is cancelled (nothing is left running) and TimeoutError raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{self.what} did not finish within {timeout} s; cancelled")
            time.sleep(0.05)
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self) -> None:
        """Ask the worker to finish its current step and stop (returns at once; poll on)."""
        if self.state != "running":
            return
        self.state = "stopping"
        self._stop_requested_at = time.monotonic()
        self.progress = {**self.progress, "stage": "stopping"}
        self.worker.request_stop()
        if self.onProgress:
            self.onProgress(self)

    def cancel(self, message: str | None = None) -> None:
        """Kill the worker tree now and drop its output; `message` says why (default: cancelMessage)."""
        if not self.running:
            return
        self.worker.cancel()
        self.state = "cancelled"
        self.error = CancelledError(message or self.cancelMessage)
        self._notify_finished()

    # The observers below reach the handle through a weak reference: an observer belongs to the observed
    # node, and a strong reference from there would keep a forgotten handle (and its worker) alive forever.
    def watchScene(self, scene, inputVolume=None, outputs: Mapping[str, object] | None = None) -> None:
        """Cancel when the scene closes, or when `inputVolume` or a node of `outputs` (what to call it -> node)
        is removed from it: there would be nothing to read from or put results into."""
        if scene is None:
            return
        import vtk

        me = weakref.ref(self)
        watched = {} if inputVolume is None else {inputVolume.GetID(): f"the input volume '{inputVolume.GetName()}'"}
        for what, node in (outputs or {}).items():
            if node is not None:
                watched[node.GetID()] = f"{what} '{node.GetName()}'"

        def on_close(caller, event):
            handle = me()
            if handle is not None:
                handle.cancel()

        def on_removed(caller, event, node=None):
            handle = me()
            if handle is None or not watched:
                return
            if node is None:
                handle.cancel()
            elif node.GetID() in watched:
                handle.cancel(
                    f"{watched[node.GetID()]} was removed from the scene, so the {handle.what} was "
                    "cancelled and the scene left as it was"
                )

        self._observe(scene, scene.StartCloseEvent, on_close)
        on_removed.CallDataType = vtk.VTK_OBJECT  # receive the removed node
        self._observe(scene, scene.NodeRemovedEvent, on_removed)

    def watchNode(self, node, events: Sequence[int], changed: Callable[[], str | None]) -> None:
        """Cancel when one of `events` of `node` fires and `changed()` returns a reason (e.g. the input volume's
        geometry or voxels are no longer those the worker was given)."""
        me = weakref.ref(self)

        def on_event(caller, event):
            handle = me()
            if handle is not None and handle.running:
                reason = changed()
                if reason:
                    handle.cancel(reason)

        for event in events:
            self._observe(node, event, on_event)

    def _observe(self, subject, event, callback) -> None:
        self._observed.append((subject, subject.AddObserver(event, callback)))

    def __del__(self) -> None:
        try:
            self._remove_observers()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ------------------------------------------------------------------ internals
    def _on_event(self, event: WorkerEvent) -> None:
        if event.event == "progress":
            data = event.data
            stage = str(data.get("stage") or "")
            done, total = data.get("done") or 0, data.get("total")
            within = min(1.0, done / total) if total else 0.0
            if self.stageSpan:
                previous = self.progress["fraction"]
                low, high = self.stageSpan.get(stage, (previous, previous))
                fraction = max(previous, low + (high - low) * within)
            else:
                fraction = within
            self.progress = {
                "stage": "stopping" if self.state == "stopping" else stage,
                "done": done,
                "total": total,
                "seconds_left": data.get("seconds_left"),
                "fraction": fraction,
                "elapsed": time.monotonic() - self.started,
            }
        elif event.event == "note":
            self.notes.append(str(event.data.get("text", "")))
        elif event.event == "text" and self.textAsNotes and event.text:
            self.notes.append(event.text)
        else:
            return
        if self.onProgress:
            self.onProgress(self)

    def _complete(self) -> None:
        worker = self.worker
        if worker.succeeded:
            try:
                self.result = self._finish(worker) if self._finish else (worker.result or {}).get("value")
                self.state = "succeeded"
                self.progress = {**self.progress, "fraction": 1.0, "seconds_left": 0.0}
            except BaseException as exc:  # noqa: BLE001 - reported to the caller, scene already restored
                self.error, self.state = exc, "failed"
        elif self._stop_requested_at is not None:
            self.state = "cancelled"
            self.error = CancelledError(worker.error_message or self.stopMessage)
        else:
            code = worker.error_exit_code or worker.returncode
            message = worker.failure_message(self.what)
            for temporary, meant in self.inputNames.items():  # the user knows the volume, not our temp file
                message = message.replace(temporary, meant)
            self.state = "failed"
            self.error = (InputError if code == InputError.exit_code else LegSegNetError)(message)
        worker.cleanup()
        self._notify_finished()

    def _remove_observers(self) -> None:
        for subject, tag in self._observed:
            subject.RemoveObserver(tag)
        self._observed = []

    def _notify_finished(self) -> None:
        self._remove_observers()
        if self.onFinished:
            self.onFinished(self)


def start_run(
    launch: Callable[[Sequence[str], Path], WorkerProcess],
    command: Sequence[str],
    workdir: Path | None = None,
    **handleOptions,
) -> RunHandle:
    """Launch `command` in `workdir` (a new temporary folder when None) and return its handle at once; the
    folder is removed if the launch fails."""
    workdir = workdir if workdir is not None else make_workdir()
    try:
        worker = launch(command, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return RunHandle(worker, **handleOptions)


def default_python() -> list[str]:
    """The interpreter that runs the worker: Slicer's `PythonSlicer` inside Slicer, else this one."""
    try:
        import slicer

        inside_slicer = hasattr(slicer, "app") and slicer.app is not None
    except ImportError:
        inside_slicer = False
    if inside_slicer:
        # Slicer puts PythonSlicer on PATH and sets sys.executable to it; the folder check covers both.
        candidates = [shutil.which("PythonSlicer"), str(Path(sys.executable).with_name("PythonSlicer"))]
        if os.name == "nt":
            candidates.append(str(Path(sys.executable).with_name("PythonSlicer.exe")))
        for candidate in candidates:
            if candidate and Path(candidate).is_file():
                return [candidate]
        raise RuntimeError("Slicer's PythonSlicer executable was not found next to Slicer; reinstall Slicer")
    return [sys.executable]
