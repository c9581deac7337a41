"""The package setup flow of the Slicer module (slicer_logic/packages.py), end to end with the real worker and
real pip, offline: small wheels written here stand for PyPI (PIP_NO_INDEX, PIP_FIND_LINKS), and installs go into
a folder of the test (PIP_TARGET), never into this environment. Only the Qt dialogs are scripted answers (the
GUI cannot run here); the Extension Manager and the restart are recorded calls.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from LegSegNetLib.slicer_logic import dependencies
from LegSegNetLib.slicer_logic.dependencies import InstallPlan, Requirement
from LegSegNetLib.slicer_logic.packages import PackageSetup

pytest.importorskip("slicer", reason="LegSegNetLogic needs slicer-core")
from LegSegNetLib.slicer_logic.logic import LegSegNetLogic  # noqa: E402


def write_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel: one module `name` (with '_'), METADATA with its requirements."""
    module, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: legsegnet-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(
            f"{dist}.dist-info/RECORD", "".join(f"{m},,\n" for m in files) + f"{dist}.dist-info/RECORD,,\n"
        )
    return path


@pytest.fixture()
def index(tmp_path, monkeypatch) -> dict[str, Path]:
    """A local package index and an install target; the worker inherits these pip settings."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    write_wheel(wheels, "lsn-demo-a", "1.0", ("lsn-demo-b>=2",))
    write_wheel(wheels, "lsn-demo-b", "2.0")
    write_wheel(wheels, "lsn-demo-c", "1.0", ("numpy>=99",))
    write_wheel(wheels, "numpy", "99.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_TARGET", str(target))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return {"wheels": wheels, "target": target}


def installed_in(target: Path) -> list[str]:
    return sorted(p.name for p in target.glob("*.dist-info")) if target.is_dir() else []


class Dialogs:
    """Scripted answers to the widget's dialogs, and a record of what was shown and called."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.shown: list[str] = []
        self.errors: list[str] = []
        self.calls: list[str] = []
        self.tasks: list[str] = []
        self.on_confirm = None  # called with the text before answering

    def confirm(self, text: str) -> bool:
        self.shown.append(text)
        if self.on_confirm:
            self.on_confirm(text)
        return self.answers.pop(0) if self.answers else False

    def run_task(self, handle, title, then) -> None:  # the widget's progress dialog, polled to the end
        self.tasks.append(title)
        deadline = time.monotonic() + 300
        while handle.poll():
            assert time.monotonic() < deadline, f"{title} did not end"
            time.sleep(0.05)
        then(handle)

    def setup(self, plan: InstallPlan, extension_installs: bool = True) -> PackageSetup:
        return PackageSetup(
            logic=LegSegNetLogic(),
            engine=plan.engine,
            then=lambda: self.calls.append("then"),
            confirm=self.confirm,
            error=self.errors.append,
            startTask=self.run_task,
            installPyTorchExtension=lambda: self.calls.append("install PyTorch extension") or extension_installs,
            restart=lambda: self.calls.append("restart"),
        )


def pip_plan(*requirements: str, constraints=None) -> InstallPlan:
    """A plan whose pip part is `requirements` (the nnU-Net packages themselves would need the internet)."""
    missing = [Requirement(r.split(">")[0], r.split(">")[0].replace("-", "_"), why="test") for r in requirements]
    pins = dependencies.protected_constraints() if constraints is None else constraints
    return InstallPlan(
        engine="nnunet",
        missing=missing,
        torch_via_pytorch_utils=False,
        pip_requirements=list(requirements),
        constraints=pins,
    )


def test_the_dialog_lists_exactly_what_pip_installs_and_exactly_that_is_installed(index):
    dialogs = Dialogs(answers=[True, True])
    late = []

    def publish_a_newer_dependency(text):  # between the listing and the install: must not be picked up
        if "exactly these" in text:
            late.append(write_wheel(index["wheels"], "lsn-demo-b", "3.0"))

    dialogs.on_confirm = publish_a_newer_dependency
    plan = pip_plan("lsn-demo-a>=1.0")
    setup = dialogs.setup(plan)
    setup.start(plan)
    assert dialogs.errors == [] and setup.outcome == "done" and dialogs.calls == ["then"], dialogs.errors
    listing = dialogs.shown[1]
    assert "exactly these 2 packages" in listing
    assert "lsn-demo-a 1.0 (new)" in listing and "lsn-demo-b 2.0 (new)" in listing and late
    assert "numpy==" in listing  # Slicer's own packages named as staying
    assert installed_in(index["target"]) == ["lsn_demo_a-1.0.dist-info", "lsn_demo_b-2.0.dist-info"]
    assert dialogs.tasks == ["Working out what pip would install...", "Installing Python packages..."]


def test_a_package_that_needs_another_numpy_is_refused_and_nothing_is_installed(index):
    dialogs = Dialogs(answers=[True, True])
    plan = pip_plan("lsn-demo-c")
    setup = dialogs.setup(plan)
    setup.start(plan)  # numpy pinned to this environment's version by the constraints
    assert setup.outcome == "failed" and dialogs.calls == [] and len(dialogs.shown) == 1
    assert "nothing was installed" in dialogs.errors[0] and "numpy" in dialogs.errors[0]
    assert installed_in(index["target"]) == []


def test_a_change_to_a_slicer_package_that_no_pin_holds_is_refused_by_name(index):
    # Inside Slicer VTK is no pip distribution, so no constraint can hold it: the exact list is checked by name
    # (here numpy left unpinned stands for it).
    dialogs = Dialogs(answers=[True, True])
    plan = pip_plan("lsn-demo-c", constraints=[])
    setup = dialogs.setup(plan)
    setup.start(plan)
    assert setup.outcome == "failed" and len(dialogs.shown) == 1 and dialogs.calls == []
    assert dialogs.errors[0].startswith("Cannot proceed") and "numpy 99.0" in dialogs.errors[0]
    assert installed_in(index["target"]) == []


def test_declining_the_exact_list_installs_nothing(index):
    dialogs = Dialogs(answers=[True, False])
    plan = pip_plan("lsn-demo-a>=1.0")
    setup = dialogs.setup(plan)
    setup.start(plan)
    assert setup.outcome == "declined" and dialogs.calls == [] and dialogs.errors == []
    assert installed_in(index["target"]) == []


def test_without_the_pytorch_extension_it_is_installed_from_the_extension_manager_then_slicer_restarts():
    slicer_without_torch = {"numpy": "1.26.4", "scipy": "1.13.1", "SimpleITK": "2.4.0"}
    plan = dependencies.plan_install(
        "nnunet",
        pytorch_utils_available=False,
        version_of=slicer_without_torch.get,
        loaded_modules={},
        python_version=(3, 12, 1),
    )
    dialogs = Dialogs(answers=[True])
    setup = dialogs.setup(plan)
    setup.start(plan)
    assert dialogs.calls == ["install PyTorch extension", "restart"] and setup.outcome == "restart"
    assert "Extension Manager" in dialogs.shown[0] and dialogs.tasks == []  # no pip before the restart
    failing = Dialogs(answers=[True]).setup(plan, extension_installs=False)
    failing.start(plan)
    assert failing.outcome == "failed"


def test_the_nnunet_engine_on_python_3_9_stops_at_once_with_the_reason():
    plan = dependencies.plan_install("nnunet", True, {"numpy": "1.26.4"}.get, {}, python_version=(3, 9, 18))
    dialogs = Dialogs(answers=[True])
    setup = dialogs.setup(plan)
    setup.start(plan)
    assert setup.outcome == "failed" and dialogs.shown == [] and "Python 3.10" in dialogs.errors[0]


def test_nothing_missing_goes_straight_on():
    plan = dependencies.plan_install("threshold", False, python_version=(3, 9, 18))
    dialogs = Dialogs()
    setup = dialogs.setup(plan)
    setup.start(plan)
    assert dialogs.calls == ["then"] and dialogs.shown == [] and setup.outcome == "done"
