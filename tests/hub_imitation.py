"""A local imitation of the Hugging Face hub: a real HTTP server on 127.0.0.1 speaking as much of the hub's API
as `huggingface_hub` uses to download a model (read from its source):

- `GET /api/models/OWNER/REPO[/revision/REV]?blobs=True`: the model info (`sha` = the commit the revision names,
  `siblings` with size, git blob id and LFS SHA-256, the model card's licence);
- `GET /api/models/OWNER/REPO/tree/COMMIT?recursive=True`: the file listing `snapshot_download` reads;
- `HEAD` and `GET /OWNER/REPO/resolve/REV/PATH`: the file, with `X-Repo-Commit`, `ETag` (the SHA-256 of an LFS
  file, the git blob id of another), `Content-Length`, and `Range` requests answered with 206;
- errors as the hub sends them: 404 with `X-Error-Code` RepoNotFound / RevisionNotFound / EntryNotFound, 401
  with `X-Error-Message: Invalid credentials in Authorization header` for a wrong token.

It can cut the first download of a file half-way (the connection closes after half the bytes it announced)
or fail a file's downloads with HTTP 500, and it records every request (method, path, Range and Authorization headers) for the tests to check.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str  # without the query
    range: str | None
    authorization: str | None


@dataclass
class _Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> {path: content}
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    licence: str | None = None


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def is_lfs(path: str) -> bool:
    """As on the hub, binary files are stored with LFS (their listing carries a SHA-256), text files in git."""
    return not path.endswith((".json", ".md", ".txt", ".gitattributes"))


class LocalHub:
    """`with LocalHub() as hub:` (or `start()`, and `stop()` in a `finally`); `url` is what HF_ENDPOINT gets."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token  # when set, every request must carry "Authorization: Bearer <token>"
        self.repos: dict[str, _Repo] = {}
        self.requests: list[Request] = []
        self.cut_first_download: set[str] = set()  # repo paths whose first full GET is cut half-way
        self.tampered_listing: set[str] = set()  # repo paths whose listed SHA-256 is wrong
        self.failing: set[str] = set()  # repo paths whose downloads answer 500 (HEAD still works)
        self.bytes_sent: dict[str, int] = {}  # repo path -> body bytes sent for it
        self._server: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- content
    def add_commit(
        self, repo: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",), licence: str | None = None
    ) -> str:
        """A commit holding `files`; `refs` (branches or tags) then name it. Returns its 40-digit id."""
        entry = self.repos.setdefault(repo, _Repo())
        digest = hashlib.sha1()
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        digest.update(str(len(entry.commits)).encode())
        commit = digest.hexdigest()
        entry.commits[commit] = dict(files)
        for ref in refs:
            entry.refs[ref] = commit
        entry.licence = licence if licence is not None else entry.licence
        return commit

    # ---------------------------------------------------------------- server
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LocalHub:
        hub = self

        class Handler(_HubHandler):
            pass

        Handler.hub = hub
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()  # also when the test failed: a context manager's exit runs as a `finally` does

    def requests_for(self, repo: str) -> list[Request]:
        """The requests about `repo` (huggingface_hub may also ask the hub for registries of its own)."""
        return [r for r in self.requests if f"/{repo}/" in r.path + "/"]

    def downloads_of(self, path: str, method: str = "GET") -> list[Request]:
        return [
            r for r in self.requests if r.method == method and "/resolve/" in r.path and r.path.endswith("/" + path)
        ]

    # ---------------------------------------------------------------- answers
    def _commit(self, repo: str, revision: str) -> str | None:
        entry = self.repos[repo]
        return revision if revision in entry.commits else entry.refs.get(revision)

    def _etag(self, path: str, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest() if is_lfs(path) else git_blob_id(data)

    def _listed_sha256(self, path: str, data: bytes) -> str:
        return "f" * 64 if path in self.tampered_listing else hashlib.sha256(data).hexdigest()

    def model_info(self, repo: str, commit: str) -> dict:
        siblings = []
        for path, data in sorted(self.repos[repo].commits[commit].items()):
            sibling = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
            if is_lfs(path):
                sibling.update(
                    size=134,
                    blobId=git_blob_id(b"pointer " + path.encode()),
                    lfs={"sha256": self._listed_sha256(path, data), "size": len(data), "pointerSize": 134},
                )
            siblings.append(sibling)
        licence = self.repos[repo].licence
        info = {"id": repo, "sha": commit, "siblings": siblings, "tags": [f"license:{licence}"] if licence else []}
        if licence:
            info["cardData"] = {"license": licence}
        return info

    def tree(self, repo: str, commit: str) -> list:
        listing = []
        for path, data in sorted(self.repos[repo].commits[commit].items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if is_lfs(path):
                entry["lfs"] = {"oid": self._listed_sha256(path, data), "size": len(data), "pointerSize": 134}
            listing.append(entry)
        return listing


class _HubHandler(http.server.BaseHTTPRequestHandler):
    hub: LocalHub

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=True)

    def log_message(self, *args) -> None:
        pass

    # ---------------------------------------------------------------- routing
    def _answer(self, body: bool) -> None:
        hub = self.hub
        path = urllib.parse.urlsplit(self.path).path
        with hub._lock:
            hub.requests.append(
                Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
            )
        if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
            return self._error(401, {"X-Error-Message": "Invalid credentials in Authorization header"})
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = f"{parts[2]}/{parts[3]}"
            if repo not in hub.repos:
                return self._error(404, {"X-Error-Code": "RepoNotFound"})
            rest = parts[4:]
            if rest[:1] == ["tree"] and len(rest) >= 2:
                commit = hub._commit(repo, rest[1])
                if commit is None:
                    return self._error(404, {"X-Error-Code": "RevisionNotFound"})
                return self._json(hub.tree(repo, commit))
            revision = rest[1] if rest[:1] == ["revision"] and len(rest) == 2 else "main" if not rest else None
            commit = hub._commit(repo, revision) if revision is not None else None
            if commit is None:
                return self._error(404, {"X-Error-Code": "RevisionNotFound"})
            return self._json(hub.model_info(repo, commit))
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = f"{parts[0]}/{parts[1]}"
            if repo not in hub.repos:
                return self._error(404, {"X-Error-Code": "RepoNotFound"})
            commit = hub._commit(repo, parts[3])
            if commit is None:
                return self._error(404, {"X-Error-Code": "RevisionNotFound"})
            file_path = "/".join(parts[4:])
            data = hub.repos[repo].commits[commit].get(file_path)
            if data is None:
                return self._error(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            return self._file(commit, file_path, data, body)
        return self._error(404, {})

    # ---------------------------------------------------------------- responses
    def _error(self, status: int, headers: dict) -> None:
        payload = json.dumps({"error": headers.get("X-Error-Message", "not found")}).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _json(self, value) -> None:
        payload = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _file(self, commit: str, path: str, data: bytes, body: bool) -> None:
        hub = self.hub
        if body and path in hub.failing:
            return self._error(500, {"X-Error-Message": "storage unavailable"})
        start = 0
        requested = self.headers.get("Range")
        if requested and requested.startswith("bytes=") and requested[6:].split("-")[0].isdigit():
            start = int(requested[6:].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hub._etag(path, data)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        payload = data[start:]
        with hub._lock:
            cut = not start and path in hub.cut_first_download
            hub.cut_first_download.discard(path)
        if cut:  # the connection drops after half of the announced bytes
            payload = payload[: len(payload) // 2]
        self.wfile.write(payload)
        self.wfile.flush()
        with hub._lock:
            hub.bytes_sent[path] = hub.bytes_sent.get(path, 0) + len(payload)
        if cut:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
