"""Imported by each local Dask worker as it starts (Dask's worker `preload`, cluster.py): the modules a scan
needs, so that a worker's first scan does not wait for them (about half a second)."""

from __future__ import annotations

from . import scan_task  # noqa: F401

try:  # the figures (overlay.png, profile.png) import matplotlib on first use; without it they are not drawn
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.patches  # noqa: F401
except ImportError:
    pass
