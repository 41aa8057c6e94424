"""Safe downloading and unpacking of real datasets (PASCAL VOC and friends).

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
* ``safe_extract`` treats archives as untrusted: only regular files and folders with relative,
  ``..``-free names are allowed (links, devices and FIFOs are refused outright rather than judged),
  member count and total size are capped against decompression bombs, and zip sizes are counted
  while writing because zip headers can lie. Everything is unpacked into a temporary sibling
  folder that is renamed into place only on success, so a rejected or corrupt archive leaves
  nothing behind.

This module avoids importing torch (via ``src.utils``) so that fetching stays cheap to import.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import lzma
import os
import re
import shutil
import ssl
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB: big enough for throughput, small enough for a smooth progress bar
MAX_DELAY = 60.0  # cap on one backoff pause
USER_AGENT = "sr4ir-pipeline (python urllib)"
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

# Module-level so tests (or a caller) can replace the pause between retries.
_sleep: Callable[[float], None] = time.sleep


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says how to supply it by hand."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected digest (the file has been deleted)."""


class ArchiveError(ValueError):
    """Base class for archives ``safe_extract`` refuses."""


class UnsafeArchiveError(ArchiveError):
    """A member would escape the target, is not a plain file/folder, or the archive is a bomb."""


class CorruptArchiveError(ArchiveError):
    """The archive is truncated, damaged or not a tar/zip at all."""


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


# ---------------------------------------------------------------------------------------------
# Extraction


def safe_extract(
    archive: Path | str,
    target: Path | str,
    max_bytes: int = 20 * 2**30,
    max_files: int = 1_000_000,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Unpack a tar (any compression) or zip ``archive`` into ``target``; return the files written.

    ``target`` must not exist (or be an empty folder) unless ``overwrite`` is set, so a wrong
    ``target`` can never wipe unrelated data. Raises ``UnsafeArchiveError`` for escaping names,
    links, special files, more than ``max_files`` members or more than ``max_bytes`` of content,
    and ``CorruptArchiveError`` for damaged archives; in every failure case ``target`` is untouched.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target}: already exists and is not empty (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staging(target) as tmp:
        extract = _extract_zip if _is_zip(archive) else _extract_tar
        names = extract(archive, tmp, max_bytes, max_files)
    return [target / name for name in names]


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary sibling folder that replaces ``target`` on success and vanishes on error."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            _remove(old)
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_zip(archive: Path) -> bool:
    # Decide by leading magic, not zipfile.is_zipfile: that scans the tail for an end record and
    # would mistake a tar whose last member is a .zip for a zip.
    with open(archive, "rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def _check_name(archive: Path, name: str) -> PurePosixPath:
    """The member's path relative to the target (empty for ``./``), or ``UnsafeArchiveError``."""
    if not name:
        raise UnsafeArchiveError(f"{archive}: a member has an empty name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    # Backslashes count as separators here, to be strict: they are on Windows.
    if ".." in re.split(r"[/\\]", name):
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'")
    if "\0" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains a NUL byte")
    return PurePosixPath(*[p for p in name.split("/") if p not in ("", ".")])


class _Budget:
    """Running totals against the bomb limits."""

    def __init__(self, archive: Path, max_bytes: int, max_files: int) -> None:
        self.archive, self.max_bytes, self.max_files = archive, max_bytes, max_files
        self.files = self.bytes = 0

    def add_member(self, name: str) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise UnsafeArchiveError(f"{self.archive}: more than {self.max_files} members (at {name!r})")

    def add_bytes(self, name: str, n: int) -> None:
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise UnsafeArchiveError(
                f"{self.archive}: uncompressed content exceeds {self.max_bytes} bytes (at member {name!r})"
            )


# What a damaged archive raises from the tar/zip modules and the decompressors beneath them.
_CORRUPT_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)
_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # isinstance(x, ()) is False on old Pythons


def _extract_tar(archive: Path, tmp: Path, max_bytes: int, max_files: int) -> list[PurePosixPath]:
    budget = _Budget(archive, max_bytes, max_files)
    names: list[PurePosixPath] = []
    # One pass: check each header just before extracting it, so a bomb is stopped at the limit
    # without first decompressing the whole archive to read every header.
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                rel = _check_tar_member(archive, member, tmp)
                budget.add_member(member.name)
                budget.add_bytes(member.name, member.size if member.isreg() else 0)
                if not rel.parts:
                    continue  # "./" from `tar -C dir .`: the target folder itself
                _tar_extract_one(tf, member, tmp)
                if member.isreg():
                    names.append(rel)
    except ArchiveError:
        raise
    except _CORRUPT_ERRORS as err:
        if isinstance(err, _TAR_FILTER_ERROR):  # Python's data filter caught what we did not
            raise UnsafeArchiveError(f"{archive}: {_oneline(err)}") from err
        if isinstance(err, OSError) and not _looks_corrupt(err):
            raise  # a local problem (disk full, permissions), not the archive's fault
        raise CorruptArchiveError(f"{archive}: corrupt, truncated or not a tar/zip archive ({_oneline(err)})") from err
    return names


def _oneline(err: BaseException) -> str:
    return " ".join(str(err).split())  # tarfile lists each method it tried on its own line


def _looks_corrupt(err: OSError) -> bool:
    # gzip.BadGzipFile is an OSError, and bz2's "Invalid data stream" is one without an errno;
    # real I/O failures (disk full, permissions) carry an errno.
    return isinstance(err, gzip.BadGzipFile) or err.errno is None


def _check_tar_member(archive: Path, member: tarfile.TarInfo, tmp: Path) -> PurePosixPath:
    rel = _check_name(archive, member.name)
    if not rel.parts and not member.isdir():
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} would replace the target folder")
    if not (member.isreg() or member.isdir()):
        # Links are refused, not judged: checking where a link points is subtle (chains, later
        # members writing through it), and datasets do not need them.
        kind = "symlink" if member.issym() else "hardlink" if member.islnk() else "special file"
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a {kind}; only files and folders allowed")
    # Belt and braces: the resolved path must stay inside the staging folder.
    if not (tmp / rel).resolve().is_relative_to(tmp.resolve()):
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} resolves outside the target")
    return rel


def _tar_extract_one(tf: tarfile.TarFile, member: tarfile.TarInfo, tmp: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        # Python's own "data" filter as a second line of defence (3.10.12+/3.11.4+); it also
        # drops setuid bits and ownership.
        tf.extract(member, tmp, filter="data")
    else:  # pragma: no cover - old interpreters: our checks above are the defence
        tf.extract(member, tmp, set_attrs=False)


def _extract_zip(archive: Path, tmp: Path, max_bytes: int, max_files: int) -> list[PurePosixPath]:
    budget = _Budget(archive, max_bytes, max_files)
    names: list[PurePosixPath] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            # Cheap up-front rejection on the declared sizes; the copy below counts real bytes.
            declared = _Budget(archive, max_bytes, max_files)
            for info in infos:
                _check_zip_member(archive, info)
                declared.add_member(info.filename)
                declared.add_bytes(info.filename, info.file_size)
            for info in infos:
                rel = _check_name(archive, info.filename)
                budget.add_member(info.filename)
                out = tmp / rel
                if info.is_dir():  # includes "./", which is tmp itself
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                _copy_zip_member(zf, info, out, budget)
                names.append(rel)
    except ArchiveError:
        raise
    except (*_CORRUPT_ERRORS, RuntimeError) as err:  # RuntimeError: encrypted member
        if isinstance(err, OSError) and not _looks_corrupt(err):
            raise
        raise CorruptArchiveError(f"{archive}: corrupt, truncated or unreadable zip archive ({_oneline(err)})") from err
    return names


def _check_zip_member(archive: Path, info: zipfile.ZipInfo) -> None:
    if not _check_name(archive, info.filename).parts and not info.is_dir():
        raise UnsafeArchiveError(f"{archive}: member {info.filename!r} would replace the target folder")
    # Unix mode in the high bits; many writers (Python's writestr included) set only permissions,
    # so judge the file type only when one is given.
    kind_bits = stat.S_IFMT(info.external_attr >> 16)
    if kind_bits not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "symlink" if kind_bits == stat.S_IFLNK else "special file"
        raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a {kind}; only files and folders allowed")


def _copy_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, budget: _Budget) -> None:
    written = 0
    with zf.open(info) as src, open(out, "wb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            # Count real bytes: a forged header must not let more through than it declared.
            if written > info.file_size:
                raise UnsafeArchiveError(
                    f"{zf.filename}: member {info.filename!r} inflates beyond its declared {info.file_size} bytes"
                )
            budget.add_bytes(info.filename, len(chunk))
            dst.write(chunk)
