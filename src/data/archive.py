"""Safe unpacking of untrusted dataset archives (tar in any compression, zip).

``safe_extract`` treats archives as untrusted: only regular files and folders with relative,
``..``-free names are allowed (links, devices and FIFOs are refused outright rather than judged),
member count and total size are capped against decompression bombs, and zip sizes are counted
while writing because zip headers can lie. Everything is unpacked into a temporary sibling
folder that is renamed into place only on success, so a rejected or corrupt archive leaves
nothing behind.

Downloading the archives is ``src/data/fetch.py``. This module avoids importing torch (via
``src.utils``) so that unpacking stays cheap to import.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20  # 1 MiB read/write unit when copying zip members


class ArchiveError(ValueError):
    """Base class for archives ``safe_extract`` refuses."""


class UnsafeArchiveError(ArchiveError):
    """A member would escape the target, is not a plain file/folder, or the archive is a bomb."""


class CorruptArchiveError(ArchiveError):
    """The archive is truncated, damaged or not a tar/zip at all."""


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
