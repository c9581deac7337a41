"""The worker launcher: real child processes, JSON lines, cancel of a whole process tree, cleanup."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from LegSegNetLib.slicer_logic.run_handle import default_python
from LegSegNetLib.worker import launcher as worker_process
from LegSegNetLib.worker.launcher import WorkerProcess, is_alive, make_workdir, parse_line, segment_command

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process-group tests are written for POSIX")

# A "worker" that starts a child, which starts a grandchild that ignores SIGTERM, reports all pids as
# JSON, then sleeps: cancel must end all three, the stubborn one with SIGKILL.
TREE_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    level = int(sys.argv[1])
    if level == 2:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if level < 2:
        child = subprocess.Popen([sys.executable, __file__, str(level + 1)])
    print(json.dumps({"event": "note", "text": "pid", "level": level, "pid": os.getpid()}), flush=True)
    time.sleep(120)
    """
)


def _write_script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(text)
    return path


def _collect_pids(worker: WorkerProcess, count: int, timeout: float = 20.0) -> dict[int, int]:
    pids: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(pids) < count and time.monotonic() < deadline:
        for event in worker.poll():
            if event.event == "note" and event.data.get("text") == "pid":
                pids[event.data["level"]] = event.data["pid"]
        time.sleep(0.02)
    assert len(pids) == count, f"only got pids {pids}"
    return pids


def test_parse_line_reads_events_and_keeps_text():
    event = parse_line('{"event": "progress", "stage": "segmenting", "done": 3, "total": 10}\n')
    assert event.event == "progress" and event.data["done"] == 3
    assert parse_line("error: the file is not a CT\n").event == "text"
    assert parse_line("{not json").event == "text"
    assert parse_line('{"no_event": 1}').event == "text"


def test_segment_command_passes_every_option():
    command = segment_command(
        ["py"],
        "in.nrrd",
        "out",
        engine="nnunet",
        device="cuda",
        model="m",
        slices="3:9",
        folds=[0, 2],
        tta=False,
        batch_size=4,
        checkpoint="final",
        precision="bf16",
    )
    assert command[:5] == ["py", "-m", "LegSegNetLib.worker", "segment", "in.nrrd"]
    for pair in (
        ["-o", "out"],
        ["--engine", "nnunet"],
        ["--device", "cuda"],
        ["--model", "m"],
        ["--slices", "3:9"],
        ["--folds", "0,2"],
        ["--batch-size", "4"],
        ["--checkpoint", "final"],
        ["--precision", "bf16"],
    ):
        i = command.index(pair[0])
        assert command[i : i + 2] == pair
    assert "--no-tta" in command and "--tta" not in command
    # the worker parses them as `legsegnet segment` does: the engine options reach the pipeline
    from LegSegNetLib.cli import build_parser, engine_options

    args = build_parser().parse_args(command[3:])
    assert engine_options(args) == {
        "engine": "nnunet",
        "model": "m",
        "device": "cuda",
        "folds": [0, 2],
        "tta": False,
        "batch_size": 4,
        "checkpoint": "final",
        "precision": "bf16",
    }
    assert "--checkpoint" not in segment_command(["py"], "in.nrrd", "out")  # default: the model folder's own


def test_cancel_kills_the_whole_tree_and_removes_the_folder(tmp_path):
    script = _write_script(tmp_path, TREE_SCRIPT)
    workdir = make_workdir()
    (workdir / "input.nrrd").write_text("x")
    worker = WorkerProcess([sys.executable, str(script), "0"], workdir=workdir)
    try:
        pids = _collect_pids(worker, 3)
        assert all(is_alive(pid) for pid in pids.values())
        started = time.monotonic()
        worker.cancel()
        elapsed = time.monotonic() - started
    finally:
        worker.cancel()
    assert worker.cancelled and worker.finished and not worker.succeeded
    assert not workdir.exists()
    deadline = time.monotonic() + 5
    while any(is_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_alive(pid) for pid in pids.values()), f"left behind: {[p for p in pids.values() if is_alive(p)]}"
    # the stubborn grandchild needed SIGKILL after the grace period, not more
    assert elapsed < worker_process.TERMINATE_GRACE_S + 3


def test_kill_reaches_a_descendant_that_left_the_process_group(tmp_path):
    script = _write_script(
        tmp_path,
        textwrap.dedent(
            """
            import json, os, subprocess, sys, time
            if sys.argv[1] == "parent":
                subprocess.Popen([sys.executable, __file__, "escaper"], start_new_session=True)
                print(json.dumps({"event": "note", "text": "pid", "level": 0, "pid": os.getpid()}), flush=True)
            else:
                print(json.dumps({"event": "note", "text": "pid", "level": 1, "pid": os.getpid()}), flush=True)
            time.sleep(120)
            """
        ),
    )
    worker = WorkerProcess([sys.executable, str(script), "parent"])
    try:
        pids = _collect_pids(worker, 2)
        assert os.getpgid(pids[1]) != os.getpgid(pids[0])
        worker.cancel()
        deadline = time.monotonic() + 5
        while is_alive(pids[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_alive(pids[1])
    finally:
        worker.cancel()


def test_a_real_worker_failure_gives_its_error_line(tmp_path):
    workdir = make_workdir()
    missing = tmp_path / "no-such-scan.nii.gz"
    command = segment_command([sys.executable], missing, workdir / "out", engine="threshold")
    worker = WorkerProcess(command, workdir=workdir, env=worker_process.worker_environment())
    try:
        code = worker.wait(timeout=60)
        assert code == 2
        assert worker.error_exit_code == 2
        message = worker.failure_message()
        assert "no-such-scan" in message and "\n" not in message and "Traceback" not in message
        assert workdir.exists()  # outputs stay readable until the caller cleans up
        worker.cleanup()
        assert not workdir.exists()
    finally:
        worker.cancel()


def test_exit_while_a_leftover_child_holds_the_pipe_still_finishes(tmp_path):
    script = _write_script(
        tmp_path,
        textwrap.dedent(
            """
            import json, os, subprocess, sys, time
            if sys.argv[1] == "parent":
                subprocess.Popen([sys.executable, __file__, "child"])  # inherits stdout
                print(json.dumps({"event": "result", "outdir": "x"}), flush=True)
                time.sleep(0.5)
            else:
                print(json.dumps({"event": "note", "text": "pid", "level": 1, "pid": os.getpid()}), flush=True)
                time.sleep(120)
            """
        ),
    )
    worker = WorkerProcess([sys.executable, str(script), "parent"])
    child_pid = None
    try:
        deadline = time.monotonic() + 20
        while not worker.finished and time.monotonic() < deadline:
            for event in worker.poll():
                if event.event == "note":
                    child_pid = event.data["pid"]
            time.sleep(0.05)
        assert worker.finished and worker.returncode == 0 and worker.result == {"event": "result", "outdir": "x"}
    finally:
        worker.cancel()
    assert child_pid is not None
    deadline = time.monotonic() + 5
    while is_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(child_pid)


def test_worker_dying_without_error_line_is_reported_with_its_status(tmp_path):
    script = _write_script(tmp_path, "import os, sys\nprint('partial output', flush=True)\nos._exit(7)\n")
    worker = WorkerProcess([sys.executable, str(script)])
    try:
        assert worker.wait(timeout=30) == 7
    finally:
        worker.cancel()
    assert "exit status 7" in worker.failure_message() and "partial output" in worker.failure_message()


def test_default_python_outside_slicer_is_this_interpreter():
    assert default_python() == [sys.executable]


def test_environment_makes_the_library_importable():
    env = worker_process.worker_environment({"PYTHONPATH": "/somewhere"})
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[0] == str(Path(worker_process.__file__).resolve().parents[2]) and "/somewhere" in parts
