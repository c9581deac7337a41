"""Downloading a model archive from an `https://` URL (hub repositories go through `hub.py`).

Plain `http://` is accepted only to this computer (loopback), for local mirrors; everything else must be
`https://`, and a redirect may not downgrade it. The download is streamed to a file while its SHA-256 is
computed; a short download or one over the size limit is refused.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import math
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import InputError, LegSegNetError
from ..core.progress import Progress
from ..core.text import first_line

MAX_DOWNLOAD_BYTES = 8 * 1024**3
DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_MIB = 1 << 20


def download(
    url: str,
    dest: Path,
    progress: Progress,
    what: str,
    *,
    check_free_space: Callable[[int], None],
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
    """Stream `url` into `dest`; returns its SHA-256. Refuses short downloads and oversize files.
    `check_free_space(bytes)` raises when the announced size does not fit on the disk."""
    check_url(url)
    progress.note(f"downloading {what} from {url}")
    response = _open(url, timeout_s)
    with response:
        length_text = response.headers.get("Content-Length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if length is not None and length > max_bytes:
            raise InputError(
                f"{url} is {length / 1e9:.1f} GB, more than the {max_bytes / 1e9:.1f} GB limit; not a model"
            )
        if length is not None:
            check_free_space(length)
        total_mib = math.ceil(length / _MIB) if length else None
        progress.stage("download MiB", total=total_mib)
        digest = hashlib.sha256()
        received = 0
        shown = 0
        with open(dest, "wb") as out:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.HTTPException, OSError) as exc:
                    raise LegSegNetError(
                        f"the download of {url} was interrupted after {received} bytes ({first_line(exc) or 'connection lost'}); "
                        "nothing was installed — check the connection and try again"
                    ) from None
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise InputError(f"{url} is larger than the {max_bytes / 1e9:.1f} GB limit; not a model")
                digest.update(chunk)
                out.write(chunk)
                if total_mib:
                    now = min(received // _MIB, total_mib)
                    if now > shown:
                        progress.advance(now - shown)
                        shown = now
        if length is not None and received != length:
            raise LegSegNetError(
                f"the download of {url} is incomplete: received {received} of {length} bytes; "
                "nothing was installed — check the connection and try again"
            )
        if total_mib and shown < total_mib:
            progress.advance(total_mib - shown)
    return digest.hexdigest()


def check_url(url: str, previous: str | None = None) -> None:
    """https anywhere; plain http only to this computer (a local mirror); no downgrade on redirect."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http" and _is_loopback(parts.hostname):
        if previous is not None and urllib.parse.urlsplit(previous).scheme.lower() == "https":
            raise InputError(f"refusing a redirect from https to plain http ({url})")
        return
    raise InputError(
        f"'{url}': only https:// URLs are accepted (plain http:// only to this computer); downloads must be encrypted"
    )


def _network_message(url: str, reason: Any) -> str:
    """One line saying why `url` could not be reached and what to try."""
    host = urllib.parse.urlsplit(url).hostname
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"{host} did not answer in time ({url}); check the internet connection and try again"
    if isinstance(reason, ssl.SSLError):
        return f"secure connection to {host} failed ({first_line(reason)}); check the system's certificates or proxy"
    text = first_line(reason) if isinstance(reason, BaseException) else str(reason)
    return f"cannot reach {host} ({text}); check the internet connection or proxy settings and try again"


def _open(url: str, timeout_s: float):
    opener = _opener_for(url)
    request = urllib.request.Request(
        url, headers={"User-Agent": f"legsegnet/{__version__}", "Accept-Encoding": "identity"}
    )
    try:
        return opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise InputError(f"{url} was not found (HTTP 404); check the address or repository name") from None
        if exc.code in (401, 403):
            raise InputError(f"access to {url} was refused (HTTP {exc.code}); the file is private or gated") from None
        raise LegSegNetError(f"the server answered HTTP {exc.code} {exc.reason} for {url}; try again later") from None
    except urllib.error.URLError as exc:
        raise LegSegNetError(_network_message(url, exc.reason)) from None
    except (http.client.HTTPException, OSError) as exc:
        raise LegSegNetError(_network_message(url, exc)) from None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib hook
        check_url(newurl, previous=req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener_for(url: str) -> urllib.request.OpenerDirector:
    handlers: list = [_CheckedRedirects()]
    if _is_loopback(urllib.parse.urlsplit(url).hostname):
        handlers.append(urllib.request.ProxyHandler({}))  # this computer is never behind a proxy
    return urllib.request.build_opener(*handlers)
