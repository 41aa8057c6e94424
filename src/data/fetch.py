"""Safe downloading of real datasets (PASCAL VOC and friends) and released weights.

Design:

* ``download`` streams into ``<dest>.part`` and renames it over ``dest`` (``os.replace``) only once
  the file is complete and its checksum matches, so ``dest`` existing means "complete". A later call
  therefore returns at once without touching the network, and an interrupted run resumes the
  ``.part`` with an HTTP ``Range`` request instead of starting a multi-GB file again.
* Failures that can heal (refused or dropped connections, timeouts, short reads, HTTP 5xx/429) are
  retried with exponential backoff. ``retries`` counts consecutive attempts that made no progress:
  an attempt that grew the ``.part`` beyond its best size so far resets the count, so a flaky link
  still finishes a large file, while a server that keeps failing at the same byte gives up.
* Every failure surfaces as ``DownloadError`` naming the URL and the manual fallback (download by
  hand, put the file at ``dest``), because dataset hosts move and go down and the user must be able
  to carry on without this code.

Unpacking what was downloaded is ``src/data/archive.py`` (``safe_extract``). This module avoids
importing torch (via ``src.utils``) so that fetching stays cheap to import.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from src.errors import DownloadError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB: big enough for throughput, small enough for a smooth progress bar
MAX_DELAY = 60.0  # cap on one backoff pause
USER_AGENT = "sr4ir-pipeline (python urllib)"
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

# Module-level so tests (or a caller) can replace the pause between retries.
_sleep: Callable[[float], None] = time.sleep


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected digest (the file has been deleted)."""


class _Transient(Exception):
    """An attempt failed in a way a retry may fix."""


class _Fatal(Exception):
    """An attempt failed in a way no retry will fix (e.g. HTTP 404)."""


# Errors from the network side that are worth another attempt. HTTPError is a URLError subclass
# but is turned into _Transient/_Fatal before it gets here.
_TRANSIENT_ERRORS = (
    _Transient,
    urllib.error.URLError,
    http.client.HTTPException,  # IncompleteRead, BadStatusLine, ...
    ConnectionError,  # includes RemoteDisconnected
    TimeoutError,
    ssl.SSLError,
)


# ---------------------------------------------------------------------------------------------
# Checksums


def _hash_file(path: Path, *algorithms: str) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm, reading the file once in chunks."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def sha256sum(path: Path | str) -> str:
    return _hash_file(Path(path), "sha256")["sha256"]


def md5sum(path: Path | str) -> str:
    return _hash_file(Path(path), "md5")["md5"]


def _mismatches(path: Path, expected: dict[str, str]) -> list[str]:
    """Human-readable digest mismatches of ``path`` against ``expected`` (empty when it verifies)."""
    if not expected:
        return []
    actual = _hash_file(path, *expected)
    return [
        f"{name} expected {want}, got {actual[name]}"
        for name, want in expected.items()
        if actual[name] != want.lower()
    ]


# ---------------------------------------------------------------------------------------------
# Download


def download(
    url: str,
    dest: Path | str,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30,
    manual_hint: str | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` (resumable, retried, verified, atomic) and return ``dest``.

    ``retries`` bounds consecutive attempts without progress; the pause before retry ``k`` is
    ``backoff * 2**(k-1)`` seconds (capped at a minute). Raises ``DownloadError`` when the file
    cannot be fetched and ``ChecksumError`` (a ``DownloadError``) when it arrives with the wrong
    digest.
    """
    dest = Path(dest)
    expected = {name: digest for name, digest in (("sha256", sha256), ("md5", md5)) if digest}
    if dest.is_file():
        problems = _mismatches(dest, expected)
        if not problems:
            return dest  # only ever created complete and verified, so no network needed
        # Keep it until a good copy replaces it: a wrong file beats no file if the network is down.
        log.warning("%s exists but does not verify (%s); downloading again", dest, "; ".join(problems))

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_with_retries(url, part, dest, retries, backoff, timeout, manual_hint)

    problems = _mismatches(part, expected)
    if problems:
        part.unlink()  # resuming a wrong file would only repeat the mismatch
        raise ChecksumError(
            f"{dest}: downloaded from {url} but {'; '.join(problems)} (file deleted). The file on the "
            f"server may have changed; check the URL and checksum, or {_manual(dest, manual_hint)}"
        )
    os.replace(part, dest)
    return dest


def _manual(dest: Path, hint: str | None) -> str:
    text = f"download it by hand and place it at {dest}"
    return f"{text} ({hint})" if hint else text


def _fetch_with_retries(
    url: str, part: Path, dest: Path, retries: int, backoff: float, timeout: float, hint: str | None
) -> None:
    best = _size(part)
    failures = 0
    while True:
        try:
            _attempt(url, part, timeout)
            return
        except _Fatal as err:
            raise DownloadError(f"could not download {url}: {err}; {_manual(dest, hint)}") from None
        except _TRANSIENT_ERRORS as err:
            size = _size(part)
            if size > best:  # progress: the link works, just not for long; keep going
                best, failures = size, 0
            else:
                failures += 1
            if failures > retries:
                raise DownloadError(
                    f"could not download {url}: gave up after {failures} attempts in a row without "
                    f"progress (last error: {_describe(err)}); {_manual(dest, hint)}"
                ) from err
            delay = min(backoff * 2 ** max(failures - 1, 0), MAX_DELAY)
            log.info("%s: %s; retrying in %.1fs", url, _describe(err), delay)
            _sleep(delay)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return f"{type(err).__name__}: {err.reason}"
    return f"{type(err).__name__}: {err}"


def _attempt(url: str, part: Path, timeout: float) -> None:
    """One request: append to ``part`` from its current size, or restart it from zero."""
    offset = _size(part)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}  # bytes must hash as published
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        try:
            _handle_http_error(err, part, offset)
        finally:
            err.close()
        return  # 416 with the .part already complete
    with response:
        offset, total = _resume_point(response, part, offset)
        _stream(response, part, offset, total)


def _handle_http_error(err: urllib.error.HTTPError, part: Path, offset: int) -> None:
    """Return when a 416 means the ``.part`` is already complete; otherwise raise."""
    if err.code == 416 and offset:
        total = _parse_content_range(err.headers.get("Content-Range", ""))[2]
        if total is None or total == offset:
            return  # nothing left to send; the checksum (when given) is the real judge
        part.unlink()  # our .part is longer than the file: it is not this file, start over
        raise _Transient(f"HTTP 416: local partial file ({offset} B) does not fit remote size {total} B")
    if err.code in RETRYABLE_STATUS:
        raise _Transient(f"HTTP {err.code} {err.reason}")
    raise _Fatal(f"HTTP {err.code} {err.reason}")


def _resume_point(response: http.client.HTTPResponse, part: Path, offset: int) -> tuple[int, int | None]:
    """Where this response's body starts in the file, and the file's total size if known."""
    length = response.headers.get("Content-Length")
    length_n = int(length) if length and length.isdigit() else None
    if getattr(response, "status", None) == 206:
        start, _end, total = _parse_content_range(response.headers.get("Content-Range", ""))
        if start != offset:
            part.unlink(missing_ok=True)  # a range we did not ask for: cannot splice it safely
            raise _Transient(f"server answered range start {start}, asked for {offset}")
        if total is None and length_n is not None:
            total = offset + length_n
        return offset, total
    # A 200 (server ignores Range, or nothing to resume) carries the whole file: start over.
    return 0, length_n


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _parse_content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 99, 100); unknown parts are None."""
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return None, None, None
    start, end, total = (int(g) if g and g.isdigit() else None for g in m.groups())
    return start, end, total


def _stream(response: BinaryIO, part: Path, offset: int, total: int | None) -> None:
    """Copy the body into ``part`` (appending at ``offset``); raise if it ends short or long."""
    from tqdm.auto import tqdm

    received = 0
    with (
        open(part, "ab" if offset else "wb") as f,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not sys.stderr.isatty(),
            leave=False,
            dynamic_ncols=True,
        ) as bar,
    ):
        try:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        finally:
            # Keep what arrived even on error: the next attempt resumes from it.
            f.flush()
            os.fsync(f.fileno())
    if total is not None and offset + received != total:
        if offset + received > total:
            part.unlink()  # more bytes than announced: the .part cannot be trusted
        raise _Transient(f"connection closed after {offset + received} of {total} bytes")
