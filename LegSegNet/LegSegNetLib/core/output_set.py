"""A set of output files replaced as a whole, never half: the one writer of OUTDIR's results.

    check_outputs(outdir, names, inputs)   before any work: where the set goes, and that it may go there
    OutputSet(outdir, names).write(writers, progress)

A set of files in one folder cannot be replaced file by file without a moment (or, after a crash, a state)
in which some files are new and some old. So the folder is what is replaced:

1. The new set is written into a staging folder beside OUTDIR, `.lsn-XXXXXXXX` (short, so OUTDIR names near
   the 255-byte limit still work), claimed by a marker file `.lsn-XXXXXXXX.pid` (owner pid and host).
2. Everything else in OUTDIR (the user's own files and folders) is hard-linked into the staging folder.
3. The staging folder and OUTDIR swap names in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`, macOS
   `renamex_np(RENAME_SWAP)`; elsewhere two renames, undone if the second fails). A reader sees the whole
   old set or the whole new set; a crash leaves one of them in OUTDIR.
4. The old folder, now at the staging name, gives back what is not ours: entries linked in step 2 are
   dropped (the same file is in OUTDIR), anything not linked (folders) is moved into OUTDIR. Only the
   set's own names are deleted. Then it and the marker go.

A run that is killed leaves the staging folder and its marker; the next run into the same parent folder
finishes step 4 for every marker whose owner is no longer alive on this host (a live owner's, another
host's, or anything without a marker is never touched). Nothing else is ever deleted: an entry that cannot
be given back stays where it is, under its marker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Callable

from .errors import InputError, LegSegNetError
from .input_paths import itk_path
from .paths import check_path, nearest_existing, writable
from .progress import Progress
from .signals import stop_signals_deferred
from .staging import owner_gone, read_marker, write_marker

STAGING_PREFIX = ".lsn-"
MARKER_SUFFIX = ".pid"
ASIDE_SUFFIX = ".o"  # the old folder while the two-rename fallback swaps


# ====================================================================== the validation step
def check_outputs(
    outdir: str | os.PathLike, names: Iterable[str], inputs: Sequence[str | os.PathLike] = (), option: str = "-o"
) -> Path:
    """The folder the set goes to (symlinks resolved), or InputError before any work is done.

    Refuses a path the file system cannot hold (core/paths.check_path), an output file that is one of the
    inputs (by inode: links and symlinks count), a folder that cannot take a swapped-in set (a file, a
    read-only folder, a mount point, a shared sticky folder such as /tmp, the current folder, a parent that
    is not writable), and a path whose nearest existing folder is not writable.
    """
    names = tuple(names)
    # the longest path written: a file in the staging folder beside OUTDIR (or in the old set put aside)
    inside = len(f"/{STAGING_PREFIX}01234567{ASIDE_SUFFIX}/") + max((len(os.fsencode(n)) for n in names), default=0)
    given = check_path(outdir, option, longest_inside=inside)
    folder = Path(os.path.realpath(given))
    if folder != given:
        check_path(folder, option, longest_inside=inside)
    itk_path(folder.parent)  # the set is staged beside OUTDIR, where SimpleITK writes the label map
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the output path {given} is a file; give a folder for the results")
    for source in inputs:
        for name in names:
            _refuse_same_file(Path(source).expanduser(), folder / name, option)
    if folder.is_dir():
        if folder == folder.parent or os.path.ismount(folder):
            raise InputError(f"the output folder {given} is a mount point (or the root); give a folder inside it")
        if folder.stat().st_mode & stat.S_ISVTX:
            raise InputError(
                f"the output folder {given} is a shared folder (sticky, like /tmp); give a folder of your own inside it"
            )
        with contextlib.suppress(OSError):
            cwd = Path(os.getcwd())
            if cwd == folder or folder in cwd.parents:
                example = f"e.g. {option} results" if option.startswith("-") else "e.g. a new folder inside it"
                raise InputError(
                    f"the output folder {given} holds the current folder; the results are swapped in "
                    f"as a whole folder: give a folder of their own, {example}"
                )
        if not writable(folder):
            raise InputError(f"the output folder {given} is read-only; make it writable or choose another folder")
        if not writable(folder.parent):
            raise InputError(
                f"cannot replace the results in {given}: its parent folder {folder.parent} is not "
                "writable (the new set is prepared beside it); choose another output folder"
            )
    else:
        existing = nearest_existing(folder.parent)
        if not existing.is_dir():
            raise InputError(f"cannot create the output folder {given}: {existing} is a file; choose another")
        if not writable(existing):
            raise InputError(f"cannot create the output folder {given}: {existing} is not writable; choose another")
    return folder


def _refuse_same_file(source: Path, target: Path, option: str) -> None:
    try:
        same = os.path.lexists(target) and source.exists() and os.path.samefile(source, target)
    except OSError:
        return
    if same:
        raise InputError(
            f"the input {source} is the output file {target} this command writes; it would be "
            f"replaced: write the results to another folder ({option})"
        )


# ====================================================================== the writer
class OutputSet:
    """The files `names` in `outdir`, replaced together (see the module docstring)."""

    def __init__(
        self,
        outdir: str | os.PathLike,
        names: Iterable[str],
        inputs: Sequence[str | os.PathLike] = (),
        option: str = "-o",
    ):
        self.names = tuple(names)
        self.folder = check_outputs(outdir, self.names, inputs, option)

    def write(self, writers: Sequence[tuple[str, Callable[[Path], None]]], progress: Progress | None = None) -> None:
        """Call each `write(path)` into the staging folder, then swap the set in. Raises LegSegNetError for a
        failed write or swap (InputError for a folder we may not write to), after which OUTDIR holds exactly
        what it held before. A stop signal (core/signals.py) while the files are written unwinds the same way."""
        progress = progress or Progress()
        unknown = [name for name, _ in writers if name not in self.names]
        if unknown:
            raise ValueError(f"{unknown} are not among the set's files {self.names}")
        folder, parent = self.folder, self.folder.parent
        with stop_signals_deferred():  # a stop signal cannot fall between claiming a staging folder and the try
            created = _make_folders(parent)
            sweep_stale(parent)
            stage, marker = _claim(parent, folder.name, self.names, created)
        swapped = False
        try:
            progress.stage("writing", total=len(writers))
            for name, write in writers:
                write(stage / name)
                progress.advance()
            with stop_signals_deferred():  # from here on the set goes in whole: a stop takes effect after it
                existed = folder.is_dir()
                if existed:
                    os.chmod(stage, stat.S_IMODE(folder.stat().st_mode))
                    _link_others(folder, stage, self.names)
                old = _swap_in(stage, folder, existed)
                swapped = True
                if old is not None:
                    left = _give_back(old, folder, self.names)
                    if left:
                        progress.note(f"could not move {', '.join(left)} back into {folder}: they are in {old}")
                _release(stage, marker, old)
        except BaseException as exc:
            if not swapped:
                with stop_signals_deferred():
                    _give_back(stage, folder, self.names)
                    _release(stage, marker)
                    _remove_created(created)
            if isinstance(exc, OSError):
                raise _write_failure(folder, exc) from exc
            raise


def _write_failure(folder: Path, exc: OSError) -> LegSegNetError:
    """The failure's real cause: a folder we may not write to is the user's choice (exit 2), a full disk is not."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(
            f"cannot write the outputs to {folder}: {exc.strerror}{where}; choose a folder you can write to"
        )
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return LegSegNetError(
            f"could not write the outputs to {folder}: the disk is full ({exc.strerror}); free "
            "some space or choose another folder"
        )
    return LegSegNetError(f"could not write the outputs to {folder}: {exc.strerror or exc}{where}")


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and missing parents; return those created, deepest first (for clean-up)."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_created([m for m in missing if m.exists()])
        raise InputError(f"cannot create the output folder {folder} ({exc.strerror or exc}); choose another") from exc
    return missing


def _remove_created(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; only empty ones, so nothing of anyone else is touched
        with contextlib.suppress(OSError):
            folder.rmdir()


_FULL_DISK = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _claim(parent: Path, target: str, names: tuple[str, ...], created: list[Path]) -> tuple[Path, Path]:
    """A new staging folder and its marker (created first, exclusively: a folder of ours always has one)."""
    for _ in range(100):
        stem = STAGING_PREFIX + secrets.token_hex(4)
        marker = parent / (stem + MARKER_SUFFIX)
        try:
            write_marker(marker, target=target, names=list(names))
        except FileExistsError:
            continue
        except OSError as exc:
            _remove_created(created)
            if exc.errno in _FULL_DISK:  # not the user's choice of folder: exit 1, as for any write that fails
                raise LegSegNetError(
                    f"could not write the outputs beside {parent / target} "
                    f"({exc.strerror or exc}); check free disk space"
                ) from exc
            raise InputError(
                f"cannot write beside {parent / target} ({exc.strerror or exc}); choose an output "
                "folder in a folder you can write to"
            ) from exc
        try:
            os.mkdir(parent / stem)
        except OSError as exc:
            marker.unlink()
            _remove_created(created)
            raise InputError(
                f"cannot write beside {parent / target} ({exc.strerror or exc}); choose an output "
                "folder in a folder you can write to"
            ) from exc
        return parent / stem, marker
    raise LegSegNetError(f"could not find a free staging name in {parent}")


def _link_others(folder: Path, stage: Path, names: tuple[str, ...]) -> None:
    """Hard-link OUTDIR's other files into the new set, so they stay in OUTDIR through the swap."""
    for entry in os.scandir(folder):
        if entry.name in names or os.path.lexists(stage / entry.name):
            continue
        with contextlib.suppress(OSError):  # what cannot be linked (folders) is moved after the swap
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), stage / entry.name)
            elif entry.is_file(follow_symlinks=False):
                os.link(entry.path, stage / entry.name, follow_symlinks=False)


def _swap_in(stage: Path, folder: Path, existed: bool) -> Path | None:
    """Put the staged set at `folder` in one step; return where the old folder now is (None: there was none)."""
    if not existed:
        try:
            os.rename(stage, folder)  # replaces an empty folder made meanwhile; a full one: swap with it
            return None
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if swap_folders(stage, folder):
        return stage
    aside = stage.with_name(stage.name + ASIDE_SUFFIX)
    os.rename(folder, aside)
    try:
        os.rename(stage, folder)
    except BaseException:
        os.rename(aside, folder)
        raise
    return aside


def swap_folders(a: Path, b: Path) -> bool:
    """Exchange the two paths atomically; False when this system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        result = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        result = libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _give_back(source: Path, folder: Path, names: tuple[str, ...]) -> list[str]:
    """Empty a staging (or old) folder: the set's files go, links of OUTDIR's files go, everything else moves
    into `folder` (when that exists and the name is free). Returns the names left behind."""
    left = []
    try:
        entries = list(os.scandir(source))
    except OSError:
        return left
    for entry in entries:
        target = folder / entry.name
        try:
            if entry.name in names and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
            elif _same_entry(entry.path, target):
                os.unlink(entry.path)  # a link made by _link_others: the file itself is in OUTDIR
            elif folder.is_dir() and not os.path.lexists(target):
                os.rename(entry.path, target)
            else:
                left.append(entry.name)
        except OSError:
            left.append(entry.name)
    if not left:
        with contextlib.suppress(OSError):
            source.rmdir()
    return left


def _same_entry(a: str, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    if stat.S_ISLNK(sa.st_mode) and stat.S_ISLNK(sb.st_mode):
        return os.readlink(a) == os.readlink(b)
    return not stat.S_ISDIR(sa.st_mode) and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _release(stage: Path, marker: Path, *others: Path | None) -> None:
    """Drop the marker once nothing it claims is left (else the next run's sweep finishes the job)."""
    if any(p is not None and os.path.lexists(p) for p in (stage, stage.with_name(stage.name + ASIDE_SUFFIX), *others)):
        return
    with contextlib.suppress(OSError):
        marker.unlink()


# ====================================================================== stale staging of killed runs
def sweep_stale(parent: Path) -> None:
    """Finish the clean-up of runs that were killed: only folders whose marker names a dead process here."""
    try:
        markers = [
            e for e in os.scandir(parent) if e.name.startswith(STAGING_PREFIX) and e.name.endswith(MARKER_SUFFIX)
        ]
    except OSError:
        return
    for entry in markers:
        record = _read_marker(Path(entry.path))
        if record is None or not owner_gone(record):
            continue
        stage = Path(entry.path[: -len(MARKER_SUFFIX)])
        folder = parent / record["target"]
        aside = stage.with_name(stage.name + ASIDE_SUFFIX)
        if os.path.isdir(aside) and not os.path.lexists(folder):
            with contextlib.suppress(OSError):
                os.rename(aside, folder)  # killed between the fallback's two renames: the old set goes back
        for path in (stage, aside):
            if os.path.isdir(path) and not os.path.islink(path):
                _give_back(path, folder, tuple(record["names"]))
        _release(stage, Path(entry.path))


def _read_marker(path: Path) -> dict | None:
    record = read_marker(path)
    try:
        if (
            record is not None
            and isinstance(record["target"], str)
            and "/" not in record["target"]
            and record["target"] not in ("", ".", "..")
            and all(isinstance(n, str) and "/" not in n for n in record["names"])
        ):
            return record
    except (KeyError, TypeError):
        pass
    return None
