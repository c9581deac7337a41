"""The per-user model store: installing, listing, choosing and removing nnU-Net models.

`ModelStore` is the folder shared by the CLI and Slicer (env `LEGSEGNET_MODELS_DIR`, else a per-user data
folder). `install` accepts a model folder, a `.zip`, an `https://` URL of a zip, or `hf:OWNER/REPO[@REVISION]`
(the published weights: `hf:GogoChen/LegSegNet`). Everything that arrives is untrusted: `--sha256` is verified
before anything is extracted (archives.py extracts only a model's files, bounded in size), the plans' imported
names are checked (folder.load_plans), the folder is validated (folder.inspect_model_folder) and every
checkpoint must load weights-only (checkpoints.py) before the model is registered. The install is atomic:
files are staged in a hidden folder inside the store and renamed into place at the end, so on any failure
the store is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .. import __version__
from ..core.errors import InputError, LegSegNetError
from ..core.files import atomic_write_text, sha256_file
from ..core.paths import check_writable_folder
from ..core.progress import Progress
from ..core.staging import owner_gone, read_marker, write_marker
from ..core.text import now_iso
from . import hub
from .archives import MAX_ARCHIVE_MEMBERS, MAX_UNCOMPRESSED_BYTES, extract_model_members
from .checkpoints import check_model_checkpoints
from .download import DEFAULT_TIMEOUT_S, MAX_DOWNLOAD_BYTES, check_url, download
from .folder import (
    CHECKPOINT_RE,
    CONFIGURATION,
    METADATA_FILE,
    MODEL_TOP_FILES,
    ModelFolder,
    fold_dir,
    guess_input_format,
    inspect_model_folder,
    locate_model_dir,
    name_from_folder,
    read_metadata,
    scan_folds,
    sorted_dirs,
)
from .hub import HF_ENDPOINT_ENV, LICENCE_URLS, PUBLISHED_SOURCE, licence_notice

MODELS_DIR_ENV = "LEGSEGNET_MODELS_DIR"
METADATA_VERSION = 1
DEFAULT_MARKER = ".default"  # holds the name of the model marked default
STAGING_PREFIX = ".install-"
MARKER_SUFFIX = ".pid"  # `.install-XXXXXXXX.pid` names the process installing into `.install-XXXXXXXX`
# bytes a path inside the store adds to its folder's, at most (a model's name is <= 64 characters), for the
# path-length check: '/.install-abcd1234/model/nnUNetTrainer__nnUNetPlans__2d/fold_all/checkpoint_final.pth'
LONGEST_ENTRY = 160
TRASH_PREFIX = ".remove-"
STALE_STAGING_S = 24 * 3600  # unmarked leftovers (older versions, removals) older than this are removed
_MIB = 1 << 20

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelInfo:
    """One installed model, as recorded in its metadata file."""

    name: str
    path: Path  # the model folder inside the store (plans.json, dataset.json, fold_N/, metadata)
    source: str
    sha256: str | None  # of the archive for a zip/URL; of the model's files for a folder or hf: source
    sha256_of: str  # "archive" or "files"
    installed_at: str  # ISO 8601, UTC
    licence: str | None
    round: int | None  # model-in-the-loop training round, None for other models
    input_format: str
    folds: tuple[int | str, ...]
    is_default: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def folder(self) -> ModelFolder:
        return inspect_model_folder(self.path, name=self.name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "sha256": self.sha256,
            "sha256_of": self.sha256_of,
            "installed_at": self.installed_at,
            "licence": self.licence,
            "round": self.round,
            "input_format": self.input_format,
            "folds": [str(f) for f in self.folds],
            "default": self.is_default,
        }


def default_store_root() -> Path:
    """LEGSEGNET_MODELS_DIR, else the per-user data folder of this platform (platformdirs): on Linux
    `$XDG_DATA_HOME/legsegnet/models` (`~/.local/share/...`), on macOS `~/Library/Application Support/...`,
    on Windows `%LOCALAPPDATA%/legsegnet/models`."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(_platformdirs().user_data_dir("legsegnet", appauthor=False)) / "models"


def _platformdirs():
    try:
        import platformdirs
    except ImportError:  # 3D Slicer's Python ships pip, not platformdirs: pip's own copy of it
        from pip._vendor import platformdirs  # type: ignore[no-redef]
    return platformdirs


class ModelStore:
    """The installed models: one folder each under `root`, with a metadata file. Shared by CLI and Slicer."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES,
        max_archive_members: int = MAX_ARCHIVE_MEMBERS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        hf_endpoint: str | None = None,
        hf_cache_dir: str | Path | None = None,
    ) -> None:
        """`timeout_s`: for https:// archives (hub downloads use huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT);
        `hf_endpoint`: the hub for hf: sources (else HF_ENDPOINT, else huggingface_hub's default);
        `hf_cache_dir`: huggingface_hub's download cache (else HF_HUB_CACHE / HF_HOME, else its default)."""
        self.root = Path(root).expanduser() if root is not None else default_store_root()
        self.max_download_bytes = max_download_bytes
        self.max_uncompressed_bytes = max_uncompressed_bytes
        self.max_archive_members = max_archive_members
        self.timeout_s = timeout_s
        endpoint = hf_endpoint or os.environ.get(HF_ENDPOINT_ENV)
        self.hf_endpoint = endpoint.rstrip("/") if endpoint else None
        self.hf_cache_dir = hf_cache_dir

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # ---------------------------------------------------------------- reading
    def list(self) -> list[ModelInfo]:
        """Installed models, oldest first."""
        if not self.root.is_dir():
            return []
        default_name = self._marked_default()
        infos = []
        for child in sorted_dirs(self.root):
            if child.name.startswith(".") or not _NAME_RE.match(child.name):
                continue
            info = self._read_info(child, default_name)
            if info is not None:
                infos.append(info)
        infos.sort(key=lambda i: (i.installed_at, i.name))
        if default_name is None or not any(i.is_default for i in infos):
            if infos:  # the newest is the default when none is marked
                newest = infos[-1]
                infos[-1] = dataclasses.replace(newest, is_default=True)
        return infos

    def get(self, name: str) -> ModelInfo:
        for info in self.list():
            if info.name == name:
                return info
        installed = [i.name for i in self.list()]
        if installed:
            raise InputError(
                f"no installed model named '{name}'; installed: {', '.join(installed)} (see 'legsegnet models list')"
            )
        raise InputError(
            f"no installed model named '{name}' (no models are installed in {self.root}); install one with "
            f"'legsegnet models install {PUBLISHED_SOURCE}' or give a model folder"
        )

    def default(self) -> ModelInfo | None:
        """The model `--engine auto` uses: the one marked default, else the most recently installed."""
        for info in self.list():
            if info.is_default:
                return info
        return None

    def set_default(self, name: str) -> ModelInfo:
        self.get(name)
        atomic_write_text(self.root / DEFAULT_MARKER, name + "\n")
        return self.get(name)

    def _marked_default(self) -> str | None:
        try:
            text = (self.root / DEFAULT_MARKER).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return text or None

    def _read_info(self, folder: Path, default_name: str | None) -> ModelInfo | None:
        metadata = read_metadata(folder)
        if metadata is None:
            if not (folder / "plans.json").is_file():
                return None
            # Copied into the store by hand: list it with what can be seen.
            metadata = {
                "source": "(copied into the store)",
                "installed_at": _dt.datetime.fromtimestamp(folder.stat().st_mtime, _dt.timezone.utc).isoformat(),
            }
        folds = tuple(f for f, c in scan_folds(folder).items() if c)
        return ModelInfo(
            name=folder.name,
            path=folder,
            source=str(metadata.get("source", "")),
            sha256=metadata.get("sha256"),
            sha256_of=str(metadata.get("sha256_of", "files")),
            installed_at=str(metadata.get("installed_at", "")),
            licence=metadata.get("licence"),
            round=metadata.get("round"),
            input_format=str(metadata.get("input_format") or guess_input_format(folder)),
            folds=folds,
            is_default=folder.name == default_name,
            metadata={**metadata, "name": folder.name},
        )

    # ---------------------------------------------------------------- removing
    def remove(self, name: str) -> None:
        info = self.get(name)
        trash = self.root / f"{TRASH_PREFIX}{name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(info.path, trash)  # atomic: the model disappears from the listing at once
        except OSError as exc:
            raise LegSegNetError(
                f"cannot remove model '{name}' ({exc.strerror or exc}); is it in use? close Slicer/other runs and retry"
            ) from None
        shutil.rmtree(trash, ignore_errors=True)
        if self._marked_default() == name:
            try:
                (self.root / DEFAULT_MARKER).unlink()
            except OSError:
                pass

    # ---------------------------------------------------------------- installing
    def install(
        self,
        source: str | Path,
        name: str | None = None,
        sha256: str | None = None,
        progress: Progress | None = None,
        *,
        training_round: int | None = None,
        licence: str | None = None,
        make_default: bool = False,
    ) -> ModelInfo:
        """Install a model from a folder, a .zip, an https:// URL of a zip, or hf:OWNER/REPO[@REVISION].

        `sha256`: the expected SHA-256 of the archive (zip file or URL, as sha256sum prints it), or for a
        folder or hf: source of the model's files (the `sha256` that `models list --json` shows).
        Any failure (checksum, unsafe archive, invalid model, network) leaves the store unchanged.
        """
        progress = progress or Progress()
        self.check_writable()  # before any work: a store that cannot take the model is known at once
        text = str(source).strip()
        expected = _normalise_sha256(sha256)
        kind = _source_kind(text)
        if kind == "folder":
            folder_source = Path(text).expanduser()
            if not folder_source.exists():
                raise InputError(
                    f"'{text}' is neither an existing folder or .zip file nor a URL; give a model folder, "
                    f"a .zip, an https:// URL of a zip, or hf:OWNER/REPO (e.g. {PUBLISHED_SOURCE})"
                )
            name = _check_name(name) if name else _default_name(kind, text, locate_model_dir(folder_source)[0])
        else:
            name = _check_name(name) if name else _default_name(kind, text, None)
        self._refuse_existing(name)  # before any download
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging()
        staging, marker = self._claim_staging()
        try:
            extra: dict[str, Any] = {}
            archive_sha: str | None = None
            if kind == "hf":
                fetched = hub.fetch_model(
                    text,
                    progress,
                    endpoint=self.hf_endpoint,
                    cache_dir=self.hf_cache_dir,
                    max_bytes=self.max_download_bytes,
                )
                extra = {
                    "hub_repo": fetched.repo,
                    "hub_revision": fetched.commit,
                    "licence": fetched.licence,
                    "hub_from_cache": fetched.from_cache,
                }
                located_from = fetched.path  # in the Hugging Face cache: copied, never moved
                if fetched.kind == "zip":
                    archive_sha = fetched.sha256
                    label = f"hf:{fetched.repo}/{fetched.path.name}"
                    located_from = self._unpack(fetched.path, archive_sha, expected, staging, progress, label=label)
            elif kind == "url":
                archive = staging / "download.zip"
                archive_sha = download(
                    text,
                    archive,
                    progress,
                    what="the model archive",
                    check_free_space=self._check_free_space,
                    max_bytes=self.max_download_bytes,
                    timeout_s=self.timeout_s,
                )
                located_from = self._unpack(archive, archive_sha, expected, staging, progress, label=text)
            elif kind == "zip":
                archive = Path(text).expanduser()
                if not archive.is_file():
                    raise InputError(
                        f"'{archive}' does not exist; give a model folder, a .zip, an https:// URL or hf:OWNER/REPO"
                    )
                archive_sha = sha256_file(archive)
                located_from = self._unpack(archive, archive_sha, expected, staging, progress, label=str(archive))
            else:
                located_from = Path(text).expanduser()
            staged = staging / "model"
            # Messages about an archive's or a download's files name the source, not the staging folder.
            with _naming_source(text, staged, located_from, enabled=kind != "folder"):
                model_dir, trainer, plans_id, _config = locate_model_dir(located_from)
                progress.stage("copying")
                self._check_free_space(tree_size(model_dir))
                # Files unpacked into the staging folder are moved; a user's folder and the hub cache are copied.
                files_sha = collect_model_files(model_dir, staged, move=staging in model_dir.parents)
                if archive_sha is not None:
                    digest, digest_of = archive_sha, "archive"
                else:
                    digest, digest_of = files_sha, "files"
                    if expected is not None and expected != files_sha:
                        raise InputError(_checksum_message(text, files_sha, expected, "model files'"))
                progress.stage("checking")
                folder = inspect_model_folder(staged, name=name)
                check_model_checkpoints(folder, progress)
            licence = licence or extra.pop("licence", None)
            metadata = {
                "format_version": METADATA_VERSION,
                "name": name,
                "source": text,
                "sha256": digest,
                "sha256_of": digest_of,
                "files_sha256": files_sha,
                "installed_at": now_iso("microseconds"),
                "licence": licence,
                "licence_url": LICENCE_URLS.get(licence) if licence else None,
                "round": training_round,
                "input_format": folder.input_format,
                "configuration": CONFIGURATION,
                "trainer": trainer,
                "plans_identifier": plans_id,
                "folds": [str(f) for f in folder.folds],
                "checkpoint_loading": "torch.load(weights_only=True), numeric numpy scalars allowed",
                "installed_by": f"legsegnet {__version__}",
                **extra,
            }
            (staged / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
            target = self.root / name
            self._refuse_existing(name)
            try:
                os.rename(staged, target)  # atomic; fails if another install took the name meanwhile
            except OSError as exc:
                if target.exists():
                    raise InputError(
                        f"a model named '{name}' is already installed; remove it first or choose --name"
                    ) from None
                raise LegSegNetError(
                    f"cannot move the model into the store {self.root} ({exc.strerror or exc})"
                ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if not staging.exists():  # else the next install's sweep finishes the job
                marker.unlink(missing_ok=True)
        if licence and kind != "hf":  # a hub model's licence was shown before its download
            progress.note(licence_notice(name, licence))
        if make_default:
            self.set_default(name)
        return self.get(name)

    # ---------------------------------------------------------------- install helpers
    def _refuse_existing(self, name: str) -> None:
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.name.lower() == name.lower():  # case-insensitive file systems (macOS, Windows)
                raise InputError(
                    f"a model named '{child.name}' is already installed; remove it first "
                    f"(legsegnet models remove {child.name}) or choose another --name"
                )

    def check_writable(self) -> None:
        """InputError when the store's folder cannot be created or written (a file, read-only, a name too long)."""
        option = f"the model store ({MODELS_DIR_ENV})" if os.environ.get(MODELS_DIR_ENV) else "the model store"
        check_writable_folder(self.root, option, longest_inside=LONGEST_ENTRY)

    def _claim_staging(self) -> tuple[Path, Path]:
        """A new staging folder for an install and its owner marker beside it (written first)."""
        for _ in range(100):
            staging = self.root / (STAGING_PREFIX + secrets.token_hex(4))
            marker = staging.with_name(staging.name + MARKER_SUFFIX)
            try:
                write_marker(marker)
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(f"cannot write to the model store {self.root} ({exc.strerror or exc})") from None
            try:
                staging.mkdir()
            except OSError as exc:
                marker.unlink(missing_ok=True)
                raise InputError(f"cannot write to the model store {self.root} ({exc.strerror or exc})") from None
            return staging, marker
        raise LegSegNetError(f"could not find a free staging name in {self.root}")

    def _remove_stale_staging(self) -> None:
        """Leftovers of installs that were killed: a staging folder whose marker names a process that no longer
        runs on this host. A live install's folder, another host's and unmarked ones younger than a day stay."""
        now = time.time()
        for child in self.root.iterdir():
            if not child.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                continue
            if child.name.endswith(MARKER_SUFFIX):
                record = read_marker(child)
                folder = child.with_name(child.name[: -len(MARKER_SUFFIX)])
                if record is not None and owner_gone(record):
                    shutil.rmtree(folder, ignore_errors=True)
                    if not folder.exists():
                        child.unlink(missing_ok=True)
                continue
            if os.path.lexists(child.with_name(child.name + MARKER_SUFFIX)):
                continue  # its marker decides
            try:  # no marker: made by an older version, or a model being removed
                if now - child.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:
                pass

    def _check_free_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.root).free
        if needed + 64 * _MIB > free:
            raise LegSegNetError(
                f"not enough disk space in {self.root}: the model needs {needed / 1e9:.2f} GB, "
                f"{free / 1e9:.2f} GB free; free some space or set {MODELS_DIR_ENV} to another folder"
            )

    def _unpack(
        self, archive: Path, archive_sha: str, expected: str | None, staging: Path, progress: Progress, label: str
    ) -> Path:
        if expected is not None and archive_sha != expected:
            raise InputError(_checksum_message(label, archive_sha, expected, "archive"))
        dest = staging / "extract"
        dest.mkdir()
        extract_model_members(
            archive,
            dest,
            progress,
            label,
            check_free_space=self._check_free_space,
            max_members=self.max_archive_members,
            max_bytes=self.max_uncompressed_bytes,
        )
        return dest


def resolve_model(path_or_name: str | Path | None, store: ModelStore | None = None) -> ModelFolder:
    """The model a run uses: a model folder path, an installed name, or (None) the store's default."""
    store = store or ModelStore()
    if path_or_name is None or str(path_or_name).strip() == "":
        info = store.default()
        if info is None:
            raise InputError(
                f"no nnU-Net model is installed (store: {store.root}); install the published weights with "
                f"'legsegnet models install {PUBLISHED_SOURCE}', give --model FOLDER, or use --engine threshold"
            )
        return info.folder()
    text = str(path_or_name)
    candidate = Path(text).expanduser()
    if candidate.exists():
        return inspect_model_folder(candidate)
    if _NAME_RE.match(text) and "/" not in text and "\\" not in text:
        return store.get(text).folder()
    raise InputError(
        f"--model '{text}' is neither an existing model folder nor an installed model name (see 'legsegnet models list')"
    )


def _source_kind(text: str) -> str:
    lowered = text.lower()
    if lowered.startswith("hf:"):
        return "hf"
    if re.match(r"^[a-z][a-z0-9+.-]*://", lowered):
        check_url(text)
        return "url"
    if lowered.endswith(".zip") or Path(text).expanduser().is_file():
        return "zip"
    return "folder"


def _normalise_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    if not _SHA256_RE.match(text):
        raise InputError(f"--sha256 wants 64 hexadecimal digits (as sha256sum prints), not '{value}'")
    return text


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InputError(
            f"'{name}' is not a valid model name; use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def _default_name(kind: str, text: str, model_dir: Path | None) -> str:
    """The name a model gets without --name: the hub repository's, the archive's or the folder's."""
    if kind == "hf":
        base = hub.parse_hf_source(text)[0].split("/")[1]
    elif kind == "url":
        base = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(text).path)).name
        base = re.sub(r"\.zip$", "", base, flags=re.IGNORECASE)
    elif kind == "zip":
        base = Path(text).name
        base = re.sub(r"\.zip$", "", base, flags=re.IGNORECASE)
    else:
        base = name_from_folder(model_dir) if model_dir is not None else ""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._").lower()[:64]
    return clean if clean and _NAME_RE.match(clean) else "model"


def _checksum_message(label: str, actual: str, expected: str, what: str) -> str:
    return (
        f"checksum mismatch for {label}: the {what} SHA-256 is {actual}, expected {expected}; "
        "the file is damaged or not the one you meant — nothing was installed"
    )


def tree_size(folder: Path) -> int:
    total = 0
    for name in MODEL_TOP_FILES:
        if (folder / name).is_file():
            total += (folder / name).stat().st_size
    for fold in scan_folds(folder):
        for checkpoint in (folder / fold_dir(fold)).iterdir():
            if checkpoint.is_file() and CHECKPOINT_RE.match(checkpoint.name):
                total += checkpoint.stat().st_size
    return total


def collect_model_files(src: Path, dst: Path, move: bool) -> str:
    """Put what inference needs (plans, dataset, fingerprint, fold_N/checkpoint_*.pth) into `dst`.
    Moves within the staging folder, copies from a user's folder. Returns the files' digest: the
    SHA-256 of their sorted `sha256  relative/path` lines."""
    wanted = [name for name in MODEL_TOP_FILES if (src / name).is_file()]
    for fold in scan_folds(src):
        for checkpoint in sorted((src / fold_dir(fold)).iterdir()):
            if (
                checkpoint.is_file()
                and CHECKPOINT_RE.match(checkpoint.name)
                and checkpoint.name != "checkpoint_latest.pth"
            ):
                wanted.append(f"{fold_dir(fold)}/{checkpoint.name}")
    lines = []
    for rel in wanted:
        source, target = src / rel, dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if move:
                os.replace(source, target)
            else:
                shutil.copyfile(source, target)
        except OSError as exc:
            raise InputError(f"cannot read {source} ({exc.strerror or exc}); check the model folder") from None
        lines.append(f"{sha256_file(target)}  {rel}\n")
    return hashlib.sha256("".join(sorted(lines, key=lambda line: line[66:])).encode()).hexdigest()


@contextlib.contextmanager
def _naming_source(source: str, *staging_paths: Path, enabled: bool = True):
    """InputErrors raised inside name `source` (the zip, URL or hub repository) where they would name
    one of the staging folders its files were unpacked into."""
    try:
        yield
    except InputError as exc:
        message = str(exc)
        if not enabled:
            raise
        for path in sorted((str(p) for p in staging_paths), key=len, reverse=True):
            message = message.replace(path, source)
        if message == str(exc):
            raise
        raise InputError(message) from None
