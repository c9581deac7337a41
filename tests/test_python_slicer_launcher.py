"""Runs through a launcher like Slicer's `PythonSlicer` (tests/fake_python_slicer.py): it starts the real
interpreter as its child and forwards no signals. Segmentation cancel, worker crash, scene close and a
launcher that dies during a graceful stop, each proving that no process is left (the real worker's pid,
reported by the worker itself, is gone) and that the graceful path still finishes. Training stop through
the launcher (checkpoint kept, resumable) is in test_training.py. Also: every logic call that starts a
process returns at once while the work goes on.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from LegSegNetLib.core.errors import CancelledError, InputError, LegSegNetError
from LegSegNetLib.slicer_logic.run_handle import RunHandle
from LegSegNetLib.worker import launcher
from LegSegNetLib.worker.launcher import WorkerProcess, is_alive, make_workdir

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process-group tests are written for POSIX")

FAKE_PYTHON_SLICER = Path(__file__).resolve().parent / "fake_python_slicer.py"
PYTHON_SLICER = [sys.executable, str(FAKE_PYTHON_SLICER)]  # what `python` is inside Slicer


def _wait_for(condition, handle: RunHandle, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert handle.poll(), f"the run ended ({handle.state}: {handle.errorMessage}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def _gone(pids, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(is_alive(p) for p in pids)


def _pids(handle: RunHandle) -> list[int]:
    """The launcher, the real worker and everything below either."""
    pids = [handle.worker.pid, handle.workerPid]
    return list(dict.fromkeys(pids + launcher.descendants(handle.worker.pid) + launcher.descendants(handle.workerPid)))


# ---------------------------------------------------------------------- no MRML needed
GRACEFUL_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    print(json.dumps({"event": "started", "pid": os.getpid()}), flush=True)
    stop_file = os.environ["LEGSEGNET_STOP_FILE"]
    while not os.path.exists(stop_file):
        time.sleep(0.05)
    time.sleep(4.0)  # "saving a checkpoint": longer than the launcher code's EOF grace
    open(sys.argv[1], "w").write("saved")
    print(json.dumps({"event": "error", "message": "stopped; checkpoint kept", "exit_code": 1}), flush=True)
    sys.exit(1)
    """
)


def test_a_launcher_that_dies_during_a_graceful_stop_does_not_cut_it_short(tmp_path):
    # Before: the launcher's death counted as the end of the run and its process group was SIGKILLed
    # 2 s later, the real worker with it, before it had saved anything.
    script, saved = tmp_path / "graceful.py", tmp_path / "saved"
    script.write_text(GRACEFUL_WORKER)
    workdir = make_workdir()
    handle = RunHandle(WorkerProcess([*PYTHON_SLICER, str(script), str(saved)], workdir=workdir), what="training")
    try:
        _wait_for(lambda: handle.workerPid is not None, handle, "started event")
        assert handle.workerPid != handle.worker.pid  # the launcher sits in between
        handle.stop()
        os.kill(handle.worker.pid, 15)  # the launcher dies (e.g. a group SIGTERM); the worker goes on
        deadline = time.monotonic() + 60
        while handle.poll():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert handle.state == "cancelled" and handle.errorMessage == "stopped; checkpoint kept"
        assert saved.read_text() == "saved"
        assert _gone([handle.worker.pid, handle.workerPid]) and not workdir.exists()
    finally:
        handle.cancel()


def test_a_stop_that_is_not_honoured_ends_in_a_kill_after_the_grace(tmp_path):
    script = tmp_path / "deaf.py"
    script.write_text(
        "import json, os, time\nprint(json.dumps({'event': 'started', 'pid': os.getpid()}), flush=True)\n"
        "time.sleep(300)\n"
    )
    handle = RunHandle(WorkerProcess([*PYTHON_SLICER, str(script)], workdir=make_workdir()), stopGraceSeconds=1.0)
    try:
        _wait_for(lambda: handle.workerPid is not None, handle, "started event")
        pids = _pids(handle)
        handle.stop()
        assert handle.state == "stopping"
        deadline = time.monotonic() + 30
        while handle.poll():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert handle.state == "cancelled" and _gone(pids)
    finally:
        handle.cancel()


# ---------------------------------------------------------------------- the Slicer logic (slicer-core)
@pytest.fixture()
def scene_with_calf():
    slicer = pytest.importorskip("slicer")
    from LegSegNetLib.phantom import make_leg_phantom
    from LegSegNetLib.slicer_logic import scene as slicer_io

    scene = slicer.vtkMRMLScene()
    volume, _ = make_leg_phantom(shape=(40, 160, 192), seed=2).to_volume()
    return scene, slicer_io.node_volume_from_image(scene, volume.image, "calf")


def _node_count(scene) -> int:
    return scene.GetNumberOfNodes()


@pytest.mark.parametrize("own_group", [False, True], ids=["launcher-group", "worker-own-group"])
def test_segmentation_cancel_through_the_launcher_leaves_no_process(scene_with_calf, monkeypatch, own_group):
    from LegSegNetLib.slicer_logic.logic import LegSegNetLogic

    monkeypatch.setenv("FAKE_LAUNCHER_OWN_GROUP", "1" if own_group else "0")
    scene, node = scene_with_calf
    before = _node_count(scene)
    handle = LegSegNetLogic(python=PYTHON_SLICER).processAsync(node, engine="threshold", device="cpu")
    try:
        workdir = handle.worker.workdir
        _wait_for(
            lambda: handle.workerPid is not None and handle.progress["stage"] == "segmenting", handle, "segmenting"
        )
        pids = _pids(handle)
        assert handle.workerPid != handle.worker.pid and len(pids) >= 2
        handle.cancel()
        assert handle.state == "cancelled" and isinstance(handle.error, CancelledError)
        assert _gone(pids), [p for p in pids if is_alive(p)]
        assert not workdir.exists() and _node_count(scene) == before
    finally:
        handle.cancel()


def test_a_crashed_worker_behind_the_launcher_is_reported_and_nothing_is_left(scene_with_calf):
    from LegSegNetLib.slicer_logic.logic import LegSegNetLogic

    scene, node = scene_with_calf
    before = _node_count(scene)
    handle = LegSegNetLogic(python=PYTHON_SLICER).processAsync(node, engine="threshold", device="cpu")
    try:
        workdir = handle.worker.workdir
        _wait_for(lambda: handle.workerPid is not None, handle, "started event")
        pids = _pids(handle)
        os.kill(handle.workerPid, 9)  # the real interpreter crashes
        with pytest.raises(LegSegNetError, match=r"segmentation process stopped unexpectedly \(exit status 137\)"):
            handle.wait(timeout=60)
        assert handle.state == "failed" and _gone(pids) and not workdir.exists() and _node_count(scene) == before
    finally:
        handle.cancel()


def test_closing_the_scene_cancels_the_run_behind_the_launcher(scene_with_calf):
    from LegSegNetLib.slicer_logic.logic import LegSegNetLogic

    scene, node = scene_with_calf
    handle = LegSegNetLogic(python=PYTHON_SLICER).processAsync(node, engine="threshold", device="cpu")
    try:
        workdir = handle.worker.workdir
        _wait_for(lambda: handle.workerPid is not None, handle, "started event")
        pids = _pids(handle)
        scene.Clear(0)
        assert handle.state == "cancelled" and _gone(pids) and not workdir.exists()
        assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None
    finally:
        handle.cancel()


def test_segmentation_through_the_launcher_still_succeeds(scene_with_calf):
    from LegSegNetLib.slicer_logic.logic import LegSegNetLogic

    scene, node = scene_with_calf
    handle = LegSegNetLogic(python=PYTHON_SLICER).processAsync(node, 30, 33, engine="threshold", device="cpu")
    try:
        result = handle.wait(timeout=120)
        assert handle.state == "succeeded" and result.segmentation.GetAttribute("LegSegNet.Slices") == "30:33"
        assert _gone([handle.worker.pid, handle.workerPid])
    finally:
        handle.cancel()


# ---------------------------------------------------------------------- nothing blocks the GUI thread
def _returns_at_once(start) -> tuple[RunHandle, float]:
    began = time.monotonic()
    handle = start()
    return handle, time.monotonic() - began


def test_device_probe_model_install_and_package_install_return_at_once(tmp_path, monkeypatch):
    pytest.importorskip("slicer")
    from LegSegNetLib.slicer_logic.logic import LegSegNetLogic

    monkeypatch.setenv("LEGSEGNET_MODELS_DIR", str(tmp_path / "store"))
    logic = LegSegNetLogic(python=PYTHON_SLICER)
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()

    class PipVersionOnly:  # stands in for dependencies.InstallPlan: real pip, but nothing to download
        def write_constraints(self, path):
            Path(path).write_text("")
            return Path(path)

        def install_steps(self, constraints_file):
            return [{"label": "pip --version", "module": "pip", "arguments": ["--version"]}]

    handles = []
    try:
        for start in (
            logic.deviceProbeAsync,
            lambda: logic.modelsCommandAsync(["install", str(not_a_model)]),
            lambda: logic.installPackagesAsync(PipVersionOnly()),
        ):
            handle, seconds = _returns_at_once(start)
            handles.append(handle)
            print(f"{handle.what}: the call returned in {seconds * 1000:.0f} ms")
            assert seconds < 0.5 and handle.running  # the work goes on in the worker
        probe, models, packages = handles
        found = probe.wait(timeout=120)
        assert set(found) == {"torch", "cuda", "cuda_build", "mps"}
        assert logic.describeDevices(found).startswith(("PyTorch", "PyTorch is not installed"))
        with pytest.raises(InputError) as caught:
            models.wait(timeout=120)
        assert "not-a-model" in str(caught.value) and "\n" not in str(caught.value)
        assert packages.wait(timeout=120) == {"steps": ["pip --version"]}
        assert any(n.startswith("pip ") for n in packages.notes)  # pip's own output, passed on as notes
        assert _gone([p for h in handles for p in (h.worker.pid, h.workerPid) if p])
    finally:
        for handle in handles:
            handle.cancel()


def test_a_failing_install_step_says_which_and_why(tmp_path):
    from LegSegNetLib.worker.launcher import install_packages_command

    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps([{"label": "installing nothing", "module": "pip", "arguments": ["no-such-command"]}]))
    worker = WorkerProcess(install_packages_command([sys.executable], steps))
    try:
        assert worker.wait(timeout=120) == 1
        assert worker.error_message.startswith("installing nothing failed (exit status 1)")
    finally:
        worker.cancel()
