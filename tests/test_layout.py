"""The package's layers: a lower part never imports a higher one (DEVELOPERS.md shows the map).

Every import in LegSegNetLib, including those inside functions, is read from the source (no code runs) and
resolved to the part of the package it names. A new subpackage must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "LegSegNet" / "LegSegNetLib"

# Bottom first. A part may import its own layer and the layers below it, never one above.
LAYERS = [
    {"core"},  # errors, tissues, progress, the output-set writer, small helpers
    {"scan"},  # CTVolume and the readers
    {"anatomy"},  # body and bone masks, legs, the axial range
    {"models"},  # model folders, checkpoints, the store
    {"engines"},  # threshold and nnU-Net
    {"measurement"},  # quantification, output files, DICOM SEG/SR
    {"pipeline", "phantom", "evaluation"},  # one scan through the steps; ground truth; comparing label maps
    {"annotation"},  # review sampling, training sets, training
    {"batch"},  # cohorts on Dask
    {"cli"},  # the `legsegnet` command line
    {"worker"},  # the worker process (wraps the CLI's commands) and its launcher
    {"slicer_logic"},  # the Slicer side, on MRML
]
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}
SLICER_ONLY = {"slicer", "vtk", "qt", "ctk", "mrml", "vtkSegmentationCore", "vtkSlicerSegmentationsModuleMRML"}


def _part(module: str) -> str | None:
    """'LegSegNetLib.scan.volume_io' -> 'scan'; the package itself (its __version__) -> None."""
    names = module.split(".")
    return names[1] if names[0] == "LegSegNetLib" and len(names) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved."""
    module = ".".join(path.relative_to(LIB.parent).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            # `from . import scan` names a subpackage: count each name that is a part of the package
            found += [
                (node.lineno, f"{target}.{alias.name}" if target == "LegSegNetLib" else target) for alias in node.names
            ]
    return found


def _sources():
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_part_of_the_package_has_a_layer():
    parts = {p.relative_to(LIB).parts[0].removesuffix(".py") for p in _sources()} - {"__init__"}
    assert parts <= set(LAYER_OF), f"give these a layer in {__file__}: {sorted(parts - set(LAYER_OF))}"


def test_no_part_imports_a_higher_layer():
    problems = []
    for path in _sources():
        own = path.relative_to(LIB).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for line, module in _imports(path):
            target = _part(module)
            if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[own]:
                problems.append(f"{path.relative_to(LIB)}:{line} ({own}) imports {module} ({target}, a higher layer)")
    assert not problems, "\n".join(problems)


def test_only_the_slicer_side_imports_slicer_vtk_or_qt():
    problems = [
        f"{path.relative_to(LIB)}:{line} imports {module}"
        for path in _sources()
        if path.relative_to(LIB).parts[0] != "slicer_logic"
        for line, module in _imports(path)
        if module.split(".")[0] in SLICER_ONLY
    ]
    assert not problems, "\n".join(problems)


def test_the_model_store_does_not_import_the_engines():
    # engines load models; the store validates models without running them (no circle through torch code)
    problems = [
        f"{p.relative_to(LIB)}:{line}"
        for p in (LIB / "models").rglob("*.py")
        for line, module in _imports(p)
        if _part(module) == "engines"
    ]
    assert not problems, problems


@pytest.mark.parametrize("lower, higher", [("core", "scan"), ("engines", "cli"), ("scan", "slicer_logic")])
def test_the_check_catches_an_upward_import(tmp_path, monkeypatch, lower, higher):
    # the rule must be able to fail: plant an upward import in a copy of one file and look again
    victim = next((LIB / lower).rglob("*.py")) if (LIB / lower).is_dir() else LIB / f"{lower}.py"
    copy_root = tmp_path / "LegSegNetLib"
    import shutil

    shutil.copytree(LIB, copy_root, ignore=shutil.ignore_patterns("__pycache__"))
    planted = copy_root / victim.relative_to(LIB)
    planted.write_text(planted.read_text(encoding="utf-8") + f"\nfrom LegSegNetLib.{higher} import something\n")
    monkeypatch.setattr(__import__(__name__), "LIB", copy_root)
    with pytest.raises(AssertionError, match=f"imports LegSegNetLib.{higher}"):
        test_no_part_imports_a_higher_layer()
