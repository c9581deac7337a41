"""Checks on a path before a reader or a native library gets it.

- `check_readable`: a file or folder this process may not read is refused as "permission denied: PATH",
  not reported as missing, empty or corrupt by whichever reader happened to fail on it.
- `itk_path`: the path as text SimpleITK can take. Its C++ code aborts the whole process (exit 134, no
  message, staging left behind) on a path that is not valid UTF-8, which a Linux file name may be.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError


def permission_denied(path: str | os.PathLike) -> InputError:
    return InputError(
        f"permission denied: {shown_path(path)}; ask for read access to it, or copy it somewhere "
        "you can read and give that copy"
    )


def check_readable(path: str | os.PathLike) -> None:
    """Refuse a file or folder that exists but may not be read (permission bits, ACLs, a closed parent
    folder). A missing path passes: the caller says what it expected there."""
    try:
        if os.path.isdir(path):
            with os.scandir(path):
                pass
        else:
            with open(path, "rb"):
                pass
    except PermissionError:
        raise permission_denied(path) from None
    except OSError:
        return


def itk_path(path: str | os.PathLike) -> str:
    """`path` as a str for SimpleITK, or InputError when it is not valid UTF-8 (see the module docstring)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"the path '{shown_path(text)}' is not UTF-8 text (a file or folder name holds a byte such as \\xff, "
            "e.g. from an old Latin-1 system); the image libraries cannot open it: rename it in UTF-8"
        ) from None
    return text


def shown_path(path: str | os.PathLike) -> str:
    """The path for a message: bytes that are not UTF-8 shown as \\xNN instead of breaking the output."""
    return os.fsencode(Path(path)).decode("utf-8", "backslashreplace")
