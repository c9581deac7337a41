"""Small text helpers shared by the CLI, the worker, training and the Slicer module."""
from __future__ import annotations


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
