"""Models from the Hugging Face hub: `hf:OWNER/REPO[@REVISION]`, downloaded with `huggingface_hub`.

`huggingface_hub` does the transfer: the revision (branch, tag or commit) is resolved once and every file
comes from that one commit; only the files the model is made of are fetched (`allow_patterns`); a
connection dropped in the middle of a file is resumed where it stopped (an HTTP Range request); the token
comes from `HF_TOKEN` or `hf auth login`; `HF_ENDPOINT` points at a mirror; the files land in its cache
(`HF_HOME`, `HF_HUB_CACHE`), and with `HF_HUB_OFFLINE=1`, or when the hub cannot be reached, a model
already in the cache is installed from there without asking the network.

On top of it, this project's own checks: every file is compared with the hub's own checksum (the LFS
SHA-256 or the git blob id of its listing; from the cache, the content address the cache stores it
under), and the store then treats the files like any other untrusted model (archive checks, checksums,
folder validation, weights-only checkpoints). `huggingface_hub` is imported only here, and only when a
hub model is installed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import math
import re
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

from ..core.errors import InputError, LegSegNetError
from ..core.files import sha256_file
from ..core.progress import Progress
from ..core.text import first_line
from .download import MAX_DOWNLOAD_BYTES, check_url
from .folder import CHECKPOINT_RE, CONFIGURATION, FOLD_RE, MODEL_TOP_FILES, split_config_name

PUBLISHED_REPO = "GogoChen/LegSegNet"
PUBLISHED_SOURCE = f"hf:{PUBLISHED_REPO}"
PUBLISHED_LICENCE = "CC BY-NC 4.0"
LICENCE_URLS = {"CC BY-NC 4.0": "https://creativecommons.org/licenses/by-nc/4.0/"}
HF_ENDPOINT_ENV = "HF_ENDPOINT"  # huggingface_hub's own variable (mirrors, tests)
# Hub licence ids (model card `license:`) to their usual names.
_HF_LICENCE_NAMES = {
    "cc-by-nc-4.0": "CC BY-NC 4.0",
    "cc-by-4.0": "CC BY 4.0",
    "cc-by-sa-4.0": "CC BY-SA 4.0",
    "cc-by-nc-sa-4.0": "CC BY-NC-SA 4.0",
    "cc-by-nc-nd-4.0": "CC BY-NC-ND 4.0",
    "apache-2.0": "Apache-2.0",
    "mit": "MIT",
}
_HF_SOURCE_RE = re.compile(r"^hf:([A-Za-z0-9][A-Za-z0-9._-]*)/([A-Za-z0-9][A-Za-z0-9._-]*)(?:@([A-Za-z0-9._/-]+))?$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_LOGIN_HINT = "set HF_TOKEN to a valid token or run 'hf auth login'"
_MIB = 1 << 20


@dataclass(frozen=True)
class HubModel:
    """A hub model's files in the Hugging Face cache, checked against the hub's checksums."""

    repo: str
    commit: str  # every file comes from this commit
    kind: str  # "files": `path` is the model folder; "zip": `path` is the model archive
    path: Path  # inside the Hugging Face cache: copy from it, never move or change it
    sha256: str | None  # of the archive (kind "zip")
    licence: str | None
    from_cache: bool  # installed from the cache without asking the hub


def parse_hf_source(source: str) -> tuple[str, str | None]:
    """'hf:OWNER/REPO[@REVISION]' -> ('OWNER/REPO', REVISION or None)."""
    match = _HF_SOURCE_RE.match(source.strip())
    if not match or ".." in source:
        raise InputError(f"'{source}' is not a hub source; write hf:OWNER/REPO, e.g. {PUBLISHED_SOURCE}")
    return f"{match.group(1)}/{match.group(2)}", match.group(3)


def hf_licence(card_licence: Any, tags: Sequence[Any] | None, repo: str) -> str | None:
    """The licence a hub repository declares (model card or tags); the published weights' if silent."""
    licence_id = card_licence if isinstance(card_licence, str) and card_licence else None
    for tag in tags or []:
        if licence_id is None and isinstance(tag, str) and tag.startswith("license:"):
            licence_id = tag.split(":", 1)[1]
    if licence_id:
        return _HF_LICENCE_NAMES.get(licence_id.lower(), licence_id)
    if repo.lower() == PUBLISHED_REPO.lower():
        return PUBLISHED_LICENCE
    return None


def licence_notice(model: str, licence: str) -> str:
    url = LICENCE_URLS.get(licence)
    terms = " — non-commercial use only, with attribution" if "NC" in licence.split() or "BY-NC" in licence else ""
    return f"licence of {model}: {licence}{terms}" + (f" ({url})" if url else "")


def plan_hf_download(paths: Sequence[str], repo: str = "") -> tuple[str, list[str]]:
    """Which repository files make the model: ("files", [plans.json, dataset.json, fold_N/checkpoints, ...])
    for a repository holding a model folder (at its root or below; the 2d one of several), or
    ("zip", [archive]) for one holding a single zip of it."""
    path_set = set(paths)
    candidates = []
    for path in paths:
        parts = PurePosixPath(path)
        if parts.name != "plans.json":
            continue
        prefix = "" if str(parts.parent) == "." else f"{parts.parent}/"
        checkpoints = [
            p
            for p in paths
            if p.startswith(prefix)
            and len(PurePosixPath(p[len(prefix) :]).parts) == 2
            and FOLD_RE.match(PurePosixPath(p[len(prefix) :]).parts[0])
            and CHECKPOINT_RE.match(PurePosixPath(p).name)
            and PurePosixPath(p).name != "checkpoint_latest.pth"
        ]
        if f"{prefix}dataset.json" in path_set and checkpoints:
            config = split_config_name(parts.parent.name)[2]
            candidates.append((config not in (None, CONFIGURATION), prefix.count("/"), prefix, checkpoints))
    candidates = [c for c in candidates if not c[0]]  # drop 3d configurations
    if candidates:
        candidates.sort()
        _, _, prefix, checkpoints = candidates[0]
        top = [f"{prefix}{n}" for n in MODEL_TOP_FILES if f"{prefix}{n}" in path_set]
        return "files", top + sorted(checkpoints)
    zips = sorted(p for p in paths if p.lower().endswith(".zip"))
    if len(zips) == 1:
        return "zip", zips
    where = f"hub repository {repo}" if repo else "the hub repository"
    if len(zips) > 1:
        raise InputError(
            f"{where} holds several zips ({', '.join(zips)}) and no model folder; download one and install the .zip"
        )
    raise InputError(
        f"{where} holds no nnU-Net 2D model (plans.json and dataset.json beside fold_N/checkpoint_*.pth) and no .zip"
    )


def fetch_model(
    source: str,
    progress: Progress,
    *,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> HubModel:
    """The model of `source` in the Hugging Face cache: downloaded (only its files, from one commit), or
    found in the cache with HF_HUB_OFFLINE=1 or when the hub cannot be reached. `endpoint` None:
    huggingface_hub's (HF_ENDPOINT, else huggingface.co); `cache_dir` None: its cache (HF_HUB_CACHE)."""
    hf = _import_hub()
    repo, revision = parse_hf_source(source)
    if endpoint:
        check_url(endpoint)
    where = endpoint or hf.constants.ENDPOINT
    if hf.constants.HF_HUB_OFFLINE:
        return _from_cache(hf, repo, revision, cache_dir, progress, why=None)
    with _hub_messages_as_notes(progress):
        try:
            info = hf.HfApi(endpoint=endpoint).model_info(repo, revision=revision, files_metadata=True)
        except Exception as exc:  # noqa: BLE001 - sorted out below; a network failure falls back to the cache
            if not _is_connection_error(hf, exc):
                raise _hub_error(hf, exc, source, where) from None
            host = urllib.parse.urlsplit(where).hostname or where
            return _from_cache(hf, repo, revision, cache_dir, progress, why=f"cannot reach {host} ({first_line(exc)})")
        commit = info.sha if isinstance(info.sha, str) and _COMMIT_RE.match(info.sha) else None
        if commit is None:
            raise LegSegNetError(
                f"{where} did not name the commit of {source}; is it a Hugging Face hub? try again later"
            )
        listing = {s.rfilename: s for s in info.siblings or []}
        card = getattr(info, "card_data", None)
        licence = hf_licence(getattr(card, "license", None), info.tags, repo)
        if licence:  # shown before the (large) download starts
            progress.note(licence_notice(repo, licence))
        kind, paths = plan_hf_download(list(listing), repo)
        total = sum(_listed_size(listing[p]) or 0 for p in paths)
        if total > max_bytes:
            raise InputError(
                f"{source} is {total / 1e9:.1f} GB, more than the {max_bytes / 1e9:.1f} GB limit; not a model"
            )
        progress.note(f"downloading {len(paths)} file(s) of {source} (commit {commit[:12]}) from {where}")
        bars = _bars_reporting_to(progress, total)
        try:  # given the revision as the user wrote it, huggingface_hub records it in its cache for offline use
            snapshot = Path(
                hf.snapshot_download(
                    repo,
                    revision=revision,
                    allow_patterns=[glob.escape(p) for p in paths],
                    endpoint=endpoint,
                    cache_dir=cache_dir,
                    tqdm_class=bars,
                )
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            raise _hub_error(hf, exc, source, where) from None
        if snapshot.name != commit:  # it resolved the revision again: every file must come from the listed commit
            raise LegSegNetError(
                f"{source} changed on the hub during the download (now commit {snapshot.name}); try again"
            )
        bars.finish()
    digests = {p: _verified(snapshot / p, p, _listed_digests(listing[p])) for p in paths}
    return _hub_model(repo, commit, kind, paths, snapshot, digests, licence, from_cache=False)


# ---------------------------------------------------------------------- the cache
def _from_cache(hf, repo: str, revision: str | None, cache_dir, progress: Progress, why: str | None) -> HubModel:
    """The model from the Hugging Face cache: what an earlier download of this revision left there.
    `why`: the hub could not be reached (its words), None when HF_HUB_OFFLINE is set."""
    wanted = revision or "main"
    cached = None
    with contextlib.suppress(hf.CacheNotFound):
        for entry in hf.scan_cache_dir(cache_dir).repos:
            if entry.repo_type == "model" and entry.repo_id == repo:
                cached = next((r for r in entry.revisions if r.commit_hash == wanted or wanted in r.refs), None)
    source = f"hf:{repo}" + (f"@{revision}" if revision else "")
    if cached is None:
        folder = cache_dir or hf.constants.HF_HUB_CACHE
        if why is None:
            raise LegSegNetError(
                f"HF_HUB_OFFLINE is set and {source} is not in the Hugging Face cache ({folder}); install it once "
                "with a network connection, or unset HF_HUB_OFFLINE"
            )
        raise LegSegNetError(
            f"{why} and {source} is not in the Hugging Face cache ({folder}); check the internet connection or "
            "proxy settings and try again"
        )
    files = {f.file_path.relative_to(cached.snapshot_path).as_posix(): f for f in cached.files}
    kind, paths = plan_hf_download(list(files), repo)
    reason = "HF_HUB_OFFLINE is set" if why is None else why
    progress.note(f"{reason}: installing {source} (commit {cached.commit_hash[:12]}) from the Hugging Face cache")
    try:  # huggingface_hub's own answer for the folder, and its completeness check of these files
        snapshot = Path(
            hf.snapshot_download(
                repo,
                revision=cached.commit_hash,
                allow_patterns=[glob.escape(p) for p in paths],
                cache_dir=cache_dir,
                local_files_only=True,
            )
        )
    except Exception as exc:  # noqa: BLE001 - an incomplete or damaged cache entry
        raise LegSegNetError(
            f"{source} in the Hugging Face cache is incomplete ({first_line(exc)}); {reason}"
        ) from None
    digests = {p: _verified(snapshot / p, p, _content_address(files[p].blob_path)) for p in paths}
    return _hub_model(
        repo, cached.commit_hash, kind, paths, snapshot, digests, hf_licence(None, None, repo), from_cache=True
    )


def _hub_model(repo, commit, kind, paths, snapshot: Path, digests: dict, licence, from_cache: bool) -> HubModel:
    if kind == "zip":
        return HubModel(repo, commit, kind, snapshot / paths[0], digests[paths[0]], licence, from_cache)
    folder = snapshot / PurePosixPath(paths[0]).parent  # plans.json comes first: the model folder
    return HubModel(repo, commit, kind, folder, None, licence, from_cache)


# ---------------------------------------------------------------------- checksums
def _listed_size(sibling) -> int | None:
    size = sibling.lfs.size if sibling.lfs is not None else sibling.size
    return size if isinstance(size, int) and size >= 0 else None


def _listed_digests(sibling) -> dict:
    """What the hub's listing says a file's content is: its LFS SHA-256, or (small text files only) its git
    blob id. For a binary without LFS details the blob id might describe an LFS pointer: not used."""
    if sibling.lfs is not None:
        return {"sha256": sibling.lfs.sha256}
    if sibling.rfilename.endswith(".json") and isinstance(sibling.blob_id, str):
        return {"git_blob": sibling.blob_id}
    return {}


def _content_address(blob_path: Path) -> dict:
    """The cache keeps each file under its ETag: the SHA-256 of an LFS file, the git blob id of another."""
    name = Path(blob_path).name
    if re.fullmatch(r"[0-9a-f]{64}", name):
        return {"sha256": name}
    if _COMMIT_RE.match(name):
        return {"git_blob": name}
    return {}


def _verified(path: Path, repo_path: str, expected: dict) -> str:
    """The file's SHA-256, after comparing it with `expected` (sha256 / git_blob); LegSegNetError if it differs."""
    sha256 = sha256_file(path)
    listed = expected.get("sha256")
    if isinstance(listed, str) and listed.lower() != sha256:
        raise LegSegNetError(
            f"{repo_path} from the hub does not match the hub's checksum (SHA-256 {sha256}, listed {listed}); "
            "the download is damaged — try again"
        )
    blob_id = expected.get("git_blob")
    if isinstance(blob_id, str) and _COMMIT_RE.match(blob_id):
        blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(_MIB):
                blob.update(chunk)
        if blob.hexdigest() != blob_id:
            raise LegSegNetError(
                f"{repo_path} from the hub does not match the hub's git blob id; the download is damaged — try again"
            )
    return sha256


# ---------------------------------------------------------------------- huggingface_hub
def _import_hub() -> SimpleNamespace:
    """The parts of huggingface_hub used here; LegSegNetError saying how to install it when it is missing."""
    try:
        import huggingface_hub
        from huggingface_hub import constants, utils
    except ImportError:
        raise LegSegNetError(
            "installing from the Hugging Face hub needs the package huggingface_hub, which is not installed; "
            "install it with pip install 'legsegnet[nnunet]', or download the model zip and install the file"
        ) from None
    utils.disable_progress_bars()  # its own bars would garble ours: the download reports to `progress`
    return SimpleNamespace(
        constants=constants,
        errors=utils,
        CacheNotFound=utils.CacheNotFound,
        HfApi=huggingface_hub.HfApi,
        snapshot_download=huggingface_hub.snapshot_download,
        scan_cache_dir=huggingface_hub.scan_cache_dir,
    )


def _is_connection_error(hf, exc: BaseException) -> bool:
    """The hub could not be reached (no network, DNS, timeout, refused, offline): the cache may serve."""
    if isinstance(exc, (hf.errors.HfHubHTTPError, InputError)):
        return False
    if isinstance(exc, (hf.errors.OfflineModeIsEnabled, OSError)):
        return True
    return type(exc).__module__.split(".")[0] in {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


def _hub_error(hf, exc: BaseException, source: str, where: str) -> LegSegNetError:
    """One line for a failed hub call: InputError for what the user can fix (name, revision, token)."""
    errors = hf.errors
    host = urllib.parse.urlsplit(where).hostname or where
    if isinstance(exc, LegSegNetError):
        return exc
    if isinstance(exc, errors.RevisionNotFoundError):
        return InputError(
            f"{source}: the hub repository has no such revision; check the branch, tag or commit after '@'"
        )
    if isinstance(exc, errors.GatedRepoError):
        return InputError(f"{source} is gated: accept its conditions on the hub's page, then log in ({_LOGIN_HINT})")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return InputError(f"{source} was not found on {host}: check OWNER/REPO; for a private repository {_LOGIN_HINT}")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return InputError(
                f"{host} refused access to {source} (HTTP {status}): the token is invalid or has no access; {_LOGIN_HINT}"
            )
        return LegSegNetError(f"{host} answered HTTP {status} for {source}; try again later")
    if _is_connection_error(hf, exc):
        return LegSegNetError(
            f"the download of {source} from {host} failed ({first_line(exc)}); nothing was installed — check the "
            "connection and try again (files already downloaded stay in the Hugging Face cache)"
        )
    return LegSegNetError(f"the download of {source} from {host} failed ({type(exc).__name__}: {first_line(exc)})")


def _bars_reporting_to(progress: Progress, total_bytes: int):
    """A tqdm class for huggingface_hub that shows nothing and reports the bytes received to `progress`
    as the stage "download MiB". Several bars may count the same bytes (bytes received, bytes written):
    the largest count is taken, never their sum."""
    from tqdm.auto import tqdm

    total_mib = max(1, math.ceil(total_bytes / _MIB))
    progress.stage("download MiB", total=total_mib)
    state = {"shown": 0, "lock": threading.Lock()}

    class ReportingBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            self.counts_bytes = kwargs.get("unit") == "B"
            self.bytes_seen = 0
            super().__init__(*args, **{**kwargs, "disable": True})

        def update(self, n=1):
            if self.counts_bytes and n:
                with state["lock"]:
                    self.bytes_seen = max(0, self.bytes_seen + n)
                    now = min(self.bytes_seen // _MIB, total_mib)
                    if now > state["shown"]:
                        progress.advance(now - state["shown"])
                        state["shown"] = now
            return super().update(n)

        @staticmethod
        def finish() -> None:
            """The download is complete: the stage is full even where no bar counted bytes."""
            with state["lock"]:
                if state["shown"] < total_mib:
                    progress.advance(total_mib - state["shown"])
                    state["shown"] = total_mib

    return ReportingBar


@contextlib.contextmanager
def _hub_messages_as_notes(progress: Progress):
    """huggingface_hub's warnings (e.g. a dropped connection being resumed) as notes of `progress`,
    instead of its own lines on stderr."""
    logger = logging.getLogger("huggingface_hub")

    class ToNotes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                text = record.getMessage().strip().splitlines()
                progress.note(f"huggingface_hub: {text[0][:300]}" if text else "huggingface_hub: (no message)")

    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [ToNotes()], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved
