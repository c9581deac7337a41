"""Reading input a careless or hostile user hands over, through the real `legsegnet` command (a subprocess).

Cases the bad-input table cannot hold because they need more than a bad file: an output folder under a path
that is not UTF-8, a DICOM series that does not say its pixel size (a note, not a refusal), a process with
too little memory (`ulimit -v`), and an input the user may not read (as root the test drops the capabilities
that let root read everything).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
import writers as w


def _assert_one_error_line(result: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"exit {result.returncode}: {result.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr was: {result.stderr!r}"
    assert pattern in lines[0], lines[0]
    return lines[0]


def _cli(*args, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        **popen,
    )


# ------------------------------------------------------------------------- a path that is not UTF-8
def test_an_output_folder_under_a_non_utf8_path_is_refused_before_any_work(tmp_path):
    # the staging folder goes beside OUTDIR, and SimpleITK's C++ code aborted (exit 134) writing labels there
    parent = tmp_path / os.fsdecode(b"results-\xff")
    try:
        parent.mkdir()
    except OSError as exc:  # e.g. macOS (APFS) allows only UTF-8 names: the case cannot happen there
        pytest.skip(f"this file system refuses non-UTF-8 file names ({exc})")
    ct = w.write_image(w.leg_image(), tmp_path / "ct.nii.gz")
    result = _cli("segment", ct, "-o", parent / "out", "--engine", "threshold", "--quiet")
    line = _assert_one_error_line(result, 2, "not UTF-8")
    assert "results-\\xff" in line  # the byte shown, so the user finds the folder to rename
    assert list(parent.iterdir()) == []  # no staging folder, no marker, no OUTDIR


# ------------------------------------------------------------------------- DICOM pixel size
def test_a_dicom_series_without_pixel_spacing_is_read_with_a_note_saying_the_assumption(tmp_path):
    paths = w.write_dicom_series(w.leg_image(), tmp_path / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing
        ds.save_as(path)
    result = _cli("segment", tmp_path / "series", "-o", tmp_path / "out", "--engine", "threshold", "--quiet")
    assert result.returncode == 0, result.stderr
    notes = json.loads((tmp_path / "out" / "metrics.json").read_text())["notes"]
    said = [n for n in notes if "PixelSpacing" in n]
    assert said and "1 x 1 mm" in said[0], notes


# ------------------------------------------------------------------------- too little memory
_PEAK_OF_A_SMALL_RUN = """
import runpy, sys
try:
    runpy.run_module("LegSegNetLib.cli", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    assert not exc.code, exc.code
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmPeak:")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux: /proc and an enforced RLIMIT_AS")
def test_too_little_memory_says_not_enough_memory_and_what_to_do(tmp_path):
    # OpenBLAS sizes one buffer per thread at import and loops forever when they do not fit: one thread
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    small = w.write_image(w.leg_image(), tmp_path / "small.nii.gz")
    calibration = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK_OF_A_SMALL_RUN,
            "segment",
            small,
            "-o",
            tmp_path / "small-out",
            "--engine",
            "threshold",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert calibration.returncode == 0, calibration.stderr
    peak = int(calibration.stdout.split()[-1]) * 1024  # everything a run imports and keeps, on a tiny scan
    # 315 MB of voxels (a constant compresses to 1.4 MB): far more than the run gains beyond the small one's peak,
    # so reading the voxels is what fails, not some later step
    hu = sitk.Image([512, 512, 600], sitk.sitkInt16)
    big = w.write_image(hu - 1000, tmp_path / "big.nii.gz")
    limit = peak + (32 << 20)  # enough to start and read the header

    def low_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = _cli(
        "segment", big, "-o", tmp_path / "out", "--engine", "threshold", "--quiet", preexec_fn=low_memory, env=env
    )
    line = _assert_one_error_line(result, 1, "not enough memory")
    assert "corrupt" not in line and "truncated" not in line
    assert "crop" in line or "--slices" in line  # says what to do
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- an input the user may not read
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _as_a_user_who_may_not_read() -> dict:
    """subprocess arguments under which file permissions hold: root reads every file regardless, so as root
    the command runs without the two capabilities that let it (dropped from the bounding set before exec;
    it stays uid 0 and can still reach the interpreter under /root)."""
    if os.geteuid() != 0:
        return {}
    if not sys.platform.startswith("linux"):
        pytest.skip("running as root, and dropping root's file-access capabilities is set up for Linux only")
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop_file_access_override():
        for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return {"preexec_fn": drop_file_access_override}


def _unreadable_file(folder: Path) -> tuple[Path, list]:
    ct = w.write_image(w.leg_image(), folder / "ct.nii.gz")
    ct.chmod(0o000)
    return ct, ["segment", ct, "--engine", "threshold"]


def _unreadable_dicom_folder(folder: Path) -> tuple[Path, list]:
    w.write_dicom_series(w.leg_image(), folder / "series")
    (folder / "series").chmod(0o000)
    return folder / "series", ["segment", folder / "series", "--engine", "threshold"]


def _unreadable_slice_in_a_dicom_folder(folder: Path) -> tuple[Path, list]:
    paths = w.write_dicom_series(w.leg_image(), folder / "series")
    paths[4].chmod(0o000)
    return paths[4], ["segment", folder / "series", "--engine", "threshold"]


def _unreadable_label_map(folder: Path) -> tuple[Path, list]:
    legs = w.leg_image()
    ct = w.write_image(legs, folder / "ct.nii.gz")
    labels = w.write_image(sitk.Cast(legs > 0, sitk.sitkUInt8), folder / "labels.nii.gz")
    labels.chmod(0o000)
    return labels, ["quantify", ct, labels]


@pytest.mark.parametrize(
    "make",
    [_unreadable_file, _unreadable_dicom_folder, _unreadable_slice_in_a_dicom_folder, _unreadable_label_map],
    ids=["file", "dicom-folder", "dicom-slice", "label-map"],
)
def test_an_input_the_user_may_not_read_says_permission_denied(tmp_path, make):
    denied, argv = make(tmp_path)
    try:
        result = _cli(*argv, "-o", tmp_path / "out", "--quiet", **_as_a_user_who_may_not_read())
    except subprocess.SubprocessError as exc:  # raised here when preexec_fn failed in the child
        pytest.skip(f"this container does not let root drop its file-access capabilities ({exc})")
    finally:
        denied.chmod(0o700)  # so that pytest can clean up
    _assert_one_error_line(result, 2, f"permission denied: {denied}")
    assert not (tmp_path / "out").exists()
