"""Run the LegSegNet worker (`python -m LegSegNetLib.worker ...`) as a child process, without blocking.

Slicer's GUI thread must never wait on the segmentation, so the worker runs in its own process
(inside Slicer: `PythonSlicer`, a launcher that starts the real interpreter as its child and forwards
no signals, so there is a process *tree*). This module builds every worker command line, starts the
worker in its own process group / session, reads its JSON lines on a background thread (the pipe is
drained continuously, so a chatty child never blocks on a full pipe), and lets the caller poll.

Stopping, in two kinds:
- graceful (`request_stop`): a stop file in the run's folder, which the worker polls. It needs no
  signal to pass through the launcher. The worker reports its own pid in its first event
  (`{"event": "started", "pid": ...}`), so a launcher that has died while the real worker still
  finishes (saving a checkpoint) does not end the run: the caller waits for that pid.
- hard (`cancel`): SIGTERM to the group, the launcher's descendants and the real worker, then SIGKILL
  to whatever is left. The temporary folder is removed whatever happens.

Nothing here imports Qt or MRML.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

LIB_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds LegSegNetLib/
TERMINATE_GRACE_S = 3.0
EOF_GRACE_S = 2.0  # how long a pipe may stay open after the worker itself exited
STOP_FILE_ENV = "LEGSEGNET_STOP_FILE"  # the worker stops gracefully once this file exists
STOP_FILE_NAME = "stop-requested"
# Windows: no console window pops up for the worker or the helpers run here (not testable on this
# project's Linux CI; the flag is Windows-only and documented by Python's subprocess module).
NO_WINDOW: dict = {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else {}


def worker_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the worker: LegSegNetLib importable, unbuffered output, no user site noise."""
    env = dict(os.environ if base is None else base)
    paths = [str(LIB_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


# ---------------------------------------------------------------------- events
@dataclass
class WorkerEvent:
    """One line of worker output: a parsed JSON event, or plain text (`event == "text"`)."""

    event: str
    data: dict = field(default_factory=dict)
    text: str = ""


def parse_line(line: str) -> WorkerEvent:
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            return WorkerEvent("text", text=stripped)
        if isinstance(data, dict) and isinstance(data.get("event"), str):
            return WorkerEvent(data["event"], data=data, text=stripped)
    return WorkerEvent("text", text=stripped)


# ---------------------------------------------------------------------- process tree
def _children_linux(pid: int) -> list[int]:
    """Direct children of `pid` from /proc (Linux only; empty elsewhere)."""
    children: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    if not task_dir.is_dir():
        return children
    for task in task_dir.iterdir():
        try:
            children.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return children


def _children_ps(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(p) for p in out.split() if p.strip().isdigit()]


def descendants(pid: int) -> list[int]:
    """All descendants of `pid` (children first), best effort."""
    lister = _children_linux if Path("/proc/self/task").is_dir() else _children_ps
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child in lister(parent):
            if child not in found:
                found.append(child)
                frontier.append(child)
    return found


def is_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    if os.name == "nt":
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}"], capture_output=True, text=True, **NO_WINDOW).stdout
        return str(pid) in out
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state not in ("Z", "X")
    return True


def kill_tree(process: subprocess.Popen, grace_s: float = TERMINATE_GRACE_S, also: Sequence[int] = ()) -> None:
    """Stop `process`, everything it started and the processes `also` (e.g. the real worker behind a
    launcher, which leaves the tree when the launcher dies first): polite signal first, then force."""
    if os.name == "nt":
        for pid in [process.pid, *also]:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, **NO_WINDOW)
        process.wait(timeout=grace_s + 5)
        return
    extra = [p for p in also if p and p != process.pid and is_alive(p)]
    tree = descendants(process.pid) if process.poll() is None else []
    for pid in extra:
        tree += [pid] + descendants(pid)
    tree = list(dict.fromkeys(tree))
    # WorkerProcess starts every worker with start_new_session: its process group id is its pid
    _signal_group(process.pid, signal.SIGTERM)
    if process.returncode is None:
        _signal_pids([process.pid], signal.SIGTERM)
    _signal_pids(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()
        tree = [p for p in tree if is_alive(p)]
        if process.returncode is not None and not tree:
            break
        time.sleep(0.05)
    # anything still there (or started meanwhile) gets SIGKILL, the group and stragglers alike
    tree = list(dict.fromkeys(tree + (descendants(process.pid) if process.returncode is None else [])))
    _signal_group(process.pid, signal.SIGKILL)
    if process.returncode is None:
        _signal_pids([process.pid], signal.SIGKILL)
    _signal_pids(tree, signal.SIGKILL)
    process.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# ---------------------------------------------------------------------- the running worker
class WorkerProcess:
    """A started worker: poll() or wait() for its events, cancel() it, cleanup() its temporary folder.

    `command` is the full argument list (interpreter included). `workdir` (usually a temporary folder
    made by `make_workdir`) is deleted by `cleanup()` once the process has ended: the caller reads the
    outputs first, then cleans up. `cancel()` cleans up by itself, and so do garbage collection and the
    interpreter's exit as a last resort (a worker nobody waits for is ended, its folder removed). With a workdir, `request_stop()` asks the worker to stop gracefully through a stop file
    there (see the module docstring).
    """

    def __init__(
        self,
        command: Sequence[str],
        workdir: str | Path | None = None,
        env: dict[str, str] | None = None,
        keep_workdir: bool = False,
    ) -> None:
        self.command = [str(c) for c in command]
        self.workdir = Path(workdir) if workdir is not None else None
        self.keep_workdir = keep_workdir
        self.events: queue.Queue[WorkerEvent | None] = queue.Queue()
        self.log: list[str] = []  # every line, for the error log
        self.error_message: str | None = None
        self.error_exit_code: int | None = None
        self.result: dict | None = None
        self.cancelled = False
        self.worker_pid: int | None = None  # the real interpreter's pid, from its "started" event
        self.stop_requested = False
        self.started_at = time.monotonic()
        env = dict(env if env is not None else worker_environment())
        self.stop_file = self.workdir / STOP_FILE_NAME if self.workdir is not None else None
        if self.stop_file is not None:
            env[STOP_FILE_ENV] = str(self.stop_file)
        kwargs: dict = {}
        if os.name == "nt":  # CREATE_NO_WINDOW: see NO_WINDOW
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | NO_WINDOW["creationflags"]
        else:
            kwargs["start_new_session"] = True  # own process group: cancel reaches the whole tree
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        # the reader holds the pipe and the queue, not this object: a worker nobody refers to any more is
        # collected (and ended by __del__) even while its reader still runs
        self._reader = threading.Thread(
            target=_read_lines, args=(self.process.stdout, self.events), name="legsegnet-worker-reader", daemon=True
        )
        self._finished = False
        self._eof = False
        self._exited_at: float | None = None
        self._reader.start()
        _LIVE_WORKERS.add(self)

    # --- state
    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def finished(self) -> bool:
        """True once the process has exited and all its output has been read by `poll`."""
        return self._finished

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def succeeded(self) -> bool:
        return self._finished and not self.cancelled and self.process.returncode == 0

    def poll(self) -> list[WorkerEvent]:
        """New events since the last call (never blocks); `finished` turns True after the last one."""
        new: list[WorkerEvent] = []
        while not self._finished:
            if self._eof:
                self._finish_after_eof()
                break
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                self._check_exited_without_eof()
                break
            if item is None:
                self._eof = True
                continue
            self._remember(item)
            new.append(item)
        return new

    def _finish_after_eof(self) -> None:
        """All output is read. A launcher that relays output may have died while the real worker still
        finishes (it ignores the broken pipe): finished only once that worker is gone too."""
        if self.worker_alive:
            return
        self.process.wait()
        self._finished = True

    def wait(self, timeout: float | None = None, on_event: Callable[[WorkerEvent], None] | None = None) -> int:
        """Block until the worker ends (or `timeout` s pass: TimeoutError); returns the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not finish within {timeout} s")
            for item in self.poll():
                if on_event is not None:
                    on_event(item)
            if not self._finished:
                time.sleep(0.05)
        return int(self.process.returncode)

    @property
    def worker_alive(self) -> bool:
        """True while the real worker runs (known from its "started" event), even if its launcher died."""
        return self.worker_pid is not None and self.worker_pid != self.process.pid and is_alive(self.worker_pid)

    def _check_exited_without_eof(self) -> None:
        """The process exited but something still holds its output pipe. The real worker behind a launcher
        that died (e.g. on SIGTERM, which it does not forward) may still be finishing gracefully: wait for it
        (the caller bounds that wait). Any other leftover child is ended."""
        if self.process.poll() is None:
            return
        if self.worker_alive:
            self._exited_at = None
            return
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        elif time.monotonic() - self._exited_at > EOF_GRACE_S:
            if os.name != "nt":
                _signal_group(self.process.pid, signal.SIGKILL)  # the session's group outlives its leader
            self._reader.join(timeout=5)
            while True:  # keep whatever the reader still queued
                try:
                    item = self.events.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._remember(item)
            self._finished = True

    def _remember(self, item: WorkerEvent) -> None:
        self.log.append(item.text)
        if item.event == "started" and isinstance(item.data.get("pid"), int):
            self.worker_pid = item.data["pid"]
        elif item.event == "error":
            self.error_message = str(item.data.get("message", "")).strip() or self.error_message
            self.error_exit_code = item.data.get("exit_code")
        elif item.event == "result":
            self.result = item.data
        elif item.event == "text" and item.text.startswith("error:") and self.error_message is None:
            self.error_message = item.text[len("error:") :].strip()

    def failure_message(self, what: str = "worker") -> str:
        """The worker's own `error:` line, or the end of its output when it died without one."""
        if self.cancelled:
            return "cancelled"
        if self.error_message:
            return self.error_message
        tail = " | ".join(line for line in self.log[-5:] if line)
        code = self.process.returncode
        return f"the {what} process stopped unexpectedly (exit status {code}){': ' + tail if tail else ''}"

    # --- stopping
    def request_stop(self) -> None:
        """Ask the worker to stop gracefully (returns at once). Through the stop file when there is a run
        folder; without one, SIGTERM to the real worker (or the process) is the only way."""
        self.stop_requested = True
        if self.stop_file is not None and self.workdir is not None and self.workdir.is_dir():
            self.stop_file.write_text("stop\n", encoding="utf-8")
        elif os.name != "nt":
            _signal_pids([self.worker_pid or self.process.pid], signal.SIGTERM)

    def cancel(self) -> None:
        """Kill the worker tree (if still running), drop its output and remove the temporary folder. A worker that
        has already ended and been read keeps its outcome (so a test's or a caller's `finally` may always call it)."""
        if self._finished and self.process.poll() is not None and not self.worker_alive:
            self.cleanup()
            return
        self.cancelled = True
        if self.process.poll() is None or self.worker_alive:
            kill_tree(self.process, also=[self.worker_pid] if self.worker_pid else [])
        self._reader.join(timeout=5)
        self._finished = True
        self.cleanup()

    def cleanup(self) -> None:
        if self.process.returncode is None or self.worker_alive:
            return  # never delete files under a running worker
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        _LIVE_WORKERS.discard(self)

    def __del__(self) -> None:  # last resort: never leave a worker behind
        try:
            if self.process.poll() is None or self.worker_alive:
                kill_tree(self.process, grace_s=0.5, also=[self.worker_pid] if self.worker_pid else [])
            self.cleanup()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _read_lines(stream, events: queue.Queue[WorkerEvent | None]) -> None:
    """The reader thread: every line of the worker's output as an event, then None for the end."""
    for line in stream:
        events.put(parse_line(line))
    events.put(None)


# Every worker not yet ended. A script that starts a run and exits without waiting for it (or Slicer closing)
# must not leave the worker running, or its run folder behind: at interpreter exit each is cancelled.
_LIVE_WORKERS: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()


@atexit.register
def _end_workers_at_exit() -> None:
    for worker in list(_LIVE_WORKERS):
        try:
            worker.cancel()
        except Exception:  # noqa: BLE001 - the interpreter is going away; end the others still
            pass


def make_workdir(prefix: str = "legsegnet-") -> Path:
    """A fresh private temporary folder for one run."""
    return Path(tempfile.mkdtemp(prefix=prefix))


# ---------------------------------------------------------------------- command lines (the one place)
def worker_command(python: Sequence[str], *arguments) -> list[str]:
    """`python -m LegSegNetLib.worker ARGUMENTS...`: every worker command line starts here."""
    return [*python, "-m", "LegSegNetLib.worker", *(str(a) for a in arguments)]


def train_command(
    python: Sequence[str],
    dataset: str | Path,
    *,
    from_model: str | None = None,
    epochs: int | None = None,
    device: str = "auto",
    name: str | None = None,
    iterations: int | None = None,
    resume: bool = False,
    batch_size: int | None = None,
) -> list[str]:
    """The worker's command line for `train` (same options as `legsegnet train`)."""
    command = worker_command(python, "train", dataset, "--device", device)
    if from_model:
        command += ["--from", str(from_model)]
    if epochs:
        command += ["--epochs", str(int(epochs))]
    if iterations:
        command += ["--iterations", str(int(iterations))]
    if batch_size:
        command += ["--batch-size", str(int(batch_size))]
    if name:
        command += ["--name", name]
    if resume:
        command.append("--resume")
    return command


def models_command(python: Sequence[str], *arguments) -> list[str]:
    """`models list|install|remove|default ...` in the worker (its interpreter has torch to verify models)."""
    return worker_command(python, "models", *arguments)


def devices_command(python: Sequence[str]) -> list[str]:
    """The worker-only `devices` command: which accelerators the worker's PyTorch sees (engines.devices)."""
    return worker_command(python, "devices")


def install_packages_command(python: Sequence[str], steps_file: str | Path) -> list[str]:
    """The worker-only `install-packages STEPS.json` command (worker/install.py): pip runs in the worker."""
    return worker_command(python, "install-packages", steps_file)


def segment_command(
    python: Sequence[str],
    input_path: str | Path,
    outdir: str | Path,
    *,
    engine: str = "auto",
    device: str = "auto",
    model: str | None = None,
    slices: str | None = None,
    folds: Sequence[int] | None = None,
    tta: bool | None = None,
    batch_size: int | None = None,
    checkpoint: str | None = None,
    precision: str | None = None,
) -> list[str]:
    """The worker's command line for `segment` (same options as `legsegnet segment`)."""
    command = worker_command(python, "segment", input_path, "-o", outdir, "--engine", engine, "--device", device)
    if model:
        command += ["--model", str(model)]
    if slices:
        command += ["--slices", slices]
    if folds:
        command += ["--folds", ",".join(str(int(f)) for f in folds)]
    if tta is not None:
        command.append("--tta" if tta else "--no-tta")
    if batch_size:
        command += ["--batch-size", str(int(batch_size))]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    if precision:
        command += ["--precision", precision]
    return command
