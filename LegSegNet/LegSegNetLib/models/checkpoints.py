"""nnU-Net checkpoints read as untrusted input, and the one way the library imports PyTorch.

A checkpoint is a pickle: loading it the ordinary way can run any code it names. LegSegNet loads checkpoints
only with `torch.load(weights_only=True)` plus an allow-list of numeric numpy types (nnU-Net's trainer logs
numpy floats): tensors, numbers, strings and numeric numpy values, never other Python objects. Before a
checkpoint is loaded, the globals its pickle needs are read without running it (`unsafe_checkpoint_globals`).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..core.errors import InputError, LegSegNetError
from ..core.progress import Progress
from ..core.text import first_line
from .folder import ModelFolder, fold_dir

_INSTALL_HINT = "pip install 'legsegnet[nnunet]' (see the README)"


def import_torch(needed_by: str = "reading model checkpoints", *, with_nnunet: bool = False, alternative: str = ""):
    """`torch`, else LegSegNetError saying what needs it and how to install it. `with_nnunet`: nnU-Net v2
    must be importable too. `alternative` ends the message (e.g. ', or use --engine threshold')."""
    try:
        import torch
    except ImportError:
        raise LegSegNetError(
            f"{needed_by} needs PyTorch, which is not installed; install it with {_INSTALL_HINT}{alternative}"
        ) from None
    if with_nnunet:
        try:
            import nnunetv2  # noqa: F401
        except ImportError:
            raise LegSegNetError(
                f"{needed_by} needs nnU-Net v2 (package nnunetv2), which is not installed; install it with "
                f"{_INSTALL_HINT}{alternative}"
            ) from None
    return torch


def import_torch_for_nnunet():
    """`torch` for running or training an nnU-Net model: PyTorch and nnU-Net v2 must both be importable."""
    return import_torch("the nnunet engine", with_nnunet=True, alternative=", or use --engine threshold")


def _safe_globals() -> list:
    """numpy scalars/arrays of numeric dtypes and their dtypes: what nnU-Net's checkpoints hold besides
    tensors and plain Python values (its logger stores numpy floats). Rebuilding them runs no code;
    object arrays stay refused. Names from numpy 1 pickles (`numpy.core.*`) are mapped too."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    numeric = (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
    )
    allowed: list = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    allowed += [
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    allowed += sorted({type(np.dtype(t)) for t in numeric} - {np.dtype}, key=lambda c: c.__name__)
    return allowed


def _safe_global_names(allowed: list) -> set[str]:
    names = set()
    for entry in allowed:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def _check_checkpoint_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' is missing; the model is incomplete — install it again")
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save's format since PyTorch 1.6
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
        raise InputError(
            f"checkpoint '{path}' is damaged or not a PyTorch checkpoint (torch.save zip format); "
            "download or copy the model again"
        ) from None
    if bad is not None:
        raise InputError(
            f"checkpoint '{path}' is damaged (entry {bad} fails its checksum); download or copy the model again"
        )


def unsafe_checkpoint_globals(path: str | Path) -> list[str]:
    """The Python globals that loading `path` would need beyond tensors, plain values and numeric numpy.
    Reads the pickle without running it. Empty for a normal nnU-Net checkpoint."""
    torch = import_torch()
    path = Path(path)
    _check_checkpoint_file(path)
    allowed = _safe_global_names(_safe_globals())
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to parse means a damaged file
        raise InputError(
            f"checkpoint '{path}' cannot be read ({first_line(exc)}); download or copy the model again"
        ) from None
    return sorted(set(found) - allowed)


def checkpoint_is_safe(path: str | Path) -> bool:
    """True when `path` loads with torch.load(weights_only=True, map_location="cpu") (numeric numpy
    scalars allowed); False when it would need unsafe unpickling (arbitrary Python objects, which can
    run code). InputError when it is damaged or not a checkpoint."""
    if unsafe_checkpoint_globals(path):
        return False
    _load_weights_only(Path(path), "cpu", mmap=True)
    return True


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load an nnU-Net checkpoint without unsafe unpickling (weights_only=True plus numeric numpy).
    InputError if it is damaged, not a checkpoint, or holds objects that need unsafe unpickling."""
    path = Path(path)
    unsafe = unsafe_checkpoint_globals(path)
    if unsafe:
        raise InputError(
            f"checkpoint '{path}' holds Python objects that could run code when loaded ({', '.join(unsafe[:5])}); "
            "LegSegNet loads only tensors, numbers and strings (torch.load weights_only=True) and refuses it — "
            "use a checkpoint saved by nnU-Net's trainer"
        )
    return _load_weights_only(path, map_location)


def check_model_checkpoints(folder: ModelFolder, progress: Progress) -> None:
    """Every checkpoint of a model folder loads weights-only (what `models install` checks before it
    registers a model). Without PyTorch the check is skipped with a note: it runs again at every load."""
    try:
        import_torch()
    except LegSegNetError:
        progress.note("PyTorch is not installed: the checkpoints' contents were not checked")
        return
    for fold, names in folder.folds.items():
        for file_name in names:
            path = folder.path / fold_dir(fold) / file_name
            try:
                unsafe = unsafe_checkpoint_globals(path)
            except InputError:
                raise InputError(
                    f"checkpoint fold_{fold}/{file_name} is damaged or not a PyTorch checkpoint; download or copy the model again"
                ) from None
            if unsafe:
                raise InputError(
                    f"checkpoint fold_{fold}/{file_name} holds Python objects that could run code when loaded "
                    f"({', '.join(unsafe[:5])}); LegSegNet loads checkpoints only with torch.load(weights_only=True) "
                    "and refuses this model"
                )
            _load_weights_only(path, "cpu", mmap=True, label=f"fold_{fold}/{file_name}")


def _load_weights_only(path: Path, map_location: Any, mmap: bool = False, label: str | None = None) -> dict:
    torch = import_torch()
    label = label or str(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise InputError(
            f"checkpoint '{label}' cannot be loaded ({first_line(exc)}); download or copy the model again"
        ) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise InputError(f"'{label}' is a PyTorch file but not an nnU-Net checkpoint (no network_weights)")
    return checkpoint
