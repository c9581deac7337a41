"""Untrusted zip archives: only the files a model is made of are extracted, and nothing escapes the target.

Every member's name and type is checked before anything is written: absolute paths, drive letters, `..`,
symbolic links, devices and encrypted entries are refused. Of the rest only plans.json, dataset.json,
dataset_fingerprint.json and `fold_N/checkpoint_*.pth` of a 2D model are extracted (`model_members`); every
other member is never decompressed. The chosen members' declared size is bounded before anything is written
and their actual bytes are counted while writing, since a zip header can lie.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..core.errors import InputError
from ..core.progress import Progress
from ..core.text import first_line
from .folder import CHECKPOINT_RE, CONFIGURATION, FOLD_RE, MAX_JSON_BYTES, MODEL_TOP_FILES, split_config_name

MAX_UNCOMPRESSED_BYTES = 8 * 1024**3
MAX_ARCHIVE_MEMBERS = 10_000
_CHUNK = 1 << 20


def extract_model_members(
    archive: Path,
    dest: Path,
    progress: Progress,
    label: str,
    *,
    check_free_space: Callable[[int], None],
    max_members: int = MAX_ARCHIVE_MEMBERS,
    max_bytes: int = MAX_UNCOMPRESSED_BYTES,
) -> None:
    """Extract from an untrusted zip only the files a model is made of (`model_members`).

    Every member's name and type is checked first; then the declared size of the chosen members is
    bounded before anything is written, and their actual bytes are counted while they are written
    (a header may lie). Other members are never decompressed. `check_free_space(bytes)` raises when the
    target's disk cannot hold the declared size."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise InputError(
            f"'{label}' is not a valid .zip archive (or the download is damaged); check the file or URL"
        ) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise InputError(f"'{label}' holds {len(infos)} entries, more than {max_members}; not a model archive")
        seen: set[str] = set()
        files: dict[PurePosixPath, zipfile.ZipInfo] = {}
        for info in infos:
            rel = safe_member_path(info.filename, label)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise InputError(
                    f"'{label}' holds '{info.filename}', which is a {_file_kind(kind)}, not a file; "
                    "archives may hold only files and folders — refused"
                )
            if info.flag_bits & 0x1:
                raise InputError(f"'{label}' holds an encrypted entry '{info.filename}'; give an unencrypted archive")
            if rel is None:
                continue
            key = str(rel).lower()
            if key in seen:
                raise InputError(f"'{label}' holds '{info.filename}' twice (names differ only in case?); refused")
            seen.add(key)
            if not info.is_dir():
                files[rel] = info
        plan = [(files[rel], rel) for rel in sorted(model_members(files))]
        if not any(rel.name == "plans.json" for _, rel in plan):
            what = "it is empty" if not files else "no plans.json in it"
            raise InputError(
                f"'{label}' holds no nnU-Net model ({what}); a model archive holds plans.json, dataset.json "
                "and fold_N/checkpoint_*.pth"
            )
        declared = 0
        for info, rel in plan:
            if rel.suffix == ".json" and info.file_size > MAX_JSON_BYTES:
                raise InputError(
                    f"'{label}' holds a {info.file_size / 1e6:.0f} MB '{info.filename}'; an nnU-Net {rel.name} "
                    "is a few kB — refused (not a model archive)"
                )
            declared += info.file_size
        if declared > max_bytes:
            raise InputError(
                f"'{label}' would expand to more than {max_bytes / 1e9:.1f} GB; "
                "refused (not a model archive, or a zip bomb)"
            )
        skipped = len(files) - len(plan)
        if skipped:
            progress.note(
                f"{skipped} file(s) in {Path(label).name or label} are not part of the model and were not extracted"
            )
        check_free_space(declared)
        progress.stage("extracting", total=len(plan))
        dest_real = os.path.realpath(dest)
        written_total = 0
        for info, rel in plan:
            target = dest.joinpath(*rel.parts)
            # The name checks above already make escape impossible; this is the second lock.
            if not os.path.realpath(target).startswith(dest_real + os.sep):
                raise InputError(f"'{label}' entry '{info.filename}' points outside the target folder; refused")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        written_total += len(chunk)
                        if written > info.file_size or written_total > max_bytes:
                            raise InputError(
                                f"'{label}' entry '{info.filename}' expands beyond its declared size; refused"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise InputError(
                    f"'{label}' is damaged ({first_line(exc)} in '{info.filename}'); download it again"
                ) from None
            except NotImplementedError as exc:
                raise InputError(
                    f"'{label}': {exc}; re-create the archive with standard (deflate) compression"
                ) from None
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise InputError(f"'{label}' entry '{info.filename}' collides with another entry; refused") from None
            progress.advance()


def model_members(paths: Any) -> set[PurePosixPath]:
    """Of an archive's file paths, those a model is made of: plans.json, dataset.json and
    dataset_fingerprint.json of every folder holding plans.json, and its fold_N/checkpoint_*.pth (not
    checkpoint_latest.pth, not those of a 3d configuration folder). `store.collect_model_files` keeps the same."""
    paths = set(paths)
    model_dirs = {p.parent for p in paths if p.name == "plans.json"}
    chosen = set()
    for path in paths:
        if path.name in MODEL_TOP_FILES and path.parent in model_dirs:
            chosen.add(path)
        elif (
            len(path.parts) >= 2
            and path.parent.parent in model_dirs
            and FOLD_RE.match(path.parent.name)
            and CHECKPOINT_RE.match(path.name)
            and path.name != "checkpoint_latest.pth"
            and split_config_name(path.parent.parent.name)[2] in (None, CONFIGURATION)
        ):
            chosen.add(path)
    return chosen


def safe_member_path(name: str, label: str) -> PurePosixPath | None:
    """A relative path that stays inside the target folder, or InputError; None for a bare './'."""
    if "\x00" in name or any(ord(c) < 32 for c in name):
        raise InputError(f"'{label}' holds an entry with control characters in its name; refused")
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or ":" in text:
        raise InputError(f"'{label}' holds '{name}', an absolute path; archives may hold only relative paths — refused")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(f"'{label}' holds '{name}', which climbs out of the target folder ('..'); refused")
    return PurePosixPath(*parts) if parts else None


def _file_kind(mode_kind: int) -> str:
    return {
        stat.S_IFLNK: "symbolic link",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "named pipe",
        stat.S_IFSOCK: "socket",
    }.get(mode_kind, "special file")
