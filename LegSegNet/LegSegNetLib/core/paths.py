"""Checks of a path a command will write to, made before any work: each failure is the user's input (exit 2).

    check_path(path, option)              a path the file system can hold: not empty, no link to nowhere on the
                                          way, each name and the whole path within the file system's limits
    check_writable_folder(path, option)   a folder written into in place (a training set, the model store):
                                          a folder or creatable, and writable
    writable(folder)                      may we write there (also: not marked read-only, even for root)

core/output_set.check_outputs builds on these for the folders whose results are swapped in as a set.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import InputError

# POSIX's usual limits, where the file system does not say: bytes per name and per whole path.
DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096


def check_path(path: str | os.PathLike, option: str, longest_inside: int = 0) -> Path:
    """The absolute path, or InputError when it cannot be written. `longest_inside`: bytes that will be added
    under it (e.g. '/.lsn-12345678/labels.nii.gz'), counted against the whole path's limit."""
    text = os.fspath(path)
    if text.strip() == "":
        raise InputError(f"{option} is empty; give a folder")
    if "\0" in text:
        raise InputError(f"{option} holds a NUL character; give a folder name without it")
    given = Path(text).expanduser().absolute()
    existing = nearest_existing(given)
    name_max = _limit(existing, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    for part in given.parts[1:]:
        size = len(os.fsencode(part))
        if size > name_max:
            raise InputError(
                f"{option}: the name '{part[:24]}...' is {size} bytes long, and this file system allows at "
                f"most {name_max} bytes per name; choose a shorter name"
            )
    path_max = _limit(existing, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    size = len(os.fsencode(str(given))) + longest_inside
    if size >= path_max:
        raise InputError(
            f"{option}: the path {str(given)[:48]}... is too long ({size} bytes with the files inside "
            f"it; this system allows {path_max - 1}); choose a shorter path"
        )
    for step in (given, *given.parents):  # after the lengths: a name too long cannot even be looked at
        if step.is_symlink() and not step.exists():
            raise InputError(
                f"{option} {given}: {step} is a link to {os.readlink(step)}, which does not exist; "
                "give an existing folder, or one that can be created"
            )
    return given


def check_writable_folder(path: str | os.PathLike, option: str, longest_inside: int = 0) -> Path:
    """The folder (links resolved), existing or creatable, that we may write into; else InputError."""
    given = check_path(path, option, longest_inside)
    folder = Path(os.path.realpath(given))
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"{option} {given} is a file; give a folder (it is created if missing)")
        if not writable(folder):
            raise InputError(f"{option} {given} is read-only; make it writable or choose another folder")
        return folder
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise InputError(f"cannot create {option} {given}: {existing} is a file; choose another folder")
    if not writable(existing):
        raise InputError(f"cannot create {option} {given}: {existing} is read-only; choose another folder")
    return folder


def writable(folder: Path) -> bool:
    """We may create and rename entries in `folder`. A folder with no write permission bits at all counts as
    read-only also for root (who may write anyway): someone marked it so, and results must not land there."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def nearest_existing(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists."""
    return next(p for p in (path, *path.parents) if os.path.lexists(p))


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder if folder.is_dir() else folder.parent, name))
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf
        return default
