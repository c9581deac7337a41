"""Segmentation engines: slices in, labels (0-4) out, in the slab's own grid.

An engine is any object with a `name`, an `info()` dict recorded in metrics.json, and
`segment(slab, spacing, progress) -> uint8 labels of slab.shape`. `slab` is (n_slices, rows, cols) in HU
(see ct_volume.py for the axis convention); `spacing` is (slice, row, column) in mm. An engine whose
`standard_orientation` is true (nnU-Net) is given the slab turned to the standard in-plane orientation
(scan/orientation.py) and its labels are turned back; the others get the storage order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..core.progress import Progress


class Engine(Protocol):
    name: str

    def info(self) -> dict: ...

    def segment(self, slab: np.ndarray, spacing: tuple[float, float, float], progress: Progress) -> np.ndarray: ...


ENGINE_NAMES = ("auto", "threshold", "nnunet")

# nnU-Net v2 (and the PyTorch releases it is tested with) need Python 3.10. Everything else (the threshold
# engine, measurement, the worker, the Slicer logic) also runs on Python 3.9, the Python of 3D Slicer 5.6 and 5.8.
NNUNET_MIN_PYTHON = (3, 10)


def nnunet_python_problem(version_info: Sequence[int] = sys.version_info) -> str | None:
    """Why the nnU-Net engine (and training) cannot run on this Python, or None when it can."""
    if tuple(version_info[:2]) >= NNUNET_MIN_PYTHON:
        return None
    running = ".".join(str(v) for v in version_info[:2])
    return (
        f"the nnU-Net engine needs Python {'.'.join(map(str, NNUNET_MIN_PYTHON))} or newer, and this is Python "
        f"{running} (3D Slicer 5.6 and 5.8 ship Python 3.9; 3D Slicer 5.10 and newer ship 3.12): use a newer "
        "Slicer or Python for nnU-Net, or the threshold engine, which runs here"
    )


def use_passive_openmp_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user set OMP_WAIT_POLICY.

    Must run before torch is first imported. Spinning threads slowed PyTorch on a CPU shared with other
    work by up to 6x (2 threads against 1, measured on a busy 2-core machine); passive waiting cost nothing
    measurable on an idle one. Called by the CLI, the worker and training.train, not by the Slicer logic.
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_engine(name: str = "auto", **options) -> Engine:
    """The engine the user asked for. `auto` is nnU-Net when a model is given or installed, else threshold.

    Options (all optional): model (folder or installed name), device, folds, tta, batch_size, checkpoint
    ("best", "final", or None: the model folder's default), progress (for notes such as a CPU fallback),
    store (a models.ModelStore), runtime and precision (nnU-Net: see engines/nnunet.py RUNTIMES, PRECISIONS),
    threads (threshold: look-ahead threads, None: its default).
    """
    progress = options.get("progress")
    name = choose_engine(name, options.get("model"), options.get("store"), progress)
    if name == "threshold":
        from .threshold import ThresholdEngine

        device = options.get("device")
        if device not in (None, "auto", "cpu") and progress is not None:
            progress.note(f"the threshold engine runs on the CPU; --device {device} applies to nnU-Net only")
        return ThresholdEngine(threads=options.get("threads"))
    from .nnunet import NnUNetEngine

    return NnUNetEngine(
        options.get("model"),
        device=options.get("device") or "auto",
        folds=options.get("folds"),
        tta=options.get("tta"),
        batch_size=options.get("batch_size"),
        checkpoint=options.get("checkpoint"),
        progress=progress,
        store=options.get("store"),
        runtime=options.get("runtime"),
        precision=options.get("precision"),
    )


def choose_engine(name: str = "auto", model: str | None = None, store=None, progress: Progress | None = None) -> str:
    """The engine `name` stands for: `auto` is nnU-Net when a model is given or installed (and nnU-Net is
    importable), else threshold. The one place of this rule: the Slicer module asks it too. nnU-Net asked for
    (by name or by giving a model) on a Python older than 3.10 is an InputError saying so."""
    from ..core.errors import InputError

    if name not in ENGINE_NAMES:
        raise InputError(f"unknown engine '{name}'; choose one of {', '.join(ENGINE_NAMES)}")
    too_old = nnunet_python_problem()
    if name == "nnunet" or (name == "auto" and model):  # asked for nnU-Net by name or by model
        if too_old:
            raise InputError(too_old)
        return "nnunet"
    if name == "threshold":
        return name
    if too_old:  # auto with an installed model, on a Python nnU-Net cannot run on
        if progress is not None and _installed_model_available(store, None):
            progress.note(f"{too_old}; using the threshold engine")
        return "threshold"
    return "nnunet" if _installed_model_available(store, progress) else "threshold"


def _installed_model_available(store=None, progress: Progress | None = None) -> bool:
    """True when the model store has a default model and the nnU-Net packages are importable."""
    import importlib.util

    from ..models.store import ModelStore

    try:
        default = (store or ModelStore()).default()
    except OSError:
        return False
    if default is None:
        return False
    missing = [m for m in ("torch", "nnunetv2") if importlib.util.find_spec(m) is None]
    if missing:
        if progress is not None:
            progress.note(
                f"model '{default.name}' is installed but {' and '.join(missing)} is not; using the threshold engine "
                "(install the nnU-Net extra: pip install 'legsegnet[nnunet]')"
            )
        return False
    return True
