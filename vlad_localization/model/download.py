"""Resumable, verified HTTP(S) downloads with the standard library (urllib).

    part = fetch(url, Path("x.pth.tar.part"), size=92488008, sha256="acbe...")   # verified
    part.replace("x.pth.tar")

Bytes go to a ``.part`` file. A dropped connection is retried (``retries`` times) from where the
``.part`` file ends with an HTTP ``Range`` request, and a later call continues it the same way; a
server that ignores ``Range`` (200 instead of 206) is read again from byte zero. Before it returns,
:func:`fetch` checks the size (the expected one, else the server's ``Content-Length``) and the
sha256 when one is given; a file failing either is deleted and refused. Proxies: urllib honours
``https_proxy`` / ``http_proxy`` / ``no_proxy``.
"""
from __future__ import annotations

import http.client
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .checkpoint import file_sha256

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "vlad_localization-download/1"


class DownloadError(Exception):
    """A download failed or its file was refused; the message is one line naming the URL.
    ``status``: the HTTP status when the server answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Interrupted(Exception):
    """The connection ended before the announced length: resume from the ``.part`` file."""


def fetch(url: str, part: Path, size: int | None = None, sha256: str | None = None, *,
          retries: int = 3, timeout: float = 30.0, progress: bool = True, desc: str | None = None) -> Path:
    """Download ``url`` into ``part`` (continuing what it holds) and verify it; return ``part``."""
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    if size is not None and _size(part) > size:
        part.unlink()  # longer than the file can be: not a prefix of it
    total = None
    for attempt in range(retries + 1):
        try:
            total = _transfer(url, part, size, timeout, progress, desc)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise DownloadError(f"{url}: connection lost after {_size(part)} bytes ({exc}); run the same "
                                    f"command again to resume from {part}") from None
            log.warning("%s: connection lost after %d bytes (%s); resuming", url, _size(part), exc)
    _verify(url, part, size if size is not None else total, sha256)
    return part


def _transfer(url: str, part: Path, size: int | None, timeout: float, progress: bool, desc: str | None) -> int | None:
    """One request: append to ``part`` from its end; the file's whole size the server announced."""
    offset = _size(part)
    if size is not None and offset == size:
        return size  # complete already (an earlier run stopped before verifying)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: complete already, or not a prefix of this file
            if exc.headers.get("Content-Range", "") == f"bytes */{offset}":
                return offset
            log.warning("%s: the server refuses to resume at byte %d; starting again from zero", url, offset)
            part.unlink()
            return _transfer(url, part, size, timeout, progress, desc)
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}", exc.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DownloadError(f"cannot reach {url}: {reason}") from None
    with response:
        start = _content_range_start(response) if response.status == 206 else 0
        if response.status == 206 and start != offset:
            raise DownloadError(f"{url}: asked for bytes from {offset}, the server sent from {start}")
        if offset and response.status != 206:
            log.warning("%s: the server does not resume downloads (HTTP %d to a Range request); "
                        "starting again from zero", url, response.status)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url}: the server announces {total} bytes, expected {size}: refused "
                                "(a different file under this name?)")
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc, disable=not progress, leave=False,
        ) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as exc:  # reset, timeout, TLS error: resume
                    raise _Interrupted(type(exc).__name__) from None
                if not block:
                    break
                out.write(block)  # a full disk is no reason to retry: its OSError propagates
                bar.update(len(block))
    if total is not None and _size(part) < total:
        raise _Interrupted(f"{_size(part)} of {total} bytes")
    return total


def _verify(url: str, part: Path, size: int | None, sha256: str | None) -> None:
    """Size (when known) then sha256 (when given); a file failing either is deleted."""
    got = _size(part)
    if size is not None and got != size:
        part.unlink()
        raise DownloadError(f"{url}: got {got} bytes, expected {size}: refused and deleted")
    if sha256:
        digest = file_sha256(part)
        if digest != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: sha256 {digest} != expected {sha256.lower()}: refused and deleted "
                                "(corrupted in transit, or a different file under this name)")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _content_range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None
