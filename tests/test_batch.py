"""`legsegnet batch`: scans found in folder trees, per-scan results, cohort.csv, resume, failure isolation, Dask.

Everything runs through the real command line as a subprocess, on a real Dask cluster (the embedded local one, or
a `dask scheduler` with two `dask worker` processes the test starts), on phantom scans written to disk and the
real Visible Human head CT and MR series. Workers are killed with real signals; nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid
from writers import phantom_image, run_legsegnet, truncate_file, write_dicom_series

from LegSegNetLib.batch import results
from LegSegNetLib.batch.inputs import find_scans
from LegSegNetLib.models.folder import inspect_model_folder
from LegSegNetLib.phantom import make_leg_phantom

CLI = [sys.executable, "-m", "LegSegNetLib.cli"]
SEGMENT_FILES = ("labels.nii.gz", "metrics.json", "metrics.csv", "profile.csv", "overlay.png", "profile.png")


# ---------------------------------------------------------------------------------------------- helpers
def write_phantom(path: Path, seed: int, shape=(10, 96, 128), contrast: bool = False) -> Path:
    volume, _ = make_leg_phantom(shape=shape, seed=seed, contrast_vessels=contrast).to_volume()
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.image, str(path), useCompression=True)
    return path


def long_phantom(path: Path, n_slices: int) -> Path:
    """A phantom scan of many slices (one phantom slab repeated: cheap to make, slow enough to segment)."""
    volume, _ = make_leg_phantom(shape=(20, 160, 200), seed=7, contrast_vessels=False).to_volume()
    slab = sitk.GetArrayFromImage(volume.image)
    repeats = -(-n_slices // slab.shape[0])
    image = sitk.GetImageFromArray(np.concatenate([slab] * repeats)[:n_slices])
    image.SetSpacing(volume.image.GetSpacing())
    image.SetDirection(volume.image.GetDirection())
    image.SetOrigin(volume.image.GetOrigin())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def batch(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_legsegnet("batch", *args, timeout=timeout)


def cohort(outdir: Path) -> dict[str, dict]:
    with open(outdir / "cohort.csv", newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def status(outdir: Path, scan_id: str) -> dict:
    return json.loads((outdir / "scans" / scan_id / "status.json").read_text())


def visible_results(outdir: Path) -> dict[str, dict]:
    """Every published scan folder, checked complete: an ok one holds segment's six files and status.json,
    a failed one status.json (and, for an internal error, traceback.txt)."""
    found = {}
    for folder in sorted((outdir / "scans").iterdir()):
        if folder.name.startswith("."):
            continue
        state = json.loads((folder / "status.json").read_text())
        names = {p.name for p in folder.iterdir()}
        if state["status"] == "ok":
            assert names == {*SEGMENT_FILES, "status.json"}, (folder.name, names)
        else:
            assert names <= {"status.json", "traceback.txt"}, (folder.name, names)
        found[folder.name] = state
    return found


def hidden_leftovers(outdir: Path) -> list[str]:
    return [p.name for p in (outdir / "scans").iterdir() if p.name.startswith(".")]


def start_batch(*args) -> subprocess.Popen:
    """The batch as its own process group, so a test can kill it with all its Dask workers at once."""
    return subprocess.Popen(
        [*CLI, "batch", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


# ---------------------------------------------------------------------------------------------- discovery
def test_every_dicom_series_is_found_once_from_headers_alone(tmp_path):
    ct, _ = phantom_image()
    first, second, split = generate_uid(), generate_uid(), generate_uid()
    write_dicom_series(ct, tmp_path / "study", series_uid=first, series_number=3, name_prefix="a")
    write_dicom_series(ct, tmp_path / "study", series_uid=second, series_number=4, name_prefix="b")
    files = write_dicom_series(ct, tmp_path / "split" / "part1", series_uid=split, series_number=1)
    (tmp_path / "split" / "part2").mkdir()
    for path in files[4:]:  # the same series continued in a sibling folder
        path.rename(tmp_path / "split" / "part2" / path.name)
    # the pixel data of one file cut off: discovery never reads pixels, so it still belongs to its series
    truncate_file(tmp_path / "study" / "a0002.dcm", keep_fraction=0.5)
    (tmp_path / "notes.txt").write_text("not a scan")

    found = find_scans([str(tmp_path), str(tmp_path / "study")])  # the study folder twice: still one scan each
    by_uid = {scan.series_uid: scan for scan in found.scans}
    assert len(found.scans) == 3 and set(by_uid) == {first, second, split}
    assert by_uid[first].id == "study_s3" and by_uid[second].id == "study_s4"
    assert by_uid[split].id == "split" and by_uid[split].source == str(tmp_path / "split")
    assert len(by_uid[split].files) == 8 and len(by_uid[first].files) == 8
    assert found.skipped_files == 1
    again = find_scans([str(tmp_path)])
    assert [(s.id, s.fingerprint) for s in again.scans] == [(s.id, s.fingerprint) for s in found.scans[:3]]


# ---------------------------------------------------------------------------------------------- --dicom
def test_dicom_option_writes_seg_and_sr_for_the_dicom_scans_only(tmp_path):
    """A DICOM series gets segment's seg.dcm and sr.dcm, an image file is measured without them (and says so),
    and a series `segment --dicom` refuses is an error row that does not stop the others."""
    import pydicom
    from test_dicom_results import assert_seg_equals_labels_file, source_headers

    ct, _ = phantom_image()
    write_dicom_series(ct, tmp_path / "data" / "P01", shuffle_names=True)
    write_phantom(tmp_path / "data" / "P02.nii.gz", seed=2, shape=(8, 96, 128))
    damaged = write_dicom_series(ct, tmp_path / "data" / "P03")
    copy = pydicom.dcmread(damaged[5])  # two images of the series under one SOP Instance UID
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.dcmread(damaged[4]).SOPInstanceUID
    copy.save_as(damaged[5])
    out = tmp_path / "out"

    done = batch(tmp_path / "data", "-o", out, "--engine", "threshold", "--workers", "1", "--dicom", "--quiet")
    assert done.returncode == 1, done.stderr  # one scan failed
    rows = cohort(out)
    assert {k: rows[k]["status"] for k in rows} == {"P01": "ok", "P02": "ok", "P03": "error"}, rows

    dicom_scan = out / "scans" / "P01"
    assert {p.name for p in dicom_scan.iterdir()} == {*SEGMENT_FILES, "status.json", "seg.dcm", "sr.dcm"}
    assert rows["P01"]["dicom_files"] == "seg.dcm;sr.dcm"
    metrics = json.loads((dicom_scan / "metrics.json").read_text())
    first, last = metrics["slices"]
    headers = source_headers(tmp_path / "data" / "P01")
    assert_seg_equals_labels_file(dicom_scan / "seg.dcm", dicom_scan / "labels.nii.gz", headers, first, last)
    assert pydicom.dcmread(dicom_scan / "sr.dcm").StudyInstanceUID == headers[0].StudyInstanceUID

    image_scan = out / "scans" / "P02"
    assert {p.name for p in image_scan.iterdir()} == {*SEGMENT_FILES, "status.json"}
    assert rows["P02"]["dicom_files"] == ""
    assert any("no seg.dcm or sr.dcm" in note for note in status(out, "P02")["notes"])

    assert "SOP Instance UID" in rows["P03"]["error"] and "repeated" in rows["P03"]["error"], rows["P03"]["error"]
    assert {p.name for p in (out / "scans" / "P03").iterdir()} == {"status.json"}

    finished = status(out, "P01")["run_id"]
    again = batch(tmp_path / "data", "-o", out, "--engine", "threshold", "--workers", "1", "--dicom", "--quiet")
    assert again.returncode == 1 and status(out, "P01")["run_id"] == finished  # resumed: nothing redone
    without = batch(tmp_path / "data", "-o", out, "--engine", "threshold", "--workers", "1", "--quiet")
    assert without.returncode == 0, without.stderr  # repeated instance UIDs matter only to DICOM objects
    assert status(out, "P01")["run_id"] != finished  # other settings: redone, now without the DICOM files
    assert {p.name for p in dicom_scan.iterdir()} == {*SEGMENT_FILES, "status.json"}
    assert cohort(out)["P01"]["dicom_files"] == ""


# ---------------------------------------------------------------------------------------------- a mixed tree
@pytest.mark.slow
def test_mixed_tree_gives_one_row_per_scan_with_its_status(tmp_path, visible_human_head_dir, mr_series_dir):
    tree = tmp_path / "tree"
    write_phantom(tree / "P01.nii.gz", seed=1)
    nrrd = tree / "site2" / "P02.nrrd"
    nrrd.parent.mkdir(parents=True)
    volume, _ = make_leg_phantom(shape=(10, 96, 128), seed=2, contrast_vessels=True).to_volume()
    sitk.WriteImage(volume.image, str(nrrd))
    ct, _ = phantom_image()
    first, second = generate_uid(), generate_uid()
    write_dicom_series(ct, tree / "P03" / "study", series_uid=first, series_number=1, name_prefix="s1_")
    write_dicom_series(ct, tree / "P03" / "study", series_uid=second, series_number=2, name_prefix="s2_")
    truncate_file(write_phantom(tree / "broken.nii.gz", seed=4), keep_fraction=0.3)
    (tree / "head").symlink_to(visible_human_head_dir, target_is_directory=True)
    (tree / "mr").symlink_to(mr_series_dir, target_is_directory=True)
    (tree / "README.txt").write_text("cohort of the test")
    out = tmp_path / "out"

    done = batch(tree, "-o", out, "--engine", "threshold", "--workers", "2")

    assert done.returncode == 1, done.stderr  # some scans failed
    rows = cohort(out)
    assert set(rows) == {"P01", "site2_P02", "P03_study_s1", "P03_study_s2", "broken", "head", "mr"}
    assert {i for i, r in rows.items() if r["status"] == "ok"} == {"P01", "site2_P02", "P03_study_s1", "P03_study_s2"}
    assert "truncated" in rows["broken"]["error"]
    assert "no legs found" in rows["head"]["error"]
    assert "no CT series" in rows["mr"]["error"] and "MR" in rows["mr"]["error"]
    assert rows["P03_study_s1"]["series_uid"] == first and rows["P03_study_s2"]["series_uid"] == second
    assert rows["P03_study_s1"]["source"] == str(tree / "P03" / "study")
    assert "contrast_suspected" in rows["site2_P02"]["qc_flags"].split(";")
    assert "contrast_suspected" not in rows["P01"]["qc_flags"].split(";")
    # the failures are listed at the end, each with its reason
    listed = done.stderr.split("failed scans (3):")[1]
    assert all(f"  {i}: " in listed for i in ("broken", "head", "mr"))

    with open(out / "cohort.csv", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == results.COLUMNS
    for name in (
        "id",
        "patient",
        "source",
        "series_uid",
        "status",
        "error",
        "engine",
        "model",
        "first_slice",
        "last_slice",
        "V_SM_cm3",
        "mu_SM_hu",
        "R_SM_Fat",
        "left_V_SM_cm3",
        "right_mu_Fat_hu",
        "qc_flags",
        "seconds",
    ):
        assert name in results.COLUMNS
    published = visible_results(out)
    assert set(published) == set(rows) and not hidden_leftovers(out)

    # a scan of the batch is exactly what `segment` makes of it
    single = tmp_path / "single"
    assert (
        run_legsegnet("segment", tree / "P01.nii.gz", "-o", single, "--engine", "threshold", "--quiet").returncode == 0
    )
    expected = json.loads((single / "metrics.json").read_text())
    got = json.loads((out / "scans" / "P01" / "metrics.json").read_text())
    assert got["tissues"] == expected["tissues"] and got["legs"] == expected["legs"]
    assert float(rows["P01"]["V_SM_cm3"]) == pytest.approx(expected["tissues"]["SM"]["volume_cm3"], rel=1e-12)
    assert float(rows["P01"]["left_V_SAT_cm3"]) == pytest.approx(
        expected["legs"]["left"]["tissues"]["SAT"]["volume_cm3"]
    )


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_sigkill_mid_batch_loses_no_finished_scan_and_leaves_no_half_written_one(tmp_path):
    data = tmp_path / "data"
    for i in range(5):
        write_phantom(data / f"scan{i}.nii.gz", seed=10 + i, shape=(12, 112, 144))
    out = tmp_path / "out"
    proc = start_batch(data, "-o", out, "--engine", "threshold", "--workers", "1")
    try:
        for line in proc.stderr:  # wait until the first scan is reported done
            if line.startswith("[1/5]"):
                break
        else:
            pytest.fail(f"the batch ended before reporting a scan: {proc.wait()}")
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its Dask workers, at once
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finished = visible_results(out)  # every visible result is complete
    assert 1 <= len(finished) < 5, "the kill must land mid-batch"
    before = {scan_id: (state["run_id"], state["finished_at"]) for scan_id, state in finished.items()}

    again = batch(data, "-o", out, "--engine", "threshold", "--workers", "1")

    assert again.returncode == 0, again.stderr
    assert f"{len(finished)} done earlier" in again.stderr
    after = visible_results(out)
    assert set(after) == {f"scan{i}" for i in range(5)} and not hidden_leftovers(out)
    assert {scan_id: (after[scan_id]["run_id"], after[scan_id]["finished_at"]) for scan_id in before} == before
    rows = cohort(out)
    assert len(rows) == 5 and {r["status"] for r in rows.values()} == {"ok"}


@pytest.mark.slow
def test_changed_settings_or_input_redo_only_those_scans_and_failures_wait_for_retry_failed(tmp_path):
    data = tmp_path / "data"
    write_phantom(data / "a.nii.gz", seed=21)
    write_phantom(data / "b.nii.gz", seed=22)
    truncate_file(write_phantom(data / "bad.nii.gz", seed=23), keep_fraction=0.3)
    out = tmp_path / "out"

    def run_ids(*options) -> dict[str, str]:
        done = batch(data, "-o", out, "--engine", "threshold", "--workers", "1", *options)
        assert done.returncode == 1, done.stderr  # bad.nii.gz fails every time
        return {scan_id: state["run_id"] for scan_id, state in visible_results(out).items()}

    first = run_ids()
    assert run_ids() == first  # nothing changed: nothing redone, the failure kept
    ranged = run_ids("--slices", "2:7")  # a setting changed: every scan redone
    assert all(ranged[i] != first[i] for i in first)
    assert cohort(out)["a"]["first_slice"] == "2" and cohort(out)["a"]["last_slice"] == "7"

    write_phantom(data / "b.nii.gz", seed=99)  # one input changed: redone; the unchanged failure only on request
    changed = run_ids("--slices", "2:7", "--retry-failed")
    assert changed["b"] != ranged["b"] and changed["bad"] != ranged["bad"] and changed["a"] == ranged["a"]
    assert "truncated" in cohort(out)["bad"]["error"]


def test_the_largest_scans_start_first_and_equal_ones_keep_their_order(tmp_path):
    """A long scan found last would otherwise run alone at the end while the other workers wait. With one worker
    the scans finish in the order they were submitted: the largest input first, then the rest as found."""
    data = tmp_path / "data"
    write_phantom(data / "a.nii.gz", seed=1, shape=(4, 64, 64))
    write_phantom(data / "b.nii.gz", seed=1, shape=(4, 64, 64))  # a's size exactly: the stable order decides
    long_phantom(data / "z.nii.gz", 60)
    done = batch(data, "-o", tmp_path / "out", "--engine", "threshold", "--workers", "1")
    assert done.returncode == 0, done.stderr
    finished = re.findall(r"\[\d+/3\] ok\s+(\S+)", done.stderr)
    assert finished == ["z", "a", "b"], done.stderr
    assert list(cohort(tmp_path / "out")) == ["a", "b", "z"]  # cohort.csv keeps the order the scans were found in


def test_manifest_names_ids_patients_and_slice_ranges(tmp_path):
    write_phantom(tmp_path / "scans" / "one.nii.gz", seed=31)
    write_phantom(tmp_path / "scans" / "two.nii.gz", seed=32)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("scan,id,patient,slices\nscans/one.nii.gz,S-001,PAT7,1:6\nscans/two.nii.gz,S-002,PAT7,\n")
    out = tmp_path / "out"

    done = batch("--manifest", manifest, "-o", out, "--engine", "threshold", "--workers", "1", "--quiet")

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --quiet: no progress lines
    rows = cohort(out)
    assert list(rows) == ["S-001", "S-002"]
    assert rows["S-001"]["patient"] == rows["S-002"]["patient"] == "PAT7"
    assert (rows["S-001"]["first_slice"], rows["S-001"]["last_slice"]) == ("1", "6")
    assert (rows["S-002"]["first_slice"], rows["S-002"]["last_slice"]) == ("0", "9")
    assert rows["S-001"]["source"] == str(tmp_path / "scans" / "one.nii.gz")


# ---------------------------------------------------------------------------------------------- failure isolation
@pytest.mark.slow
def test_a_worker_killed_mid_scan_is_restarted_and_the_batch_goes_on(tmp_path):
    data = tmp_path / "data"
    long_phantom(data / "once.nrrd", 160)  # its worker is killed once: rerun on a restarted worker, then ok
    long_phantom(data / "twice.nrrd", 160)  # killed on both tries: marked failed
    for i in range(3):
        write_phantom(data / f"small{i}.nii.gz", seed=40 + i)
    out = tmp_path / "out"
    markers = out / ".batch" / "running"
    to_kill = {("once", 1), ("twice", 1), ("twice", 2)}
    killed: dict[tuple[str, int], int] = {}
    proc = start_batch(data, "-o", out, "--engine", "threshold", "--workers", "2")
    try:
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline:
            for marker in markers.glob("*.json") if markers.is_dir() else []:
                try:
                    running = json.loads(marker.read_text())
                except (OSError, ValueError):
                    continue  # finished (removed) meanwhile
                key = (running["id"], running["attempt"])
                if key in to_kill and key not in killed:
                    os.kill(running["pid"], signal.SIGKILL)  # the worker process, in the middle of this scan
                    killed[key] = running["pid"]
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert set(killed) == to_kill, (killed, stderr)
    assert proc.returncode == 1, stderr
    rows = cohort(out)
    assert {i: r["status"] for i, r in rows.items()} == {
        "once": "ok",
        "twice": "error",
        "small0": "ok",
        "small1": "ok",
        "small2": "ok",
    }
    assert rows["once"]["attempts"] == "2"
    assert "worker process died" in rows["twice"]["error"] and rows["twice"]["attempts"] == "2"
    assert visible_results(out) and not hidden_leftovers(out)


# ---------------------------------------------------------------------------------------------- clusters
def process_group(pgid: int) -> set[int]:
    """The live processes (not zombies) of a process group, read from /proc."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        state, _parent, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            members.add(int(entry.name))
    return members


def nothing_to_do_or_no_scans(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """(inputs, OUTDIR) of a batch with nothing left to do (run once already), or of a folder without scans."""
    data = tmp_path / "data"
    write_phantom(data / "a.nii.gz", seed=3, shape=(4, 64, 64))
    out = tmp_path / "out"
    if case == "nothing-to-do":
        assert batch(data, "-o", out, "--engine", "threshold", "--workers", "1").returncode == 0
        return data, out
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", out


@pytest.mark.parametrize("case", ["nothing-to-do", "no-scans-found"])
def test_a_quick_resume_or_discovery_failure_starts_no_cluster(tmp_path, case):
    """A resumed batch with nothing left to do, or one that finds no scans, starts no worker process at all
    (resuming a finished study of thousands of scans must not wait for a cluster)."""
    data, out = nothing_to_do_or_no_scans(tmp_path, case)
    proc = start_batch(data, "-o", out, "--engine", "threshold", "--workers", "2")
    started = set()  # the processes the command started, seen while it runs
    while proc.poll() is None:
        started |= process_group(proc.pid) - {proc.pid}
        time.sleep(0.005)
    stdout, stderr = proc.communicate()

    assert not started and not process_group(proc.pid), started
    if case == "nothing-to-do":
        assert proc.returncode == 0, stderr
        assert "0 to do, 1 done earlier" in stderr and "1 scan(s): 1 ok, 0 failed" in stdout
    else:
        assert proc.returncode == 2
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no scans found"), stderr
        assert not out.exists()


@pytest.mark.slow
def test_batch_on_a_dask_cluster_of_separate_processes(tmp_path):
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    processes = []
    client = None
    try:
        processes.append(
            subprocess.Popen(
                [
                    dask,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(scheduler_file),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 120
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert processes[0].poll() is None, "the scheduler died"
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for name in ("w1", "w2"):
            processes.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        name,
                        "--resources",
                        "scan=1",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        client = Client(address, timeout="60s")
        client.wait_for_workers(2, timeout=180)  # the scheduler reports both workers
        workers = set(client.scheduler_info()["workers"])
        data = tmp_path / "data"
        for i in range(3):
            write_phantom(data / f"c{i}.nii.gz", seed=50 + i)
        out = tmp_path / "out"

        done = batch(data, "-o", out, "--engine", "threshold", "--scheduler", address)

        assert done.returncode == 0, done.stderr
        assert f"Dask scheduler {address}: 2 worker(s)" in done.stderr
        ran_on = {state["worker"].split(" pid ")[0] for state in visible_results(out).values()}
        assert ran_on <= workers  # the scans ran on the cluster's workers, not in the command
        assert {r["status"] for r in cohort(out).values()} == {"ok"}
    finally:
        if client is not None:
            client.close()
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_slurm_job_script_asks_for_the_resources_and_runs_one_scan_per_worker(tmp_path):
    out = tmp_path / "out"
    done = batch(
        "-o",
        out,
        "--slurm",
        "--slurm-cores",
        "8",
        "--slurm-memory",
        "32GB",
        "--slurm-walltime",
        "12:00:00",
        "--slurm-partition",
        "gpu",
        "--slurm-account",
        "lab42",
        "--slurm-gpu",
        "--slurm-prologue",
        "module load cuda/12",
        "--print-job-script",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    script = done.stdout
    for line in (
        "#SBATCH --cpus-per-task=8",
        "#SBATCH -t 12:00:00",
        "#SBATCH -p gpu",
        "#SBATCH -A lab42",
        "#SBATCH --gres=gpu:1",
        "#SBATCH -J legsegnet",
        "module load cuda/12",
        "export LEGSEGNET_CPU_THREADS=8",
    ):
        assert line in script, line
    assert "#SBATCH --mem=30G" in script  # dask-jobqueue writes 32 GB as 30 GiB
    assert f"{sys.executable} -m distributed.cli.dask_worker" in script and "--nthreads 1" in script
    assert not out.exists()  # printing the script submits and writes nothing


def _slurm_ready() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (Debian: apt-get install slurm-wlm; see DEVELOPERS.md for a one-node setup)"
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or not {"idle", "mix"} & set(state.stdout.split()):
        return f"no idle Slurm node ({(state.stderr or state.stdout).strip() or 'sinfo shows none'})"
    return None


@pytest.mark.slow
def test_batch_runs_its_workers_as_slurm_jobs_and_replaces_a_job_that_ends(tmp_path):
    reason = _slurm_ready()
    if reason:
        pytest.skip(reason)
    data = tmp_path / "data"
    for i in range(4):
        write_phantom(data / f"s{i}.nii.gz", seed=60 + i)
    out = tmp_path / "out"
    proc = start_batch(
        data,
        "-o",
        out,
        "--engine",
        "threshold",
        "--slurm",
        "--workers",
        "1",
        "--slurm-cores",
        "1",
        "--slurm-memory",
        "2GB",
        "--slurm-walltime",
        "00:10:00",
        "--slurm-log-dir",
        tmp_path / "logs",
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("[1/4]"):  # a scan done: the job runs; end it (as a walltime or a node failure would)
                jobs = subprocess.run(["squeue", "-h", "-n", "legsegnet", "-o", "%i"], capture_output=True, text=True)
                assert jobs.stdout.split(), "no legsegnet job in the Slurm queue"
                subprocess.run(["scancel", *jobs.stdout.split()], check=True)
                break
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(lines) + stderr
    assert "Slurm: 1 job(s)" in "".join(lines)
    assert {r["status"] for r in cohort(out).values()} == {"ok"}
    assert len(list((tmp_path / "logs").glob("*.err"))) >= 2, "a new job replaced the one that ended"


# ---------------------------------------------------------------------------------------------- nnU-Net
@pytest.fixture(scope="module")
def png_model() -> Path:
    import nnunet_fixtures

    return nnunet_fixtures.get_model("png")


@pytest.mark.slow
def test_nnunet_batch_loads_the_model_once_per_worker_and_reports_confidence(tmp_path, png_model):
    data = tmp_path / "data"
    for i in range(3):
        write_phantom(data / f"n{i}.nii.gz", seed=70 + i, shape=(6, 96, 128))
    out = tmp_path / "out"

    done = batch(
        data, "-o", out, "--engine", "nnunet", "--model", png_model, "--device", "cpu", "--folds", "0", "--workers", "1"
    )

    assert done.returncode == 0, done.stderr
    states = visible_results(out)
    assert sorted(s["engine_cache"] for s in states.values()) == ["loaded", "reused", "reused"]
    assert len({s["worker"] for s in states.values()}) == 1
    rows = cohort(out)
    model_name = inspect_model_folder(png_model).name
    for row in rows.values():
        assert row["engine"] == "nnunet" and row["model"] == model_name
        assert 0.2 <= float(row["qc_confidence_mean"]) <= 1.0 and 0.0 <= float(row["qc_uncertain_fraction"]) <= 1.0
    profiles = sorted((out / "scans").glob("*/profile.csv"))
    assert len(profiles) == 3
    for profile in profiles:  # each scan's per-slice uncertainty, as `segment` writes it
        values = [r["uncertainty"] for r in csv.DictReader(profile.open())]
        assert len(values) == 6 and all(0.0 < float(v) < 1.0 for v in values), (profile, values)


# ---------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "arguments, message",
    [
        pytest.param([], "give the scans", id="no-inputs"),
        pytest.param(["{tmp}/missing"], "input not found", id="missing-input"),
        pytest.param(["--manifest", "{tmp}/nocolumn.csv"], "no 'scan' column", id="manifest-without-scan-column"),
        pytest.param(["--manifest", "{tmp}/dupes.csv"], "to several scans", id="manifest-duplicate-ids"),
        pytest.param(["--manifest", "{tmp}/badrange.csv"], "line 2: slices", id="manifest-bad-range"),
        pytest.param(
            ["{tmp}/data", "--scheduler", "tcp://127.0.0.1:1", "--slurm"], "not both", id="scheduler-and-slurm"
        ),
        pytest.param(
            ["{tmp}/data", "--engine", "nnunet", "--model", "{tmp}/nomodel"],
            "neither an existing model folder",
            id="missing-model",
        ),
        pytest.param(["{tmp}/data", "--workers", "0"], "at least 1", id="zero-workers"),
        pytest.param(
            ["{tmp}/data", "--scheduler", "tcp://127.0.0.1:9"],
            "cannot reach the Dask scheduler",
            id="unreachable-scheduler",
        ),
        pytest.param(["{tmp}/empty"], "no scans found", id="folder-without-scans"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line_and_write_nothing(tmp_path, arguments, message):
    (tmp_path / "nocolumn.csv").write_text("path\na.nii.gz\n")
    (tmp_path / "dupes.csv").write_text("scan,id\na.nii.gz,X\nb.nii.gz,X\n")
    (tmp_path / "badrange.csv").write_text("scan,slices\na.nii.gz,3-9\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing to see")
    write_phantom(tmp_path / "data" / "a.nii.gz", seed=1, shape=(3, 64, 64))
    out = tmp_path / "out"
    done = batch(*[a.format(tmp=tmp_path) for a in arguments], "-o", out, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not out.exists()


def test_checkpoint_and_precision_reach_the_workers_engine_and_the_resume_key(tmp_path, png_model):
    """segment's --checkpoint and --precision mean the same in a batch: the workers' engine gets them, a model
    lacking the checkpoint is refused before any scan is submitted, and changing either redoes the scans."""
    from LegSegNetLib.batch.settings import resolve
    from LegSegNetLib.core.errors import InputError

    def settings(model=png_model, **options):
        return resolve("nnunet", str(model), "cpu", [0], None, None, None, False, **options)

    plain, chosen = settings(), settings(checkpoint="final", precision="bf16")
    engine = chosen.make_engine()
    assert (engine.info()["checkpoint"], engine.info()["precision"]) == ("final", "bf16")
    assert engine.checkpoint_files == [str(png_model / "fold_0" / "checkpoint_final.pth")]
    assert len({plain.key(None), chosen.key(None), settings(checkpoint="final").key(None)}) == 3
    assert plain.engine_key() != chosen.engine_key()  # a worker does not reuse the other settings' engine

    lacking = shutil.copytree(png_model, tmp_path / "model")
    (lacking / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(InputError, match="checkpoint_final"):
        settings(lacking, checkpoint="final")
