"""Small text helpers shared by the CLI, the worker, training and the Slicer module."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np


def format_duration(seconds: float) -> str:
    """A duration as people read it: '40 s', '12 min', '1.5 h', '2.3 days' (the one format everywhere)."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type's name), for one-line error reports."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def now_iso(timespec: str = "seconds") -> str:
    """The current UTC time as ISO 8601, as recorded in manifests and run records: to the second, or as
    `timespec` says (the model store orders installs by "microseconds")."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)


def json_safe(value):
    """A copy that `json.dumps(..., allow_nan=False)` accepts: NaN/inf become None, numpy scalars Python ones."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value
