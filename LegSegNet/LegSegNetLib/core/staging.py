"""Owner markers of staging folders: which process made a folder, so that only a killed run's leftovers are swept.

    write_marker(path, **fields)   create `path` exclusively, holding this process's pid and host (and `fields`)
    read_marker(path)              its record, or None when it is not one of ours
    owner_gone(record)             its process no longer runs on this host: the folder is a leftover

A folder of a live process, of another host (a shared disk) or without a marker is never touched. Used by
the output-set writer (core/output_set.py) and the model store's installs (models/store.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path


def write_marker(path: Path, **fields) -> None:
    """Raises FileExistsError when `path` exists (pick another name) and OSError when it cannot be written."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), **fields}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out)
    except OSError:  # e.g. a full disk: the marker is ours and holds nothing useful
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def read_marker(path: Path) -> dict | None:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(record["pid"], int) and isinstance(record["host"], str):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def owner_gone(record: dict) -> bool:
    return record["host"] == socket.gethostname() and not alive(record["pid"])


def alive(pid: int) -> bool:
    if pid <= 0 or os.name == "nt":
        return True  # not a pid we wrote; on Windows os.kill(pid, 0) would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
