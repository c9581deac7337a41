"""Argument handling of the real `legsegnet` console script: one `error:` line, exit 2, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        ([], "required"),
        (["segment"], "required"),
        (["segment", "x.nii.gz"], "-o/--outdir"),
        (["segment", "x.nii.gz", "-o", "out", "--engine", "magic"], "invalid choice"),
        (["segment", "x.nii.gz", "-o", "out", "--folds", "a,b"], "--folds"),
        (["segment", "x.nii.gz", "-o", "out", "--batch-size", "0"], "at least 1"),
        (["segment", "x.nii.gz", "-o", "out", "--tta", "--no-tta"], "not allowed"),
        (["segment", "x.nii.gz", "-o", "out", "--checkpoint", "latest"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_error_line_and_exit_2(args, needle, tmp_path):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_help_and_version_exit_0():
    assert run_cli("--help").returncode == 0
    version = run_cli("--version")
    assert version.returncode == 0 and "legsegnet" in version.stdout


def test_console_script_is_installed():
    exe = shutil.which("legsegnet") or str(__import__("pathlib").Path(sys.executable).with_name("legsegnet"))
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
