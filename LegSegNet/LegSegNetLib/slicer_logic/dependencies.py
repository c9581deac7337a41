"""What Python packages an engine needs, what is missing, and how to install it without harming Slicer.

The decision is made here (testable, no Qt); the Slicer widget only shows `InstallPlan.message()` in
one confirmation dialog and then runs the plan. Rules:

- the threshold engine needs only what Slicer ships (numpy, scipy, SimpleITK), plus `filelock` (pure Python,
  the training set's lock; nnU-Net brings it too), offered in the same dialog as matplotlib for the reports;
- the nnU-Net engine needs PyTorch and nnunetv2. PyTorch comes from the "PyTorch Utils" extension
  when it is installed (it picks the CUDA build matching the driver), otherwise from pip;
- Slicer's own packages (numpy, SimpleITK, VTK, requests, ...) are never upgraded: pip gets a
  constraints file pinning each of them to the version installed now;
- a restart is needed only when a package being installed is already imported in the running
  process. The engines run in a separate worker process, so a fresh install is usable at once.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

# Packages Slicer itself depends on: pinned while installing anything else.
PROTECTED_DISTRIBUTIONS: tuple[str, ...] = ("numpy", "SimpleITK", "vtk", "requests", "scipy", "pydicom")

TORCH_MINIMUM = "2.1"
LIGHT_THE_TORCH = "light-the-torch>=0.5"  # what the PyTorch Utils extension installs torch with


@dataclass(frozen=True)
class Requirement:
    distribution: str  # name on PyPI
    module: str  # import name
    minimum: str | None = None
    why: str = ""

    @property
    def pip_spec(self) -> str:
        return f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution


BASE_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("numpy", "numpy", "1.24", "arrays"),
    Requirement("scipy", "scipy", "1.10", "image morphology of the threshold engine"),
    Requirement("SimpleITK", "SimpleITK", "2.3", "reading and writing images"),
    Requirement("filelock", "filelock", "3.12", "the training set's lock (Add to training set)"),
)
REPORT_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("matplotlib", "matplotlib", "3.7", "overlay.png and profile.png reports"),
)
TORCH = Requirement("torch", "torch", TORCH_MINIMUM, "neural network inference")
NNUNET_REQUIREMENTS: tuple[Requirement, ...] = (
    TORCH,
    Requirement("nnunetv2", "nnunetv2", "2.5", "the nnU-Net engine"),
)

VersionLookup = Callable[[str], "str | None"]


def installed_version(distribution: str) -> str | None:
    """Version of an installed distribution, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric parts of a version ('2.5.1+cu121' -> (2, 5, 1)); enough for minimum checks."""
    parts = []
    for piece in re.split(r"[.+\-]", version):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def is_satisfied(requirement: Requirement, version_of: VersionLookup = installed_version) -> bool:
    version = version_of(requirement.distribution)
    if version is None:
        return False
    return requirement.minimum is None or version_tuple(version) >= version_tuple(requirement.minimum)


def requirements_for(engine: str, with_reports: bool = True) -> tuple[Requirement, ...]:
    """Everything the worker needs for `engine` ('auto' counts as threshold: it falls back to it)."""
    if engine not in ("auto", "threshold", "nnunet"):
        raise ValueError(f"unknown engine '{engine}'")
    needed = BASE_REQUIREMENTS + (REPORT_REQUIREMENTS if with_reports else ())
    if engine == "nnunet":
        needed += NNUNET_REQUIREMENTS
    return needed


def missing_requirements(
    requirements: Iterable[Requirement], version_of: VersionLookup = installed_version
) -> list[Requirement]:
    return [r for r in requirements if not is_satisfied(r, version_of)]


def protected_constraints(version_of: VersionLookup = installed_version) -> list[str]:
    """`name==version` for each of Slicer's own packages that is installed: pip may not change them."""
    pins = []
    for distribution in PROTECTED_DISTRIBUTIONS:
        version = version_of(distribution)
        if version:
            pins.append(f"{distribution}=={version}")
    return pins


@dataclass
class InstallPlan:
    engine: str
    missing: list[Requirement]
    torch_via_pytorch_utils: bool  # install torch through the PyTorch Utils extension
    pip_requirements: list[str]  # what pip installs (torch excluded when PyTorch Utils does it)
    constraints: list[str] = field(default_factory=list)  # pins of Slicer's own packages
    restart_needed: bool = False
    blocked: list[str] = field(default_factory=list)  # protected packages that are missing or too old
    light_the_torch_installed: bool = False  # PyTorch Utils' installer is there already

    @property
    def is_empty(self) -> bool:
        return not self.missing

    def message(self) -> str:
        """The text of the one confirmation dialog."""
        if self.is_empty:
            return f"Everything the {self.engine} engine needs is installed."
        lines = [f"The {self.engine} engine needs these Python packages, which are not installed yet:", ""]
        for requirement in self.missing:
            source = "PyTorch Utils extension (matching CUDA build)" if (
                requirement is TORCH and self.torch_via_pytorch_utils
            ) else "pip"
            lines.append(f"  - {requirement.pip_spec} ({requirement.why}; from {source})")
        lines.append("")
        if self.constraints:
            lines.append("Slicer's own packages stay as they are: " + ", ".join(self.constraints) + ".")
        lines.append("This downloads several hundred MB and can take minutes.")
        if self.restart_needed:
            lines.append("Slicer must be restarted afterwards (a package being replaced is already loaded).")
        if self.blocked:
            lines.append(
                "Cannot proceed: " + ", ".join(self.blocked) + " would have to change, which would break Slicer; "
                "install a newer Slicer instead."
            )
        lines.append("")
        lines.append("Install now?")
        return "\n".join(lines)

    def pip_install_arguments(self, constraints_file: str | Path | None = None) -> list[str]:
        """What follows `pip install` (the list slicer.util.pip_install takes) for the plan's pip part."""
        if not self.pip_requirements:
            return []
        arguments = list(self.pip_requirements)
        if constraints_file is not None:
            arguments += ["--constraint", str(constraints_file)]
        return arguments

    def install_steps(self, constraints_file: str | Path | None = None) -> list[dict]:
        """The plan as steps for the worker's `install-packages` command (worker/install.py), which runs
        them in the worker's interpreter so that Slicer's GUI stays responsive. PyTorch, when the PyTorch
        Utils extension is there, is installed the way that extension does it (light-the-torch, which
        picks the CUDA build matching the driver), but without blocking the GUI."""
        constraint = ["--constraint", str(constraints_file)] if constraints_file is not None else []
        steps: list[dict] = []
        if self.torch_via_pytorch_utils:
            if not self.light_the_torch_installed:
                steps.append({"label": "installing light-the-torch", "module": "pip",
                              "arguments": ["install", LIGHT_THE_TORCH, *constraint]})
            steps.append({"label": f"installing {TORCH.pip_spec} (matching CUDA build)", "module": "light_the_torch",
                          "arguments": ["install", TORCH.pip_spec, *constraint]})
        if self.pip_requirements:
            steps.append({"label": "installing " + ", ".join(self.pip_requirements), "module": "pip",
                          "arguments": ["install", *self.pip_install_arguments(constraints_file)]})
        return steps

    def write_constraints(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text("".join(f"{pin}\n" for pin in self.constraints), encoding="utf-8")
        return path


def plan_install(
    engine: str,
    pytorch_utils_available: bool,
    version_of: VersionLookup = installed_version,
    loaded_modules: Mapping[str, object] | None = None,
    with_reports: bool = True,
) -> InstallPlan:
    """What to install for `engine`, from where, under which constraints, and whether to restart."""
    loaded = sys.modules if loaded_modules is None else loaded_modules
    missing = missing_requirements(requirements_for(engine, with_reports), version_of)
    protected = {name.lower() for name in PROTECTED_DISTRIBUTIONS}
    blocked = [r.pip_spec for r in missing if r.distribution.lower() in protected]
    torch_missing = TORCH in missing
    via_utils = torch_missing and pytorch_utils_available
    pip_requirements = [r.pip_spec for r in missing if not (r is TORCH and via_utils) and r.pip_spec not in blocked]
    restart = any(r.module in loaded for r in missing)
    return InstallPlan(
        engine=engine,
        missing=missing,
        torch_via_pytorch_utils=via_utils,
        pip_requirements=pip_requirements,
        constraints=protected_constraints(version_of),
        restart_needed=restart,
        blocked=blocked,
        light_the_torch_installed=version_of("light-the-torch") is not None,
    )
