"""Getting an engine's Python packages into Slicer, step by step, without blocking Slicer's GUI thread.

`PackageSetup` is the flow the widget runs when Apply (or a model install, or training) needs packages; it
holds no Qt: the widget passes in its dialogs (`confirm`, `error`), its progress dialog for worker runs
(`startTask`), the Extension Manager call and the restart, so tests can drive the whole flow with real
worker runs and scripted answers. The steps (dependencies.py says what and why):

1. the plan: nothing missing -> go on; the wrong Python, or one of Slicer's own packages missing -> say so
   and stop;
2. PyTorch needed but the PyTorch extension (PyTorch Utils) missing -> offer to install the extension from
   the Extension Manager, then restart (as SlicerNNUnet and SlicerTotalSegmentator do);
3. one dialog naming what is missing and where each comes from;
4. torch through PyTorch Utils' installer (light-the-torch) in the worker;
5. pip's dry run in the worker -> a dialog listing exactly the distributions pip would install -> exactly
   those are installed (pinned, --no-deps), Slicer's own packages pinned and never in the list;
6. a restart when a replaced package was already imported, else go on.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Callable

from ..worker.launcher import install_packages_command, make_workdir
from . import dependencies
from .dependencies import InstallPlan, PackageChange
from .run_handle import RunHandle

Confirm = Callable[[str], bool]
Notify = Callable[[str], None]
StartTask = Callable[[RunHandle, str, Callable[[RunHandle], None]], None]


def start_install_run(
    logic, steps: list, what: str, plan: InstallPlan, finish=None, onProgress=None, onFinished=None
) -> RunHandle:
    """Run install `steps` (worker/install.py) in the worker's interpreter; returns at once. `steps` is a
    function of the constraints file written into the run's own folder."""
    workdir = make_workdir("legsegnet-install-")
    try:
        constraints = plan.write_constraints(workdir / "constraints.txt")
        steps_file = workdir / "steps.json"
        steps_file.write_text(json.dumps(steps(constraints, workdir)), encoding="utf-8")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return logic.startWorker(
        install_packages_command(logic.python, steps_file),
        workdir,
        what=what,
        finish=finish,
        onProgress=onProgress,
        onFinished=onFinished,
    )


def preview_pip_changes_async(logic, plan: InstallPlan, onProgress=None, onFinished=None) -> RunHandle:
    """pip's dry run of the plan's pip part in the worker; the handle's result is the exact list of
    `PackageChange`s (versions it replaces looked up here, in Slicer's own environment)."""

    def finish(worker) -> list[PackageChange]:
        reports = ((worker.result or {}).get("value") or {}).get("reports") or []
        return dependencies.changes_from_pip_report(reports[0]) if reports else []

    return start_install_run(
        logic,
        lambda constraints, folder: plan.preview_steps(constraints, folder / "report.json"),
        "package check",
        plan,
        finish=finish,
        onProgress=onProgress,
        onFinished=onFinished,
    )


@dataclasses.dataclass
class PackageSetup:
    """One run of the setup flow (see the module docstring). `then()` is called once everything is there."""

    logic: object  # LegSegNetLogic (startWorker, python, installPackagesAsync)
    engine: str
    then: Callable[[], None]
    confirm: Confirm
    error: Notify
    startTask: StartTask
    installPyTorchExtension: Callable[[], bool]  # True when installed (Slicer must then restart)
    restart: Callable[[], None]
    pytorchUtilsAvailable: bool = False
    plan: InstallPlan | None = None
    outcome: str = "running"  # then "done", "declined", "failed", "restart"

    def start(self, plan: InstallPlan | None = None) -> None:
        self.plan = plan or dependencies.plan_install(self.engine, pytorch_utils_available=self.pytorchUtilsAvailable)
        plan = self.plan
        if plan.is_empty:
            return self._done()
        if plan.cannot_proceed:
            return self._fail(plan.message())
        if plan.pytorch_extension_missing:
            if not self.confirm(plan.message()):
                return self._end("declined")
            if self.installPyTorchExtension():
                self._end("restart")
                self.restart()
            else:
                self._fail(
                    "The PyTorch extension could not be installed from the Extension Manager. Install it "
                    "there by hand (View > Extension Manager, search 'PyTorch'), restart Slicer and try again."
                )
            return None
        if not self.confirm(plan.message()):
            return self._end("declined")
        if plan.torch_via_pytorch_utils:
            torch_only = dataclasses.replace(plan, pip_requirements=[])
            return self.startTask(
                self.logic.installPackagesAsync(torch_only), "Installing PyTorch...", self._after_torch
            )
        return self._preview()

    # ------------------------------------------------------------------ steps
    def _after_torch(self, handle: RunHandle) -> None:
        if self._ended_badly(handle, "Installing PyTorch failed."):
            return
        self._preview()

    def _preview(self) -> None:
        if not self.plan.pip_requirements:
            return self._finish_install()
        self.startTask(
            preview_pip_changes_async(self.logic, self.plan),
            "Working out what pip would install...",
            self._after_preview,
        )

    def _after_preview(self, handle: RunHandle) -> None:
        if self._ended_badly(handle, "pip could not work out what to install (nothing was installed)."):
            return
        changes = handle.result
        text = dependencies.changes_message(changes, self.plan.constraints)
        if dependencies.protected_changes(changes):
            return self._fail(text)
        if not changes:
            return self._finish_install()
        if not self.confirm(text):
            return self._end("declined")
        self.plan = dataclasses.replace(
            self.plan.with_changes(changes),
            torch_via_pytorch_utils=False,
            restart_needed=self.plan.restart_needed or dependencies.restart_needed_for(changes),
        )
        self.startTask(self.logic.installPackagesAsync(self.plan), "Installing Python packages...", self._after_install)

    def _after_install(self, handle: RunHandle) -> None:
        if self._ended_badly(handle, "Installing the packages failed."):
            return
        self._finish_install()

    def _finish_install(self) -> None:
        if self.plan.restart_needed:
            self._end("restart")
            if self.confirm("The packages are installed. Slicer must restart to use them: restart now?"):
                self.restart()
            return
        self._done()

    # ------------------------------------------------------------------ endings
    def _ended_badly(self, handle: RunHandle, message: str) -> bool:
        if handle.state == "succeeded":
            return False
        if handle.state == "cancelled":
            self._end("declined")
        else:
            self._fail(message + "\n" + handle.errorMessage)
        return True

    def _done(self) -> None:
        self._end("done")
        self.then()

    def _fail(self, message: str) -> None:
        self._end("failed")
        self.error(message)

    def _end(self, outcome: str) -> None:
        self.outcome = outcome
