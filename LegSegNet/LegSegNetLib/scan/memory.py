"""How much memory reading a scan may take: the available-memory probe, the header check that refuses an
image too large before any voxel is read, and the diagnosis of a native read that ran out of memory
(a process limit such as `ulimit -v`, a container limit), which must not be reported as a damaged file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..core.errors import InputError, LegSegNetError

# How ITK, GDCM and the C++ runtime word a failed allocation (lower case)
_ALLOCATION_FAILURES = (
    "failed to allocate",
    "bad_alloc",
    "memoryallocationerror",
    "cannot allocate memory",
    "out of memory",
)


def memory_limit_bytes() -> int:
    """The default cap on an input's voxels: half the memory available now (8 GiB when unknown)."""
    available = available_memory_bytes()
    return available // 2 if available else 8 << 30


def available_memory_bytes() -> int | None:
    """Memory available to this process: the OS figure, lowered by a cgroup (container) limit."""
    candidates = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    positive = [c for c in candidates if c > 0]
    return min(positive) if positive else None


def check_memory(name: str, size, bytes_per_voxel: int, limit: int) -> None:
    """Refuse, from the header, an image whose voxels would take more than `limit` bytes."""
    voxels = math.prod(int(s) for s in size)
    needed = voxels * bytes_per_voxel
    if needed > limit:
        raise InputError(
            f"'{name}' is too large to read: {' x '.join(str(int(s)) for s in size)} voxels need about "
            f"{gigabytes(needed)} of memory, more than the {gigabytes(limit)} allowed (half the memory available); "
            "crop it to the legs first (e.g. Slicer's Crop Volume) or use a machine with more memory"
        )


def gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.3g} GB"


def refuse_if_memory_ran_out(name: str, size, bytes_per_voxel: int, reason: str) -> None:
    """After a native read failed: raise "not enough memory" (exit 1, not the user's file) when that is why.

    ITK says so when its own allocation fails; the NIfTI library only says its load failed. So when the
    reason does not tell, twice the voxels' size is reserved and at once released (never touched, so it
    costs nothing): if even that fails, the memory ran out, and the file is not to blame.
    """
    needed = math.prod(int(s) for s in size) * bytes_per_voxel
    if any(words in reason.lower() for words in _ALLOCATION_FAILURES) or not _can_reserve(2 * needed):
        raise LegSegNetError(
            f"not enough memory to read '{name}': its {' x '.join(str(int(s)) for s in size)} voxels need about "
            f"{gigabytes(needed)} and this process could not get them (a limit such as `ulimit -v`, or other "
            "programs holding the memory); close other programs or raise the limit, or crop the scan to the "
            "legs first (e.g. Slicer's Crop Volume)"
        )


def _can_reserve(n_bytes: int) -> bool:
    try:
        block = np.empty(n_bytes, np.uint8)
    except MemoryError:
        return False
    del block
    return True
