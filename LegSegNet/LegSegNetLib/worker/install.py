"""`python -m LegSegNetLib.worker install-packages STEPS.json`: package installs for the Slicer module.

Slicer's own `slicer.util.pip_install` blocks the GUI until pip is done (minutes for PyTorch). Here the
installs run in the worker, so the Slicer side polls them like any run (progress, cancel). STEPS.json is
a list of `{"label": "...", "module": "pip", "arguments": ["install", ...]}`, written by the Slicer
logic from dependencies.InstallPlan; each step runs as `python -m MODULE ARGUMENTS` in this interpreter,
its output lines passed on as notes. The first failing step ends the run with its last output line.
A step with a `"report"` file (pip's `--dry-run --report`: what pip would install, nothing installed)
has that report in the result, under `reports`, for the Slicer side to list exactly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ..core.errors import InputError, LegSegNetError
from ..core.progress import Progress
from .launcher import NO_WINDOW

# pip's lines that say why a resolution failed (the conflict and the requirement behind it)
_TELLING = re.compile(r"^ERROR: (?!.*ResolutionImpossible)|depends on|requested|No matching distribution")


def run_steps(steps_file: str | Path, progress: Progress) -> dict:
    steps = json.loads(Path(steps_file).read_text(encoding="utf-8"))
    if not isinstance(steps, list) or not all(isinstance(s, dict) and s.get("module") for s in steps):
        raise InputError(f"{steps_file} is not a list of install steps")
    progress.stage("installing", total=len(steps))
    reports = []
    for step in steps:
        label = str(step.get("label") or step["module"])
        progress.note(label)
        command = [sys.executable, "-m", str(step["module"]), *[str(a) for a in step.get("arguments", [])]]
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            **NO_WINDOW,
        )
        last, telling = "", []
        try:
            assert child.stdout is not None
            for line in child.stdout:  # read continuously: pip is chatty and must never block on the pipe
                if line.strip():
                    last = line.strip()
                    progress.note(last)
                    if _TELLING.search(last) and last not in telling:
                        telling.append(last)
            code = child.wait()
        finally:
            if child.poll() is None:  # cancelled while the step ran
                child.kill()
                child.wait()
        if code != 0:
            why = "; ".join(telling[-6:]) if telling else last  # pip's last line is often only a help link
            raise LegSegNetError(f"{label} failed (exit status {code}): {why}"[:1000])
        if step.get("report"):
            reports.append(json.loads(Path(step["report"]).read_text(encoding="utf-8")))
        progress.advance()
    result: dict = {"steps": [str(s.get("label") or s["module"]) for s in steps]}
    if reports:
        result["reports"] = reports
    return result
