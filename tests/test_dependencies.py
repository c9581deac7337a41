"""The install decision for the Slicer module: what is missing, from where, with which pins, restart or not.

Version lookups are plain dictionaries standing for a Slicer installation's site-packages (the function
under test takes the lookup as an argument), plus one check against this environment's real packages.
"""

from __future__ import annotations

import importlib.util

import pytest

from LegSegNetLib.slicer_logic import dependencies
from LegSegNetLib.slicer_logic.dependencies import TORCH, at_least

SLICER_SHIPS = {
    "numpy": "1.26.4",
    "scipy": "1.13.1",
    "SimpleITK": "2.4.0",
    "vtk": "9.3.1",
    "requests": "2.32.3",
    "pydicom": "2.4.4",
}


def lookup(installed: dict[str, str]):
    return lambda name: installed.get(name)


def plan_install(*arguments, **options):
    """The plan as Slicer 5.10+ (Python 3.12) makes it, unless a test names another Python (these tests also
    run under Python 3.9, where the nnU-Net plan is refused)."""
    options.setdefault("python_version", (3, 12, 1))
    return dependencies.plan_install(*arguments, **options)


def test_threshold_engine_needs_nothing_beyond_what_slicer_ships():
    # Slicer ships no matplotlib; the module draws its own tables and plots, so Apply must not ask for it
    # (a site without internet could not run the weight-free engine at all).
    plan = plan_install("threshold", pytorch_utils_available=False, version_of=lookup(SLICER_SHIPS), loaded_modules={})
    assert plan.is_empty and plan.install_steps() == [], plan.message()
    assert plan_install("auto", False, lookup(SLICER_SHIPS), {}).is_empty


def test_nnunet_takes_torch_from_pytorch_utils_and_pins_slicer_packages(tmp_path):
    installed = dict(SLICER_SHIPS)
    plan = plan_install("nnunet", pytorch_utils_available=True, version_of=lookup(installed), loaded_modules={})
    assert [r.distribution for r in plan.missing] == ["torch", "nnunetv2"]
    assert plan.torch_via_pytorch_utils and plan.pip_requirements == ["nnunetv2>=2.5"]
    assert set(plan.constraints) == {f"{k}=={v}" for k, v in SLICER_SHIPS.items()}
    constraints = plan.write_constraints(tmp_path / "c.txt")
    assert "numpy==1.26.4\n" in constraints.read_text() and "SimpleITK==2.4.0\n" in constraints.read_text()
    assert plan.pip_install_arguments(constraints) == ["nnunetv2>=2.5", "--constraint", str(constraints)]
    assert not plan.restart_needed
    text = plan.message()
    assert "PyTorch Utils" in text and "nnunetv2>=2.5" in text and "numpy==1.26.4" in text
    assert dependencies.LIGHT_THE_TORCH in text  # the installer itself is installed first, and said so


def test_install_steps_run_pip_and_light_the_torch_with_slicer_packages_pinned(tmp_path):
    installed = dict(SLICER_SHIPS)
    plan = plan_install("nnunet", pytorch_utils_available=True, version_of=lookup(installed), loaded_modules={})
    constraints = plan.write_constraints(tmp_path / "c.txt")
    steps = plan.install_steps(constraints)
    assert [(s["module"], s["arguments"][:2]) for s in steps] == [
        ("pip", ["install", dependencies.LIGHT_THE_TORCH]),
        ("light_the_torch", ["install", TORCH.pip_spec]),
        ("pip", ["install", "nnunetv2>=2.5"]),
    ]
    assert all(s["arguments"][-2:] == ["--constraint", str(constraints)] for s in steps)
    with_ltt = plan_install("nnunet", True, lookup({**installed, "light-the-torch": "0.7.5"}), {})
    assert [s["module"] for s in with_ltt.install_steps(constraints)] == ["light_the_torch", "pip"]


def test_without_pytorch_utils_the_pytorch_extension_comes_first_and_torch_never_from_pip(tmp_path):
    plan = plan_install("nnunet", pytorch_utils_available=False, version_of=lookup(SLICER_SHIPS), loaded_modules={})
    assert plan.pytorch_extension_missing and not plan.torch_via_pytorch_utils
    assert not any(spec.startswith("torch") for spec in plan.pip_requirements)
    steps = plan.install_steps(plan.write_constraints(tmp_path / "c.txt"))
    assert not any(argument.startswith(("torch", "light")) for step in steps for argument in step["arguments"])
    assert "Extension Manager" in plan.message() and "restart" in plan.message()
    # torch already there (e.g. installed by another extension): no extension needed
    with_torch = plan_install("nnunet", False, lookup({**SLICER_SHIPS, "torch": "2.5.1"}), {})
    assert not with_torch.pytorch_extension_missing and with_torch.pip_requirements == ["nnunetv2>=2.5"]


def test_the_nnunet_engine_on_python_3_9_is_refused_naming_the_versions():
    plan = plan_install("nnunet", True, lookup(SLICER_SHIPS), {}, python_version=(3, 9, 18))
    assert plan.cannot_proceed and not plan.is_empty and plan.install_steps() == []
    assert "Python 3.10" in plan.message() and "3D Slicer 5.10" in plan.message() and "threshold" in plan.message()
    assert plan_install("threshold", True, lookup(SLICER_SHIPS), {}, python_version=(3, 9, 18)).is_empty
    assert not plan_install("nnunet", True, lookup(SLICER_SHIPS), {}, python_version=(3, 12, 1)).cannot_proceed


def _report(*items: tuple[str, str]) -> dict:
    """A `pip install --dry-run --report` report (pip's format, version 1) naming these distributions."""
    return {"version": "1", "install": [{"requested": False, "metadata": {"name": n, "version": v}} for n, v in items]}


def test_the_change_list_is_pips_report_with_the_versions_replaced():
    installed = {**SLICER_SHIPS, "pandas": "2.0.0"}
    changes = dependencies.changes_from_pip_report(
        _report(("pandas", "2.2.3"), ("acvl-utils", "0.2")), lookup(installed)
    )
    assert [c.describe() for c in changes] == ["acvl-utils 0.2 (new)", "pandas 2.2.3 (replaces 2.0.0)"]
    text = dependencies.changes_message(changes, ["numpy==1.26.4"], loaded_modules={})
    assert "exactly these 2 packages" in text and "acvl-utils 0.2 (new)" in text and "numpy==1.26.4" in text
    assert "restart" not in text.lower()
    assert "restart" in dependencies.changes_message(changes, [], loaded_modules={"pandas": object()}).lower()


@pytest.mark.parametrize("name", ["numpy", "SimpleITK", "simpleitk", "vtk", "VTK", "requests"])
def test_a_change_list_touching_slicers_own_packages_is_refused(name):
    # VTK inside Slicer is Slicer's own build, no pip distribution: no pin can hold it, the name check does
    changes = dependencies.changes_from_pip_report(_report(("nnunetv2", "2.6.0"), (name, "99.0")), lookup({}))
    assert [c.name for c in dependencies.protected_changes(changes)] == [name]
    assert dependencies.changes_message(changes).startswith("Cannot proceed")
    plan = plan_install("nnunet", True, lookup(SLICER_SHIPS), {})
    with pytest.raises(ValueError):
        plan.with_changes(changes)


def test_once_the_dry_run_fixed_the_list_exactly_those_pins_are_installed_without_resolving_again(tmp_path):
    installed = {**SLICER_SHIPS, "torch": "2.5.1"}
    plan = plan_install("nnunet", True, lookup(installed), {})
    changes = dependencies.changes_from_pip_report(_report(("nnunetv2", "2.6.0"), ("acvl-utils", "0.2")), lookup({}))
    constraints = plan.write_constraints(tmp_path / "c.txt")
    preview = plan.preview_steps(constraints, tmp_path / "report.json")
    assert preview[0]["arguments"][:4] == ["install", "--dry-run", "--report", str(tmp_path / "report.json")]
    assert preview[0]["report"] == str(tmp_path / "report.json")
    steps = plan.with_changes(changes).install_steps(constraints)
    assert steps == [
        {
            "label": "installing acvl-utils==0.2, nnunetv2==2.6.0",
            "module": "pip",
            "arguments": [
                "install",
                "--no-deps",
                "acvl-utils==0.2",
                "nnunetv2==2.6.0",
                "--constraint",
                str(constraints),
            ],
        }
    ]


def test_an_outdated_package_that_is_already_imported_needs_a_restart():
    installed = {**SLICER_SHIPS, "torch": "1.13.1", "nnunetv2": "2.5.1"}
    plan = plan_install("nnunet", True, lookup(installed), loaded_modules={"torch": object()})
    assert plan.missing == [TORCH] and plan.restart_needed
    assert "restart" in plan.message().lower()


def test_a_protected_package_that_is_too_old_blocks_the_install():
    old_numpy = {**SLICER_SHIPS, "numpy": "1.21.0"}
    plan = plan_install("threshold", False, lookup(old_numpy), loaded_modules={})
    assert plan.blocked == ["numpy>=1.24"] and "numpy>=1.24" not in plan.pip_requirements
    assert "Cannot proceed" in plan.message()


def test_everything_installed_means_nothing_to_do():
    installed = {**SLICER_SHIPS, "torch": "2.5.1+cu121", "nnunetv2": "2.6.0"}
    plan = plan_install("nnunet", True, lookup(installed), loaded_modules={})
    assert plan.is_empty and plan.pip_install_arguments() == [] and "installed" in plan.message()


def test_versions_compare_as_pip_compares_them():
    assert at_least("2.10.0", "2.9.9") and not at_least("2.9.9", "2.10.0")  # numbers, not text
    assert at_least("2.5.1+cu121", "2.5.1") and at_least("2.5.1+cu121", "2.5")  # a local build label
    assert not at_least("1.26.4rc1", "1.26.4") and at_least("1.26.4rc1", "1.26.3")  # a pre-release comes first
    assert not at_least("not a version", "1.0")


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError):
        dependencies.requirements_for("magic")


def test_this_environment_has_what_the_threshold_engine_needs():
    """The real lookup on this machine's packages: the test environment can run the threshold worker."""
    plan = plan_install("threshold", pytorch_utils_available=False)
    assert plan.is_empty, plan.message()
    assert all(importlib.util.find_spec(r.module) is not None for r in dependencies.requirements_for("threshold"))
