"""Which Python each part of the package needs: checked statically (vermin) and by running on this interpreter.

3D Slicer 5.6 and 5.8 ship Python 3.9, Slicer 5.10 and newer ship 3.12. Everything that runs inside Slicer's
Python (the module, the Slicer logic, the worker, the threshold engine, measurement, reading and writing files)
must work on 3.9. The nnU-Net engine and training need 3.10 (nnunetv2 and the PyTorch releases it is tested
with) and say so when chosen on 3.9. `make test` runs this file with a lean part of the suite under Python 3.9
and 3.12 too (Makefile: test-slicer-pythons), where the checks that depend on the interpreter take the other
branch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from LegSegNetLib.core.errors import InputError
from LegSegNetLib.engines import NNUNET_MIN_PYTHON, choose_engine, nnunet_python_problem

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LegSegNet"
LIB = MODULE_DIR / "LegSegNetLib"
SLICER_MINIMUM = (3, 9)  # the Python of 3D Slicer 5.6, the oldest Slicer the extension supports
# Parts that run only with nnU-Net (never needed by the threshold engine or the Slicer logic): they may use 3.10.
NEEDS_NNUNET_PYTHON = ("engines/nnunet.py", "annotation/training.py", "batch/")
BATCH_EXTRA = ("dask", "distributed", "dask_jobqueue")  # pyproject's `batch` extra, not in Slicer's Python
SLICER_PYTHON = {"5.6": "3.9", "5.8": "3.9", "5.10": "3.12"}  # what each 3D Slicer release ships


def _version(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v))


def _python_files() -> list[Path]:
    return sorted(p for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _needs_nnunet_python(path: Path) -> bool:
    relative = path.relative_to(LIB).as_posix() if LIB in path.parents else ""
    return any(relative.startswith(part) for part in NEEDS_NNUNET_PYTHON)


def _vermin(target: tuple[int, int], files: list[Path]) -> subprocess.CompletedProcess:
    """vermin's verdict on `files` for Python `target` and newer (annotations are not evaluated: every module
    that writes `X | None` in annotations has `from __future__ import annotations`, checked below)."""
    pytest.importorskip("vermin", reason="vermin (the test extra) is needed for the static version check")
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, vermin; sys.exit(vermin.main())",
            "--no-config-file",
            f"-t={_version(target)}-",
            "--violations",
            "--no-tips",
            "--no-make-paths-absolute",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------------- static: vermin
def test_everything_slicer_runs_needs_no_newer_python_than_slicer_5_6_ships():
    files = [p for p in _python_files() if not _needs_nnunet_python(p)]
    assert len(files) > 40 and MODULE_DIR / "LegSegNet.py" in files
    done = _vermin(SLICER_MINIMUM, files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_nnunet_parts_need_no_newer_python_than_nnunet_does():
    files = [p for p in _python_files() if _needs_nnunet_python(p)]
    assert files
    done = _vermin(NNUNET_MIN_PYTHON, files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_static_check_catches_what_python_3_9_lacks(tmp_path):
    # what broke every Apply on Slicer 5.6/5.8: zip(..., strict=True) in the measurement
    source = tmp_path / "measure.py"
    source.write_text("def columns(names, values):\n    return dict(zip(names, values, strict=True))\n")
    done = _vermin(SLICER_MINIMUM, [source])
    assert done.returncode != 0 and "measure.py" in done.stdout and "zip(strict)" in done.stdout


def _evaluated_union_annotations(tree: ast.Module) -> list[int]:
    """Lines where `X | Y` stands in an annotation that Python evaluates (no `from __future__ import
    annotations`), or in isinstance/issubclass: both need Python 3.10 at run time, which vermin does not see."""
    future = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    lines = []
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not future:
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            annotations = [a.annotation for a in arguments] + [node.returns]
        elif isinstance(node, ast.AnnAssign) and not future:
            annotations = [node.annotation]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            annotations = [node.args[1]]
        for annotation in annotations:
            if annotation is not None and any(
                isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation)
            ):
                lines.append(annotation.lineno)
    return lines


def test_no_union_type_is_evaluated_at_run_time():
    found = {
        p.relative_to(ROOT).as_posix(): lines
        for p in _python_files()
        if not _needs_nnunet_python(p)
        if (lines := _evaluated_union_annotations(ast.parse(p.read_text(encoding="utf-8"))))
    }
    assert found == {}


def test_the_union_check_catches_an_evaluated_annotation():
    assert _evaluated_union_annotations(ast.parse("def f(x: int | None): pass")) == [1]
    assert _evaluated_union_annotations(ast.parse("ok = isinstance(1, int | str)")) == [1]
    assert (
        _evaluated_union_annotations(ast.parse("from __future__ import annotations\ndef f(x: int | None): pass")) == []
    )


# ---------------------------------------------------------------------- on this interpreter
def _modules() -> list[str]:
    names = []
    for path in sorted(LIB.rglob("*.py")):
        if "__pycache__" in path.parts or path.name == "__main__.py":
            continue
        parts = path.relative_to(MODULE_DIR).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_on_this_python():
    """All of LegSegNetLib imports here, on Slicer's Pythons too (heavy packages are imported where used).
    The Slicer logic needs MRML: with slicer-core it imports like the rest; without it (no wheel for 3.9)
    only its own missing MRML may stop it."""
    mrml = importlib.util.find_spec("slicer") is not None and importlib.util.find_spec("vtk") is not None
    failed = {}
    for name in _modules():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if ".batch." in name and exc.name in BATCH_EXTRA:
                continue  # `legsegnet batch` is a command-line tool with its own extra; Slicer never runs it
            if mrml or ".slicer_logic." not in name or exc.name not in ("vtk", "slicer"):
                failed[name] = repr(exc)
        except Exception as exc:  # noqa: BLE001 - any import failure is reported by name
            failed[name] = repr(exc)
    assert failed == {}


def test_the_nnunet_engine_says_which_python_it_needs_when_chosen(tmp_path):
    if sys.version_info[:2] >= NNUNET_MIN_PYTHON:
        assert choose_engine("nnunet") == "nnunet" and nnunet_python_problem() is None
    else:  # Slicer 5.6 / 5.8: refused with the versions named, the threshold engine still there
        with pytest.raises(InputError) as caught:
            choose_engine("nnunet")
        assert "Python 3.10" in str(caught.value) and "Slicer 5.10" in str(caught.value)
        with pytest.raises(InputError):
            choose_engine("auto", model="some-model")
        assert choose_engine("threshold") == "threshold"
    message = nnunet_python_problem((3, 9, 18))
    assert "Python 3.10 or newer" in message and "this is Python 3.9" in message and "threshold engine" in message
    assert nnunet_python_problem((3, 10, 0)) is None and nnunet_python_problem((3, 12, 1)) is None


def test_the_command_line_refuses_nnunet_on_an_old_python_with_one_error_line(tmp_path):
    if sys.version_info[:2] >= NNUNET_MIN_PYTHON:
        pytest.skip("runs under Python 3.9 (make test's Slicer 5.6/5.8 run); this Python can run nnU-Net")
    import SimpleITK as sitk

    from LegSegNetLib.phantom import make_leg_phantom

    volume, _ = make_leg_phantom(shape=(3, 96, 128), seed=1).to_volume()
    sitk.WriteImage(volume.image, str(tmp_path / "ct.nrrd"))
    for command in (
        ["segment", str(tmp_path / "ct.nrrd"), "-o", str(tmp_path / "out"), "--engine", "nnunet"],
        ["train", str(tmp_path / "dataset")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "LegSegNetLib.cli", *command], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Python 3.10" in errors[0] and "Slicer 5.10" in errors[0], done.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- what is declared
def test_the_declared_versions_agree():
    """pyproject's requires-python is the Python of the oldest supported Slicer; the README and the extension's
    description name that Slicer and the one nnU-Net needs; CMake refuses to build for an older Slicer."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=3\.9"(\s*#.*)?$', pyproject, re.M)
    nnunet_extra = re.search(r"^nnunet = \[(.*)\]$", pyproject, re.M).group(1)
    assert nnunet_extra.count("python_version >= '3.10'") == nnunet_extra.count('"') // 2  # each package marked
    cmake = (ROOT / "CMakeLists.txt").read_text()
    minimum = re.search(r'set\(LegSegNet_MINIMUM_SLICER_VERSION "(\d+\.\d+)"\)', cmake)
    assert minimum and SLICER_PYTHON[minimum.group(1)] == _version(SLICER_MINIMUM)
    assert re.search(
        r"if\(Slicer_VERSION VERSION_LESS \$\{LegSegNet_MINIMUM_SLICER_VERSION\}\)\s*message\(FATAL_ERROR", cmake
    )
    nnunet_slicer = next(v for v, py in SLICER_PYTHON.items() if tuple(map(int, py.split("."))) >= NNUNET_MIN_PYTHON)
    description = re.search(r'set\(EXTENSION_DESCRIPTION "([^"]*)"\)', cmake).group(1)
    assert f"3D Slicer {minimum.group(1)} or newer" in description and f"Slicer {nnunet_slicer}" in description
    readme = (ROOT / "README.md").read_text()
    assert f"3D Slicer {minimum.group(1)} or newer" in readme and f"3D Slicer {nnunet_slicer} or newer" in readme
