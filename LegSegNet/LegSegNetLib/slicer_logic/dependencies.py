"""What Python packages an engine needs, what is missing, and how to install it without harming Slicer.

The decision is made here (testable, no Qt); the Slicer widget only shows the messages in dialogs and runs
the steps in the worker (never on Slicer's GUI thread). Rules:

- the threshold engine needs only what Slicer ships (numpy, scipy, SimpleITK). matplotlib is never asked
  for: the module shows its numbers as Slicer tables and plots, and the worker skips the PNG figures
  without it;
- the nnU-Net engine needs Python 3.10 (3D Slicer 5.10 or newer), PyTorch and nnunetv2. PyTorch comes only
  through the "PyTorch" extension (PyTorch Utils), as SlicerNNUnet and SlicerTotalSegmentator do: it is a
  dependency of this extension, and when it is missing (e.g. the module was added from a folder) the plan's
  first step is installing it from the Extension Manager and restarting. PyTorch Utils installs torch
  with light-the-torch, which picks the build for the computer's GPU driver; the worker runs that same
  installer, so Slicer's GUI stays responsive. torch never comes from plain pip here (CPU-only on Windows,
  a multi-GB CUDA build on Linux);
- the pip part is first resolved without installing (`pip install --dry-run --report`), the dialog lists
  exactly the distributions that report names (with the versions they replace), and exactly those are
  installed (`--no-deps`, pinned); a list that touches one of Slicer's own packages is refused;
- Slicer's own packages (numpy, SimpleITK, VTK, requests, ...) are never changed: pip gets a constraints
  file pinning each of them to the version installed now, and any change to them is refused (VTK is no pip
  distribution inside Slicer, so a package needing `vtk` from PyPI is refused by name);
- a restart is needed only when a package being installed is already imported in the running
  process. The engines run in a separate worker process, so a fresh install is usable at once.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..engines import nnunet_python_problem

# Packages Slicer itself depends on: pinned while installing anything else, and never in a change list.
PROTECTED_DISTRIBUTIONS: tuple[str, ...] = ("numpy", "SimpleITK", "vtk", "requests", "scipy", "pydicom")

TORCH_MINIMUM = "2.1"
LIGHT_THE_TORCH = "light-the-torch>=0.5"  # what the PyTorch Utils extension installs torch with
PYTORCH_EXTENSION = "PyTorch"  # the Slicer extension that holds the PyTorch Utils module


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


def at_least(version: str, minimum: str) -> bool:
    """`version` >= `minimum` as pip compares them (PEP 440, `packaging`, which Slicer ships): '2.5.1+cu121' is
    2.5.1, '1.26.4rc1' comes before 1.26.4. A version that is not PEP 440 does not count as new enough."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) >= Version(minimum)
    except InvalidVersion:
        return False


def normalized_name(distribution: str) -> str:
    """PEP 503 form of a distribution name ('SimpleITK' -> 'simpleitk', 'light_the.torch' -> 'light-the-torch')."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def is_satisfied(requirement: Requirement, version_of: VersionLookup = installed_version) -> bool:
    version = version_of(requirement.distribution)
    if version is None:
        return False
    return requirement.minimum is None or at_least(version, requirement.minimum)


def requirements_for(engine: str) -> tuple[Requirement, ...]:
    """Everything the worker needs for `engine` ('auto' counts as threshold: it falls back to it)."""
    if engine not in ("auto", "threshold", "nnunet"):
        raise ValueError(f"unknown engine '{engine}'")
    return BASE_REQUIREMENTS + (NNUNET_REQUIREMENTS if engine == "nnunet" else ())


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


# ---------------------------------------------------------------------- exactly what changes
@dataclass(frozen=True)
class PackageChange:
    """One distribution an install would add or replace: pip's resolution, before anything is installed."""

    name: str
    version: str
    installed: str | None = None  # the version it replaces, None for a new one

    def describe(self) -> str:
        return f"{self.name} {self.version}" + (f" (replaces {self.installed})" if self.installed else " (new)")


def changes_from_pip_report(report: Mapping, version_of: VersionLookup = installed_version) -> list[PackageChange]:
    """The distributions a `pip install --dry-run --report` report says would be installed, sorted by name."""
    changes = []
    for item in report.get("install", []):
        metadata = item.get("metadata", {})
        name, version = metadata.get("name"), metadata.get("version")
        if not name or not version:
            raise ValueError("pip's installation report lists a package without a name or version")
        changes.append(PackageChange(name, version, version_of(name)))
    return sorted(changes, key=lambda c: normalized_name(c.name))


def protected_changes(changes: Iterable[PackageChange]) -> list[PackageChange]:
    """The changes that would touch one of Slicer's own packages (these are refused)."""
    protected = {normalized_name(n) for n in PROTECTED_DISTRIBUTIONS}
    return [c for c in changes if normalized_name(c.name) in protected]


def changes_message(
    changes: Sequence[PackageChange],
    constraints: Sequence[str] = (),
    loaded_modules: Mapping[str, object] | None = None,
) -> str:
    """The confirmation dialog's text for an exact change list (or why it cannot be installed)."""
    touched = protected_changes(changes)
    if touched:
        return (
            "Cannot proceed: installing these packages would change "
            + ", ".join(c.describe() for c in touched)
            + ", which 3D Slicer itself provides; installing them would break Slicer. Nothing was installed."
        )
    if not changes:
        return "Nothing needs to be installed."
    lines = [f"pip will install exactly these {len(changes)} packages (and change nothing else):", ""]
    lines += [f"  - {c.describe()}" for c in changes]
    lines.append("")
    if constraints:
        lines.append("Slicer's own packages stay as they are: " + ", ".join(constraints) + ".")
    if restart_needed_for(changes, loaded_modules):
        lines.append("Slicer must be restarted afterwards (a package being replaced is already loaded).")
    lines += ["", "Install now?"]
    return "\n".join(lines)


def restart_needed_for(changes: Iterable[PackageChange], loaded_modules: Mapping[str, object] | None = None) -> bool:
    """True when a package being replaced is already imported in this process (its import name taken as the
    distribution name with '-' as '_', which holds for the packages nnU-Net brings)."""
    loaded = sys.modules if loaded_modules is None else loaded_modules
    return any(c.installed and c.name.replace("-", "_").lower() in {m.lower() for m in loaded} for c in changes)


# ---------------------------------------------------------------------- the plan
@dataclass
class InstallPlan:
    engine: str
    missing: list[Requirement]
    torch_via_pytorch_utils: bool  # torch is missing and comes through the PyTorch Utils extension's installer
    pip_requirements: list[str]  # what pip resolves and installs (torch is never among them)
    constraints: list[str] = field(default_factory=list)  # pins of Slicer's own packages
    restart_needed: bool = False
    blocked: list[str] = field(default_factory=list)  # protected packages that are missing or too old
    light_the_torch_installed: bool = False  # PyTorch Utils' installer is there already
    pytorch_extension_missing: bool = False  # torch is needed and the PyTorch extension must be installed first
    python_problem: str | None = None  # the engine cannot run on this Python at all
    exact_changes: list[PackageChange] | None = None  # the pip part as resolved by a dry run (see with_changes)

    @property
    def is_empty(self) -> bool:
        return not self.missing and self.python_problem is None

    @property
    def cannot_proceed(self) -> bool:
        return bool(self.blocked or self.python_problem)

    def message(self) -> str:
        """The text of the first confirmation dialog: what is missing and where it comes from."""
        if self.python_problem:
            return f"Cannot use the {self.engine} engine here: {self.python_problem}."
        if self.is_empty:
            return f"Everything the {self.engine} engine needs is installed."
        if self.blocked:
            return (
                "Cannot proceed: " + ", ".join(self.blocked) + " would have to change, which would break Slicer; "
                "install a newer Slicer instead."
            )
        if self.pytorch_extension_missing:
            return (
                f"The {self.engine} engine needs PyTorch, which LegSegNet installs through the PyTorch extension "
                "(PyTorch Utils: it picks the PyTorch build for this computer's GPU). That extension is not "
                "installed.\n\nInstall the PyTorch extension from the Extension Manager now? Slicer restarts "
                "afterwards; then start again, and the Python packages still needed are listed before anything "
                "is installed."
            )
        lines = [f"The {self.engine} engine needs these Python packages, which are not installed yet:", ""]
        for requirement in self.missing:
            source = (
                (
                    "the PyTorch Utils extension's installer, light-the-torch: the build for this computer's GPU "
                    "driver; torch only, with the libraries it needs"
                )
                if requirement is TORCH
                else "pip"
            )
            lines.append(f"  - {requirement.pip_spec} ({requirement.why}; from {source})")
        if self.torch_via_pytorch_utils and not self.light_the_torch_installed:
            lines.append(f"  - {LIGHT_THE_TORCH} (PyTorch Utils' installer itself; from pip)")
        lines.append("")
        if self.constraints:
            lines.append("Slicer's own packages stay as they are: " + ", ".join(self.constraints) + ".")
        if self.pip_requirements:
            lines.append(
                "Before anything is installed, pip works out the exact list of packages (with their "
                "dependencies) and you confirm it."
            )
        lines.append("This downloads several hundred MB and can take minutes.")
        if self.restart_needed:
            lines.append("Slicer must be restarted afterwards (a package being replaced is already loaded).")
        lines += ["", "Continue?"]
        return "\n".join(lines)

    def with_changes(self, changes: Sequence[PackageChange]) -> InstallPlan:
        """This plan with its pip part fixed to exactly `changes` (from `preview_steps`' report)."""
        touched = protected_changes(changes)
        if touched:
            raise ValueError("the change list touches Slicer's own packages: " + ", ".join(c.name for c in touched))
        return dataclasses.replace(self, exact_changes=list(changes))

    def pip_install_arguments(self, constraints_file: str | Path | None = None) -> list[str]:
        """What follows `pip install` for the plan's pip part: the requirements, or once a dry run fixed them,
        exactly its distributions, pinned and without resolving again (--no-deps)."""
        if self.exact_changes is not None:
            arguments = (
                ["--no-deps", *[f"{c.name}=={c.version}" for c in self.exact_changes]] if self.exact_changes else []
            )
        else:
            arguments = list(self.pip_requirements)
        if arguments and constraints_file is not None:
            arguments += ["--constraint", str(constraints_file)]
        return arguments

    def torch_steps(self, constraints_file: str | Path | None = None) -> list[dict]:
        """PyTorch, installed as the PyTorch Utils extension does it (light-the-torch, which picks the CUDA
        build matching the driver), in the worker so that the GUI stays responsive. torchvision, which PyTorch
        Utils also installs by default, is left out: nnU-Net does not use it."""
        if not self.torch_via_pytorch_utils:
            return []
        constraint = ["--constraint", str(constraints_file)] if constraints_file is not None else []
        steps = []
        if not self.light_the_torch_installed:
            steps.append(
                {
                    "label": "installing light-the-torch",
                    "module": "pip",
                    "arguments": ["install", LIGHT_THE_TORCH, *constraint],
                }
            )
        steps.append(
            {
                "label": f"installing {TORCH.pip_spec} (matching CUDA build)",
                "module": "light_the_torch",
                "arguments": ["install", TORCH.pip_spec, *constraint],
            }
        )
        return steps

    def preview_steps(self, constraints_file: str | Path | None, report_file: str | Path) -> list[dict]:
        """The pip part as a dry run writing pip's installation report (nothing is installed). Run it after
        the torch steps, so that the report holds only what pip itself adds."""
        if not self.pip_requirements:
            return []
        return [
            {
                "label": "working out what pip would install",
                "module": "pip",
                "report": str(report_file),
                "arguments": [
                    "install",
                    "--dry-run",
                    "--report",
                    str(report_file),
                    *self.pip_install_arguments(constraints_file),
                ],
            }
        ]

    def install_steps(self, constraints_file: str | Path | None = None) -> list[dict]:
        """The plan as steps for the worker's `install-packages` command (worker/install.py): the torch
        steps, then the pip part (exactly the dry run's list once `with_changes` fixed it)."""
        steps = self.torch_steps(constraints_file)
        arguments = self.pip_install_arguments(constraints_file)
        if arguments:
            names = (
                [f"{c.name}=={c.version}" for c in self.exact_changes] if self.exact_changes else self.pip_requirements
            )
            steps.append(
                {"label": "installing " + ", ".join(names), "module": "pip", "arguments": ["install", *arguments]}
            )
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
    python_version: Sequence[int] = sys.version_info,
) -> InstallPlan:
    """What to install for `engine`, from where, under which constraints, and whether to restart."""
    loaded = sys.modules if loaded_modules is None else loaded_modules
    python_problem = nnunet_python_problem(python_version) if engine == "nnunet" else None
    missing = [] if python_problem else missing_requirements(requirements_for(engine), version_of)
    protected = {name.lower() for name in PROTECTED_DISTRIBUTIONS}
    blocked = [r.pip_spec for r in missing if r.distribution.lower() in protected]
    torch_missing = TORCH in missing
    pip_requirements = [r.pip_spec for r in missing if r is not TORCH and r.pip_spec not in blocked]
    return InstallPlan(
        engine=engine,
        missing=missing,
        torch_via_pytorch_utils=torch_missing and pytorch_utils_available,
        pip_requirements=pip_requirements,
        constraints=protected_constraints(version_of),
        restart_needed=any(r.module in loaded for r in missing),
        blocked=blocked,
        light_the_torch_installed=version_of("light-the-torch") is not None,
        pytorch_extension_missing=torch_missing and not pytorch_utils_available,
        python_problem=python_problem,
    )
