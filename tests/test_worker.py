"""The worker process Slicer launches: JSON progress lines, exit codes, cancellation, parent death.

Everything here is a real subprocess running the real pipeline on a phantom written to disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import processes
import SimpleITK as sitk

from LegSegNetLib.phantom import make_leg_phantom

WORKER = [sys.executable, "-m", "LegSegNetLib.worker"]


def _phantom_file(folder: Path, n_slices: int = 12, size=(160, 224)) -> Path:
    volume, _ = make_leg_phantom(shape=(n_slices, *size), seed=3).to_volume()
    path = folder / "phantom.nrrd"
    sitk.WriteImage(volume.image, str(path))
    return path


def _long_phantom_file(folder: Path, n_slices: int, size=(192, 256)) -> Path:
    """A phantom of `n_slices` made of a short one repeated along the leg: long runs without the cost of
    building a long phantom."""
    volume, _ = make_leg_phantom(shape=(20, *size), seed=3).to_volume()
    repeats = -(-n_slices // 20)
    array = np.tile(sitk.GetArrayFromImage(volume.image), (repeats, 1, 1))[:n_slices]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(volume.image.GetSpacing())
    image.SetOrigin(volume.image.GetOrigin())
    image.SetDirection(volume.image.GetDirection())
    path = folder / "long-phantom.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_progress_lines_are_json_and_end_with_a_result(tmp_path):
    src = _phantom_file(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run(
        [*WORKER, "segment", str(src), "-o", str(out), "--engine", "threshold"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout)  # every stdout line must parse
    kinds = {e["event"] for e in events}
    assert {"progress", "note", "result"} <= kinds
    segmenting = [e for e in events if e["event"] == "progress" and e["stage"] == "segmenting"]
    assert segmenting[-1]["done"] == segmenting[-1]["total"] == 12
    result = events[-1]
    assert result["event"] == "result" and Path(result["labels"]).is_file() and Path(result["metrics"]).is_file()
    assert json.loads(Path(result["metrics"]).read_text())["engine"] == "threshold"


def test_bad_input_gives_error_event_and_exit_2(tmp_path):
    done = subprocess.run(
        [*WORKER, "segment", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    error = _events(done.stdout)[-1]
    assert error["event"] == "error" and error["exit_code"] == 2 and error["message"]
    assert done.stderr.strip().splitlines() == [f"error: {error['message']}"]
    assert not (tmp_path / "o").exists()


def _start_long_run(tmp_path: Path, launcher: list[str] | None = None) -> tuple[subprocess.Popen, Path]:
    src = _long_phantom_file(tmp_path, n_slices=300)
    out = tmp_path / "out"
    cmd = [*WORKER, "segment", str(src), "-o", str(out), "--engine", "threshold"]
    proc = subprocess.Popen((launcher or []) + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out


def test_sigterm_mid_run_stops_promptly_and_leaves_nothing(tmp_path):
    proc, out = _start_long_run(tmp_path)
    try:
        for line in proc.stdout:  # wait until segmentation has really started
            event = json.loads(line)
            if event["event"] == "progress" and event["stage"] == "segmenting" and event["done"] > 0:
                break
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        rest, stderr = proc.communicate(timeout=30)
    finally:
        processes.stop(proc)
    assert time.monotonic() - start < 10
    assert proc.returncode == 1
    assert "cancelled" in stderr
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob(".*legsegnet*"))  # no staging folder left beside it


def test_worker_exits_when_its_parent_dies(tmp_path):
    # A launcher process (like Slicer's PythonSlicer) starts the worker and is then killed with SIGKILL.
    src = _long_phantom_file(tmp_path, n_slices=600)
    out = tmp_path / "out"
    pid_file, progress_file = tmp_path / "worker.pid", tmp_path / "progress.jsonl"
    launcher_code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen({WORKER + ['segment', str(src), '-o', str(out), '--engine', 'threshold']!r},"
        f" stdout=open({str(progress_file)!r}, 'w'), stderr=subprocess.DEVNULL)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code])
    worker_pid = None
    try:
        deadline = time.monotonic() + 120
        segmenting = None
        while segmenting is None:  # kill the launcher once the worker is segmenting, far from its end
            assert time.monotonic() < deadline, "the worker never started segmenting"
            time.sleep(0.1)
            lines = progress_file.read_text().splitlines() if progress_file.exists() else []
            segmenting = next(
                (
                    e
                    for e in map(json.loads, lines[:-1])  # the last line may be half-written
                    if e["event"] == "progress" and e["stage"] == "segmenting" and e["done"] > 0
                ),
                None,
            )
        worker_pid = int(pid_file.read_text())
        launcher.kill()
        launcher.wait()
        assert segmenting["done"] < segmenting["total"] // 2, segmenting  # the kill came mid-run
        deadline = time.monotonic() + 20
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        outlived = _alive(worker_pid)
    finally:
        processes.stop(launcher, worker_pid if worker_pid and _alive(worker_pid) else None)
    assert not outlived, "worker outlived its parent"
    assert not out.exists() or not any(out.iterdir())


def test_threshold_engine_says_it_ignores_a_gpu_device(tmp_path):
    src = _phantom_file(tmp_path, n_slices=3)
    done = subprocess.run(
        [*WORKER, "segment", str(src), "-o", str(tmp_path / "o"), "--engine", "threshold", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    notes = [e["text"] for e in _events(done.stdout) if e["event"] == "note"]
    assert any("runs on the CPU" in n and "cuda" in n for n in notes)
