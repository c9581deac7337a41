"""Segmentation engines: slices in, labels (0-4) out, in the slab's own grid.

An engine is any object with a `name`, an `info()` dict recorded in metrics.json, and
`segment(slab, spacing, progress) -> uint8 labels of slab.shape`. `slab` is (n_slices, rows, cols) in HU
(see ct_volume.py for the axis convention); `spacing` is (slice, row, column) in mm.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..progress import Progress


class Engine(Protocol):
    name: str

    def info(self) -> dict: ...

    def segment(self, slab: np.ndarray, spacing: tuple[float, float, float], progress: Progress) -> np.ndarray: ...


ENGINE_NAMES = ("auto", "threshold", "nnunet")


def make_engine(name: str = "auto", **options) -> Engine:
    """The engine the user asked for. `auto` is nnU-Net when a model is given or installed, else threshold."""
    from ..errors import InputError

    if name not in ENGINE_NAMES:
        raise InputError(f"unknown engine '{name}'; choose one of {', '.join(ENGINE_NAMES)}")
    if name == "auto":
        name = "nnunet" if options.get("model") or _installed_model_available() else "threshold"
    if name == "threshold":
        from .threshold import ThresholdEngine

        return ThresholdEngine()
    raise InputError(
        "the nnunet engine is not available in this version yet; use --engine threshold"
    )


def _installed_model_available() -> bool:
    return False
