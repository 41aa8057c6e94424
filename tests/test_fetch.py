"""src.data.fetch against a local HTTP server and src.data.archive against hand-built hostile archives (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import socket
import stat
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest

from src.data import fetch
from src.data.archive import ArchiveError, CorruptArchiveError, UnsafeArchiveError, safe_extract
from src.data.fetch import ChecksumError, DownloadError, download, md5sum, sha256sum

# Random bytes so that a shifted or duplicated chunk cannot accidentally hash right.
PAYLOAD = os.urandom(300_000)
FILES = {"data/a.txt": b"hello\n", "data/sub/b.bin": os.urandom(5000), "top.txt": b"top"}

Route = Callable[[http.server.BaseHTTPRequestHandler, int], None]


# ---------------------------------------------------------------------------------------------
# A tiny HTTP server with Range support and scriptable misbehaviour


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers))  # type: ignore[attr-defined]
        route = srv.routes.get(self.path)  # type: ignore[attr-defined]
        if route is None:
            self.send_error(404)
            return
        nth = sum(1 for p, _ in srv.requests if p == self.path)  # type: ignore[attr-defined]
        route(self, nth)


def send(h: http.server.BaseHTTPRequestHandler, body: bytes, *, ranges: bool = True, limit: int | None = None) -> None:
    """Answer like a real server; ``limit`` sends only that many body bytes, then hangs up."""
    start = 0
    requested = h.headers.get("Range")
    if requested and ranges:
        start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
        if start >= len(body):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(body)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
        h.send_response(200)
    rest = body[start:]
    h.send_header("Content-Length", str(len(rest)))  # always the full length, even when we cut it
    h.end_headers()
    h.wfile.write(rest if limit is None else rest[:limit])
    h.wfile.flush()
    h.close_connection = True


class Server:
    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}  # type: ignore[attr-defined]
        self.httpd.requests = []  # type: ignore[attr-defined]

    def route(self, path: str, fn: Route) -> str:
        self.httpd.routes[path] = fn  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def requests(self, path: str) -> list[Message]:
        return [h for p, h in self.httpd.requests if p == path]  # type: ignore[attr-defined]


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def sleeps(monkeypatch) -> list[float]:
    """Record backoff pauses instead of sleeping (the tests also pass tiny backoffs)."""
    calls: list[float] = []
    monkeypatch.setattr(fetch, "_sleep", calls.append)
    return calls


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return tf.getnames()


def zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---------------------------------------------------------------------------------------------
# Checksums


def test_checksum_helpers_match_hashlib_across_chunks(tmp_path):
    data = os.urandom(fetch.CHUNK * 2 + 123)  # spans several read chunks
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert sha256sum(f) == hashlib.sha256(data).hexdigest()
    assert md5sum(f) == hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Download


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_download_verify_and_extract_good_archive(tmp_path, server, kind):
    src = tmp_path / f"src.{kind}"
    (make_tar if kind == "tar.gz" else make_zip)(src, FILES)
    body = src.read_bytes()
    url = server.route(f"/ds.{kind}", lambda h, n: send(h, body))
    dest = tmp_path / "dl" / f"ds.{kind}"

    assert download(url, dest, sha256=sha(body), md5=hashlib.md5(body).hexdigest(), backoff=0.01) == dest
    assert dest.read_bytes() == body
    assert not dest.with_name(dest.name + ".part").exists()

    out = tmp_path / "extracted"
    written = safe_extract(dest, out)
    assert sorted(written) == sorted(out / name for name in FILES)
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_connection_dropped_midway_resumes_with_range(tmp_path, server):
    route = lambda h, n: send(h, PAYLOAD, limit=100_000 if n == 1 else None)  # noqa: E731
    url = server.route("/drop", route)
    dest = tmp_path / "f.bin"
    download(url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests("/drop")
    assert first.get("Range") is None
    assert second.get("Range") == "bytes=100000-"  # resumed, did not start over


def test_truncated_then_full_200_restarts_from_zero(tmp_path, server):
    # The server ignores Range: its 200 carries the whole file, so the .part must be rewritten.
    route = lambda h, n: send(h, PAYLOAD, ranges=False, limit=1000 if n == 1 else None)  # noqa: E731
    url = server.route("/trunc", route)
    dest = tmp_path / "f.bin"
    download(url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests("/trunc")) == 2


def test_always_truncated_gives_up_with_clear_error(tmp_path, server, sleeps):
    route = lambda h, n: send(h, PAYLOAD, ranges=False, limit=1000)  # noqa: E731
    url = server.route("/broken", route)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as err:
        download(url, dest, retries=2, backoff=0.01)
    msg = str(err.value)
    assert url in msg and "1000 of 300000 bytes" in msg and f"place it at {dest}" in msg
    assert not dest.exists()
    # First attempt made progress (0 -> 1000 B); the next three did not; retries=2 allows two.
    assert len(server.requests("/broken")) == 4
    assert sleeps == [0.01, 0.01, 0.02]


def test_progress_resets_the_retry_budget(tmp_path, server):
    # Every response is cut after 40 kB but Range works: each attempt makes progress, so even
    # retries=1 finishes the file.
    url = server.route("/chunky", lambda h, n: send(h, PAYLOAD, limit=40_000))
    dest = tmp_path / "f.bin"
    download(url, dest, sha256=sha(PAYLOAD), retries=1, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests("/chunky")) == 8  # ceil(300000 / 40000)


def test_resumes_leftover_part_and_handles_416_when_complete(tmp_path, server):
    url = server.route("/f", lambda h, n: send(h, PAYLOAD))
    dest = tmp_path / "f.bin"
    part = tmp_path / "f.bin.part"
    part.write_bytes(PAYLOAD[:123_456])  # left by an interrupted earlier run
    download(url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests("/f")[0].get("Range") == "bytes=123456-"

    dest.unlink()
    part.write_bytes(PAYLOAD)  # complete .part: the server answers 416, nothing to fetch
    download(url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_wrong_checksum_deletes_file_and_names_digests(tmp_path, server):
    url = server.route("/f", lambda h, n: send(h, PAYLOAD))
    dest = tmp_path / "f.bin"
    wrong = "ab" * 32
    with pytest.raises(ChecksumError) as err:
        download(url, dest, sha256=wrong, backoff=0.01)
    msg = str(err.value)
    assert str(dest) in msg and wrong in msg and sha(PAYLOAD) in msg
    assert not dest.exists() and not dest.with_name("f.bin.part").exists()

    wrong_md5 = "0" * 32
    with pytest.raises(ChecksumError, match=f"md5 expected {wrong_md5}, got {hashlib.md5(PAYLOAD).hexdigest()}"):
        download(url, dest, md5=wrong_md5, backoff=0.01)
    assert not dest.exists()


def test_unreachable_host_raises_download_error_with_manual_path(tmp_path, sleeps):
    with socket.socket() as s:  # grab a free port, then close it: connecting is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/VOCtrainval.tar"
    dest = tmp_path / "downloads" / "VOCtrainval.tar"
    with pytest.raises(DownloadError) as err:
        download(url, dest, retries=3, backoff=0.01, timeout=2, manual_hint="mirror: example.org/voc")
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert url in msg and f"download it by hand and place it at {dest}" in msg and "mirror: example.org/voc" in msg
    assert sleeps == [0.01, 0.02, 0.04]  # exponential backoff
    assert not dest.exists()


def test_http_404_fails_fast(tmp_path, server, sleeps):
    url = server.route("/missing", lambda h, n: h.send_error(404))
    with pytest.raises(DownloadError, match=r"HTTP 404.*place it at"):
        download(url, tmp_path / "f", backoff=0.01)
    assert len(server.requests("/missing")) == 1 and sleeps == []


def test_http_503_is_retried(tmp_path, server):
    url = server.route("/busy", lambda h, n: h.send_error(503) if n == 1 else send(h, PAYLOAD))
    download(url, tmp_path / "f", sha256=sha(PAYLOAD), backoff=0.01)
    assert (tmp_path / "f").read_bytes() == PAYLOAD


def test_present_verified_file_makes_no_request(tmp_path, server):
    url = server.route("/f", lambda h, n: send(h, b"something else"))
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    assert download(url, dest, sha256=sha(PAYLOAD)) == dest
    assert download(url, dest) == dest  # no checksum: existing means complete (atomic rename)
    assert server.requests("/f") == []


def test_present_file_failing_checksum_is_replaced(tmp_path, server):
    url = server.route("/f", lambda h, n: send(h, PAYLOAD))
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    download(url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD and len(server.requests("/f")) == 1


# ---------------------------------------------------------------------------------------------
# Extraction: hostile archives


def _tar_with(path: Path, *members: tarfile.TarInfo) -> Path:
    """A tar whose first member is harmless, so a late rejection must also undo that file."""
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


HOSTILE_TARS = {
    "dotdot": [_member("../evil")],
    "nested-dotdot": [_member("a/../../evil")],
    "symlink-out": [_member("link", tarfile.SYMTYPE, "../"), _member("link/evil")],
    "symlink-abs": [_member("passwd", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": [_member("hl", tarfile.LNKTYPE, "/etc/passwd")],
    "hardlink-inside": [_member("hl", tarfile.LNKTYPE, "ok.txt")],  # refused too: links are not judged
    "fifo": [_member("pipe", tarfile.FIFOTYPE)],
    "chardev": [_member("null", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_rejected_and_nothing_written(tmp_path, case):
    archive = _tar_with(tmp_path / "bad.tar", *HOSTILE_TARS[case])
    work = tmp_path / "work"
    work.mkdir()
    target = work / "deep" / "target"
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, target)
    assert str(archive) in str(err.value)
    assert HOSTILE_TARS[case][0].name in str(err.value)  # names the offending member
    assert snapshot(tmp_path) - before <= {"work/deep"}  # at most the parent folder was created
    assert not target.exists()


def test_tar_absolute_path_rejected(tmp_path):
    outside = tmp_path / "abs_evil"
    for name in ("/tmp/evil", str(outside)):
        archive = _tar_with(tmp_path / "abs.tar", _member(name))
        assert tar_names(archive)[-1] == name  # the absolute name really is stored
        with pytest.raises(UnsafeArchiveError, match="absolute"):
            safe_extract(archive, tmp_path / "target")
        assert not outside.exists() and not (tmp_path / "target").exists()


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs_evil"])
def test_zip_escaping_names_rejected(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    assert zip_names(archive)[-1] == name
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(name))):
        safe_extract(archive, tmp_path / "target")
    assert snapshot(tmp_path) == before


def test_zip_symlink_rejected(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_bomb_over_max_bytes_rejected(tmp_path, kind):
    files = {"small.txt": b"ok", "big.bin": bytes(1_000_000)}  # zeros: compresses to almost nothing
    archive = (make_tar if kind == "tar" else make_zip)(tmp_path / f"bomb.{kind}", files)
    assert archive.stat().st_size < 20_000  # a real bomb's ratio
    with pytest.raises(UnsafeArchiveError, match="exceeds 100000 bytes.*big.bin"):
        safe_extract(archive, tmp_path / "target", max_bytes=100_000)
    assert not (tmp_path / "target").exists()
    safe_extract(archive, tmp_path / "target", max_bytes=1_000_002)  # exactly at the limit is fine


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_too_many_members_rejected(tmp_path, kind):
    files = {f"f{i}.txt": b"x" for i in range(5)}
    archive = (make_tar if kind == "tar" else make_zip)(tmp_path / f"many.{kind}", files)
    with pytest.raises(UnsafeArchiveError, match="more than 4 members"):
        safe_extract(archive, tmp_path / "target", max_files=4)
    assert not (tmp_path / "target").exists()
    assert len(safe_extract(archive, tmp_path / "target", max_files=5)) == 5


def test_zip_lying_about_size_is_not_trusted(tmp_path):
    # Claim 10 bytes in both headers for a member that inflates to 100 kB.
    archive = make_zip(tmp_path / "liar.zip", {"big.bin": bytes(100_000)})
    raw = bytearray(archive.read_bytes())
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(sig)
        raw[at + size_at : at + size_at + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("big.bin").file_size == 10
    with pytest.raises(ArchiveError, match=str(archive)):
        safe_extract(archive, tmp_path / "target", max_bytes=50)
    assert not (tmp_path / "target").exists()


def _corrupt_cases(tmp_path: Path) -> dict[str, Path]:
    tgz = make_tar(tmp_path / "good.tar.gz", {"a.bin": os.urandom(50_000)})
    zpath = make_zip(tmp_path / "good.zip", {"a.bin": os.urandom(50_000)})
    cases = {
        "truncated.tar.gz": tgz.read_bytes()[: tgz.stat().st_size // 2],
        "truncated.zip": zpath.read_bytes()[: zpath.stat().st_size // 2],
        "garbage.tar": os.urandom(4096),
        "empty.tar": b"",
    }
    flipped = bytearray(zpath.read_bytes())
    flipped[100:110] = bytes(10)  # inside the compressed data: CRC/inflate fails
    cases["flipped.zip"] = bytes(flipped)
    out = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def test_corrupt_archives_give_clear_error(tmp_path):
    for name, archive in _corrupt_cases(tmp_path).items():
        target = tmp_path / f"target-{name}"
        with pytest.raises(CorruptArchiveError, match=re.escape(str(archive))):
            safe_extract(archive, target)
        assert not target.exists(), name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_compressions_are_detected(tmp_path, mode):
    archive = make_tar(tmp_path / "a.tar", FILES, mode)
    safe_extract(archive, tmp_path / "out")
    assert {n: (tmp_path / "out" / n).read_bytes() for n in FILES} == FILES


def test_existing_target_is_protected_unless_overwrite(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", FILES)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract(archive, target)
    assert (target / "keep.txt").read_text() == "mine"

    safe_extract(archive, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "top.txt").read_bytes() == b"top"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "out"]  # no staging/old left


def test_tar_of_dot_extracts_into_target(tmp_path):
    # `tar -C dir -czf x.tgz .` stores "./" and "./a.txt": the root entry must not be refused.
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    archive = tmp_path / "dot.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=".")
    assert tar_names(archive)[0] == "."
    written = safe_extract(archive, tmp_path / "out")
    assert sorted(written) == [tmp_path / "out" / "a.txt", tmp_path / "out" / "sub" / "b.txt"]
    assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "b"
