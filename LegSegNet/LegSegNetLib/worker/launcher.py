"""Run the LegSegNet worker (`python -m LegSegNetLib.worker ...`) as a child process, without blocking.

Slicer's GUI thread must never wait on the segmentation, so the worker runs in its own process
(inside Slicer: `PythonSlicer`, a launcher that starts the real interpreter, so there is a process
*tree*). This module starts it in its own process group / session, reads its JSON lines on a
background thread, and lets the caller poll (from a `qt.QTimer` in the widget, or a loop in a blocking
call). Cancel stops the whole tree: SIGTERM to the group (the worker unwinds cleanly), then SIGKILL to
the group and to every descendant that left it. The temporary folder is removed whatever happens.

Nothing here imports Qt or MRML.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

LIB_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds LegSegNetLib/
TERMINATE_GRACE_S = 3.0
EOF_GRACE_S = 2.0  # how long a pipe may stay open after the worker itself exited


# ---------------------------------------------------------------------- interpreter
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
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}"], capture_output=True, text=True).stdout
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


def kill_tree(process: subprocess.Popen, grace_s: float = TERMINATE_GRACE_S) -> None:
    """Stop `process` and everything it started: polite signal first, then force."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
        process.wait(timeout=grace_s + 5)
        return
    tree = descendants(process.pid)
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        pgid = None
    own_group = pgid is not None and pgid == process.pid  # started with start_new_session
    if own_group:
        _signal_group(pgid, signal.SIGTERM)
    else:
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
    if own_group:
        _signal_group(pgid, signal.SIGKILL)
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
    outputs first, then cleans up. `cancel()` cleans up by itself, and so does garbage collection as a
    last resort.
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
        self.events: "queue.Queue[WorkerEvent | None]" = queue.Queue()
        self.log: list[str] = []  # every line, for the error log
        self.error_message: str | None = None
        self.error_exit_code: int | None = None
        self.result: dict | None = None
        self.cancelled = False
        self.started_at = time.monotonic()
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: cancel reaches the whole tree
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else worker_environment(),
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        self._reader = threading.Thread(target=self._read, name="legsegnet-worker-reader", daemon=True)
        self._finished = False
        self._exited_at: float | None = None
        self._reader.start()

    # --- background thread
    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(parse_line(line))
        self.events.put(None)  # end of output

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
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                self._check_exited_without_eof()
                break
            if item is None:
                self.process.wait()
                self._finished = True
                break
            self._remember(item)
            new.append(item)
        return new

    def _check_exited_without_eof(self) -> None:
        """The worker exited but a leftover child still holds its output pipe: end that child."""
        if self.process.poll() is None:
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

    def wait(self, timeout: float | None = None, on_event: Callable[[WorkerEvent], None] | None = None) -> int:
        """Block until the worker ends (or `timeout` s pass: TimeoutError); returns the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not finish within {timeout} s")
            try:
                item = self.events.get(timeout=0.1)
            except queue.Empty:
                self._check_exited_without_eof()
                continue
            if item is None:
                self.process.wait()
                self._finished = True
                break
            self._remember(item)
            if on_event is not None:
                on_event(item)
        return int(self.process.returncode)

    def _remember(self, item: WorkerEvent) -> None:
        self.log.append(item.text)
        if item.event == "error":
            self.error_message = str(item.data.get("message", "")).strip() or self.error_message
            self.error_exit_code = item.data.get("exit_code")
        elif item.event == "result":
            self.result = item.data
        elif item.event == "text" and item.text.startswith("error:") and self.error_message is None:
            self.error_message = item.text[len("error:") :].strip()

    def failure_message(self) -> str:
        """The worker's own `error:` line, or the end of its output when it died without one."""
        if self.cancelled:
            return "cancelled"
        if self.error_message:
            return self.error_message
        tail = " | ".join(line for line in self.log[-5:] if line)
        code = self.process.returncode
        return f"the segmentation worker stopped unexpectedly (exit status {code}){': ' + tail if tail else ''}"

    # --- stopping
    def cancel(self) -> None:
        """Kill the worker tree (if still running), drop its output and remove the temporary folder."""
        self.cancelled = True
        if self.process.returncode is None:
            kill_tree(self.process)
        self._reader.join(timeout=5)
        self._finished = True
        self.cleanup()

    def cleanup(self) -> None:
        if self.process.returncode is None:
            return  # never delete files under a running worker
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __del__(self) -> None:  # last resort: never leave a worker behind
        try:
            if self.process.returncode is None and self.process.poll() is None:
                kill_tree(self.process, grace_s=0.5)
            self.cleanup()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def make_workdir(prefix: str = "legsegnet-") -> Path:
    """A fresh private temporary folder for one run."""
    return Path(tempfile.mkdtemp(prefix=prefix))


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
) -> list[str]:
    """The worker's command line for `segment` (same options as `legsegnet segment`)."""
    command = [*python, "-m", "LegSegNetLib.worker", "segment", str(input_path), "-o", str(outdir)]
    command += ["--engine", engine, "--device", device]
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
    return command
