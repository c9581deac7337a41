"""The install decision for the Slicer module: what is missing, from where, with which pins, restart or not.

Version lookups are plain dictionaries standing for a Slicer installation's site-packages (the function
under test takes the lookup as an argument), plus one check against this environment's real packages.
"""
from __future__ import annotations

import importlib.util

import pytest

from LegSegNetLib.slicer_logic import dependencies
from LegSegNetLib.slicer_logic.dependencies import TORCH, plan_install, version_tuple

SLICER_SHIPS = {"numpy": "1.26.4", "scipy": "1.13.1", "SimpleITK": "2.4.0", "vtk": "9.3.1", "requests": "2.32.3",
                "pydicom": "2.4.4"}


def lookup(installed: dict[str, str]):
    return lambda name: installed.get(name)


def test_threshold_engine_needs_what_slicer_ships_plus_reports_and_the_training_set_lock():
    plan = plan_install("threshold", pytorch_utils_available=False, version_of=lookup(SLICER_SHIPS), loaded_modules={})
    assert [r.distribution for r in plan.missing] == ["filelock", "matplotlib"]
    without_reports = plan_install("threshold", False, lookup(SLICER_SHIPS), {}, with_reports=False)
    assert [r.distribution for r in without_reports.missing] == ["filelock"]
    assert plan_install("threshold", False, lookup({**SLICER_SHIPS, "filelock": "3.16.1"}), {}, with_reports=False).is_empty


def test_nnunet_takes_torch_from_pytorch_utils_and_pins_slicer_packages(tmp_path):
    installed = {**SLICER_SHIPS, "matplotlib": "3.9.0", "filelock": "3.16.1"}
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


def test_install_steps_run_pip_and_light_the_torch_with_slicer_packages_pinned(tmp_path):
    installed = {**SLICER_SHIPS, "matplotlib": "3.9.0", "filelock": "3.16.1"}
    plan = plan_install("nnunet", pytorch_utils_available=True, version_of=lookup(installed), loaded_modules={})
    constraints = plan.write_constraints(tmp_path / "c.txt")
    steps = plan.install_steps(constraints)
    assert [(s["module"], s["arguments"][:2]) for s in steps] == [
        ("pip", ["install", dependencies.LIGHT_THE_TORCH]), ("light_the_torch", ["install", TORCH.pip_spec]),
        ("pip", ["install", "nnunetv2>=2.5"])]
    assert all(s["arguments"][-2:] == ["--constraint", str(constraints)] for s in steps)
    with_ltt = plan_install("nnunet", True, lookup({**installed, "light-the-torch": "0.7.5"}), {})
    assert [s["module"] for s in with_ltt.install_steps(constraints)] == ["light_the_torch", "pip"]
    without_utils = plan_install("nnunet", False, lookup(installed), {})
    assert [s["module"] for s in without_utils.install_steps(constraints)] == ["pip"]


def test_without_pytorch_utils_torch_comes_from_pip():
    plan = plan_install("nnunet", pytorch_utils_available=False, version_of=lookup(SLICER_SHIPS), loaded_modules={})
    assert not plan.torch_via_pytorch_utils
    assert f"torch>={dependencies.TORCH_MINIMUM}" in plan.pip_requirements


def test_an_outdated_package_that_is_already_imported_needs_a_restart():
    installed = {**SLICER_SHIPS, "matplotlib": "3.9.0", "filelock": "3.16.1", "torch": "1.13.1", "nnunetv2": "2.5.1"}
    plan = plan_install("nnunet", True, lookup(installed), loaded_modules={"torch": object()})
    assert plan.missing == [TORCH] and plan.restart_needed
    assert "restart" in plan.message().lower()


def test_a_protected_package_that_is_too_old_blocks_the_install():
    old_numpy = {**SLICER_SHIPS, "numpy": "1.21.0", "matplotlib": "3.9.0", "filelock": "3.16.1"}
    plan = plan_install("threshold", False, lookup(old_numpy), loaded_modules={})
    assert plan.blocked == ["numpy>=1.24"] and "numpy>=1.24" not in plan.pip_requirements
    assert "Cannot proceed" in plan.message()


def test_everything_installed_means_nothing_to_do():
    installed = {**SLICER_SHIPS, "matplotlib": "3.9.0", "filelock": "3.16.1", "torch": "2.5.1+cu121", "nnunetv2": "2.6.0"}
    plan = plan_install("nnunet", True, lookup(installed), loaded_modules={})
    assert plan.is_empty and plan.pip_install_arguments() == [] and "installed" in plan.message()


def test_versions_compare_numerically():
    assert version_tuple("2.10.0") > version_tuple("2.9.9")
    assert version_tuple("2.5.1+cu121") == (2, 5, 1)
    assert version_tuple("1.26.4rc1") == (1, 26, 4)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError):
        dependencies.requirements_for("magic")


def test_this_environment_has_what_the_threshold_engine_needs():
    """The real lookup on this machine's packages: the test environment can run the threshold worker."""
    plan = plan_install("threshold", pytorch_utils_available=False)
    assert plan.is_empty, plan.message()
    assert all(importlib.util.find_spec(r.module) for r in dependencies.requirements_for("threshold"))
