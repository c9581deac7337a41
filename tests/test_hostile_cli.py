"""The command line as a careless or hostile user runs it, through the real `legsegnet` process.

- stdout that nobody reads (a closed pipe) or that cannot be written (/dev/full) does not fail a command whose
  results are files, once they are complete; `models list`, whose result is stdout, says it could not write;
- `dataset add --slices 0:20000000` is refused from the range's bounds, without building the range;
- `--debug` is accepted after the subcommand as before it;
- a failure shows exactly one line: on a terminal the progress bar is erased first; in a log (stderr not a
  terminal) progress is plain lines without carriage returns, and a run failing in its first stage writes only
  its error line;
- `-o ""` is refused (it wrote into the current folder);
- a model store that cannot take a model is refused before anything is unpacked or trained;
- SIGTERM during `models install` removes its staging at once; a killed install's staging is swept by the next
  install, a live one's is not; the worker and training take SIGHUP as they take SIGTERM;
- with stderr closed (`2>&-`) a run still writes its results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import writers as w
from processes import TerminalProcess, visible_lines

OUTPUT_FILES = ("labels.nii.gz", "metrics.json", "metrics.csv", "profile.csv", "overlay.png", "profile.png")


def _cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "LegSegNetLib.cli", *map(str, args)]


def _run(*args, env: dict | None = None, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cli_command(*args), capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}, **options
    )


def _one_error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scan")
    ct, labels = w.phantom_image(seed=3)
    return w.write_image(ct, folder / "ct.nii.gz"), w.write_image(labels, folder / "labels.nii.gz")


# ====================================================================== stdout nobody reads
def test_segment_into_a_closed_pipe_exits_0_with_complete_results(scan, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `legsegnet ... | true`: the reader is gone before the summary is printed
    try:
        done = subprocess.run(
            _cli_command("segment", scan[0], "-o", tmp_path / "out", "--engine", "threshold"),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["tissues"]["SM"]["volume_cm3"] > 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_segment_with_stdout_on_a_full_device_exits_0_and_models_list_says_it_failed(scan, tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            _cli_command("segment", scan[0], "-o", tmp_path / "out", "--engine", "threshold"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "error" not in done.stderr
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)
        # `models list` exists to print: a list nobody can read is its failure
        listing = subprocess.run(
            _cli_command("models", "list"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "LEGSEGNET_MODELS_DIR": str(tmp_path / "store")},
        )
    line = _one_error_line(listing, code=1)
    assert line == "error: could not write to standard output (No space left on device)"


def test_models_list_into_a_closed_pipe_exits_0(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `legsegnet models list | head -0`
    try:
        listing = subprocess.run(
            _cli_command("models", "list"),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "LEGSEGNET_MODELS_DIR": str(tmp_path / "store")},
        )
    finally:
        os.close(write_end)
    assert listing.returncode == 0 and listing.stderr == "", listing.stderr


def test_segment_with_stderr_closed_still_writes_its_results(scan, tmp_path):
    # `legsegnet ... 2>&-`: Python then has no sys.stderr at all; progress and error lines have nowhere to go
    done = subprocess.run(
        _cli_command("segment", scan[0], "-o", tmp_path / "out", "--engine", "threshold"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.close(2),
    )
    assert done.returncode == 0, done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)
    assert done.stdout.splitlines()[-1] == f"results in {tmp_path / 'out'}"


def test_stdout_closed_fails_only_models_list(scan, tmp_path):
    # `legsegnet ... >&-`: Python then has no sys.stdout at all
    done = subprocess.run(
        _cli_command("segment", scan[0], "-o", tmp_path / "out", "--engine", "threshold"),
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.close(1),
    )
    assert done.returncode == 0 and "error" not in done.stderr, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)
    listing = subprocess.run(
        _cli_command("models", "list"),
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),
        env={**os.environ, "LEGSEGNET_MODELS_DIR": str(tmp_path)},
    )
    assert _one_error_line(listing, code=1) == "error: could not write to standard output (it is closed)"


# ====================================================================== a huge slice range
_PEAK_MEMORY_OF_THE_CLI = """
import atexit, sys
def peak():  # VmHWM belongs to this process's own memory since exec, not to the test runner it was forked from
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(peak)
from LegSegNetLib import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def test_dataset_add_checks_a_huge_slice_range_before_building_it(scan, tmp_path):
    # 0:20000000 on a 8-slice CT: the old code built the list of 20 million indices and a set of them (about
    # 2 GB) before it found slice 8 missing. The CLI reports its own peak memory (the kernel's high-water mark).
    peak_file = tmp_path / "peak-kb"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK_MEMORY_OF_THE_CLI,
            str(peak_file),
            "dataset",
            "add",
            str(scan[0]),
            str(scan[1]),
            "--dataset",
            str(tmp_path / "set"),
            "--slices",
            "0:20000000",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: slice 8 does not exist: the CT has slices 0:7 along its superior/inferior axis\n"
    peak_mb = int(peak_file.read_text()) / 1024
    assert peak_mb < 600, f"peak memory {peak_mb:.0f} MB"
    assert not (tmp_path / "set").exists()


# ====================================================================== --debug anywhere
@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_and_after_the_subcommand(scan, tmp_path, where):
    args = ["segment", tmp_path / "missing.nii.gz", "-o", tmp_path / "out", "--engine", "threshold", "--quiet"]
    done = _run(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert done.returncode == 2, done.stderr
    assert "Traceback" in done.stderr and "unrecognized arguments" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: input not found")
    for args in (
        ["models", "list", "--debug"],
        ["dataset", "add", scan[0], scan[1], "--dataset", tmp_path / "set", "--slices", "99", "--quiet", "--debug"],
    ):
        done = _run(*args, env={"LEGSEGNET_MODELS_DIR": str(tmp_path / "store")})
        assert "unrecognized arguments" not in done.stderr, done.stderr
    assert "Traceback" in done.stderr and done.stderr.splitlines()[-1].startswith("error: slice 99 does not exist")


# ====================================================================== one line for a failure
def test_a_failure_on_a_terminal_leaves_only_its_error_line_visible(scan, tmp_path):
    # quantify fails while it reads (labels 0-4 only), with the bar "reading..." on the screen
    bad = w.write_image(w.phantom_image(seed=3)[1] * 7, tmp_path / "labels7.nii.gz")
    run = TerminalProcess(_cli_command("quantify", scan[0], bad, "-o", tmp_path / "out"))
    try:
        code = run.wait(timeout=120)
    finally:
        run.stop()
    assert code == 2, run.terminal
    assert "reading" in run.terminal  # the bar was there
    shown = visible_lines(run.terminal)
    assert len(shown) == 1 and shown[0].startswith("error: ") and "not LegSegNet labels" in shown[0], shown


def test_progress_in_a_log_is_plain_lines_and_a_failure_is_one_line(scan, tmp_path):
    failed = _run("segment", tmp_path / "missing.nii.gz", "-o", tmp_path / "out", "--engine", "threshold")
    line = _one_error_line(failed)  # no "reading..." before it: the stage never finished
    assert line.startswith("error: input not found")
    done = _run("segment", scan[0], "-o", tmp_path / "out", "--engine", "threshold")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "note: engine: threshold" and lines[1].startswith("reading: done (")
    assert [line.split(":")[0] for line in lines[2:]] == ["segmenting", "measuring", "writing"], lines
    assert lines[-1].startswith("writing: 6/6 (")


# ====================================================================== -o ""
@pytest.mark.parametrize("command", ["segment", "quantify", "evaluate", "dataset"])
def test_an_empty_output_path_is_refused_and_the_current_folder_untouched(scan, tmp_path, command):
    ct, labels = scan
    args = {
        "segment": ["segment", ct, "-o", "", "--engine", "threshold", "--quiet"],
        "quantify": ["quantify", ct, labels, "-o", "", "--quiet"],
        "evaluate": ["evaluate", labels, labels, "-o", "", "--quiet"],
        "dataset": ["dataset", "add", ct, labels, "--dataset", "", "--slices", "1", "--quiet"],
    }[command]
    here = tmp_path / "current"
    here.mkdir()
    line = _one_error_line(_run(*args, cwd=here))
    assert line.endswith("is empty; give a folder"), line
    assert list(here.iterdir()) == []


# ====================================================================== the model store
@pytest.fixture(scope="module")
def png_model() -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")
    import nnunet_fixtures

    return nnunet_fixtures.get_model("png")


def test_a_store_that_cannot_take_a_model_is_refused_before_any_work(tmp_path):
    # Only the store is wrong; the source and the training set do not even exist: the store is checked first.
    store_file = tmp_path / "store-file"
    store_file.write_text("not a folder")
    line = _one_error_line(
        _run("models", "install", tmp_path / "model.zip", env={"LEGSEGNET_MODELS_DIR": str(store_file)})
    )
    assert line.startswith(f"error: the model store (LEGSEGNET_MODELS_DIR) {store_file} is a file"), line
    locked = tmp_path / "locked-store"
    locked.mkdir()
    locked.chmod(0o555)
    for args in (["models", "install", tmp_path / "model.zip"], ["train", tmp_path / "no-such-set", "--device", "cpu"]):
        line = _one_error_line(_run(*args, env={"LEGSEGNET_MODELS_DIR": str(locked)}))
        assert line.startswith(f"error: the model store (LEGSEGNET_MODELS_DIR) {locked} is read-only"), line


def _store_entries(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


def test_sigterm_during_models_install_removes_its_staging(png_model, tmp_path):
    store = tmp_path / "store"
    run = TerminalProcess(
        _cli_command("models", "install", png_model, "--name", "m1"),
        env={**os.environ, "LEGSEGNET_MODELS_DIR": str(store)},
    )
    try:
        run.wait_for_text("checking", timeout=300)  # copied into its staging folder; checkpoints being loaded
        run.send_signal(signal.SIGTERM)
        code = run.wait(timeout=120)
    finally:
        run.stop()
    assert code == 1, run.terminal
    assert visible_lines(run.terminal)[-1] == "error: interrupted (SIGTERM)"
    assert _store_entries(store) == []  # no model, no `.install-*` left


def test_a_killed_install_is_swept_by_the_next_and_a_live_one_is_not(png_model, tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "LEGSEGNET_MODELS_DIR": str(store)}
    run = TerminalProcess(_cli_command("models", "install", png_model, "--name", "m1"), env=env)
    try:
        run.wait_for_text("checking", timeout=300)
        run.send_signal(signal.SIGKILL)
        assert run.wait(timeout=60) == -signal.SIGKILL
    finally:
        run.stop()
    left = _store_entries(store)
    assert len(left) == 2 and left[0].startswith(".install-") and left[1] == left[0] + ".pid", left
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (store / ".install-0000beef").mkdir()  # an install running now, in another process
        (store / ".install-0000beef" / "model").write_bytes(b"being copied")
        (store / ".install-0000beef.pid").write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename}))
        (store / ".install-unmarked").mkdir()  # not provably ours, and young: kept
        done = _run("models", "install", png_model, "--name", "m2", "--quiet", env=env)
        assert done.returncode == 0, done.stderr
        assert _store_entries(store) == [".install-0000beef", ".install-0000beef.pid", ".install-unmarked", "m2"]
        assert (store / ".install-0000beef" / "model").read_bytes() == b"being copied"
    finally:
        live.kill()
        live.wait()


# ====================================================================== the worker and training: the same signals
def test_sighup_cancels_the_worker_while_it_writes_and_it_cleans_up(scan, tmp_path):
    # Slicer's worker: SIGHUP (its session closed) now cancels as SIGTERM does; before, it died on the spot
    out = tmp_path / "out"
    worker = subprocess.Popen(
        [sys.executable, "-m", "LegSegNetLib.worker", "segment", scan[0], "-o", out, "--engine", "threshold"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events = []
    try:
        for line in worker.stdout:  # its JSON events, one per line, until it starts writing the set
            events.append(json.loads(line))
            if events[-1].get("stage") == "writing":
                worker.send_signal(signal.SIGHUP)
                break
        events += [json.loads(line) for line in worker.stdout]
        code = worker.wait(timeout=60)
        stderr = worker.stderr.read()
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        worker.stdout.close()
        worker.stderr.close()
    assert any(e.get("stage") == "writing" for e in events), events
    assert code == 1, (code, stderr)
    assert events[-1] == {"event": "error", "message": "cancelled (SIGHUP)", "exit_code": 1}, events[-1]
    # no staging left; OUTDIR only when the signal met the swap itself (it takes effect just after it)
    assert [p.name for p in tmp_path.iterdir()] in ([], ["out"])
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


_TRAINING_STOP_HANDLER = """
import os, signal, sys
from LegSegNetLib.annotation import stopping as training
stop = training.StopRequest()
with training.stop_on_signals(stop):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    stop.event.wait(60)
print(stop.signal_name)
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_training_stops_after_the_iteration_on_sighup_as_on_sigterm(name):
    # The trainer's own handler (stop after the current iteration, keep the checkpoint) in a real process; a
    # whole training run with SIGTERM is in test_training.py. Before, SIGHUP killed the training outright.
    done = subprocess.run(
        [sys.executable, "-c", _TRAINING_STOP_HANDLER, name], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip() == name
