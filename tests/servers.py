"""Throwaway servers on 127.0.0.1 for the tests: PostgreSQL (Optuna's and MLflow's shared store) and
``mlflow server``. Each is started in a temporary folder on a free port, waited for with a deadline, and
stopped (then its folder removed) when the ``with`` block ends; a server that cannot start raises
``Unavailable`` with the reason, which the fixtures turn into a skip.

PostgreSQL: the binaries of Debian's ``postgresql`` package (``.ci/run`` installs it when missing), found on
PATH or in /usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root, so as root the server runs as
the ``postgres`` user (Debian's package creates it), else ``nobody``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


class Unavailable(RuntimeError):
    """The server cannot be started on this machine (the reason is the message)."""


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------
# PostgreSQL


def pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("pg_ctl")
    candidates = ([Path(found).parent] if found else []) + [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                                if Path(p).parent.name.isdigit() else 0, reverse=True)]
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


class Postgres:
    """A running throwaway server; ``url(db)`` is a plain SQLAlchemy URL (``postgresql://``: SQLAlchemy 2.1's default
    driver is psycopg 3, the project's), ``create_db`` makes a database."""

    def __init__(self, port: int, user: str):
        self.port, self.user = port, user

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def _connect(self, db: str):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=db, connect_timeout=10,
                               autocommit=True)

    def create_db(self, name: str) -> str:
        with self._connect("postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, db: str, sql: str) -> list[tuple]:
        with self._connect(db) as conn:
            return conn.execute(sql).fetchall()


@contextlib.contextmanager
def postgres_server(timeout: float = 60.0) -> Iterator[Postgres]:
    """initdb into a temporary folder, start on a free port (listening on 127.0.0.1 only, socket in the
    folder), yield, then stop immediately and delete the folder."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("the PostgreSQL driver psycopg is not installed (pip install -e .)") from None
    bindir = pg_bin()
    if bindir is None:
        raise Unavailable("PostgreSQL's initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin "
                          "(Debian: apt-get install postgresql; .ci/run does this)")
    base = Path(tempfile.mkdtemp(prefix="sr4ir-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        name = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        runuser = shutil.which("runuser")  # util-linux
        if name is None or runuser is None:
            shutil.rmtree(base, ignore_errors=True)
            raise Unavailable("running as root with no 'postgres' or 'nobody' user or no runuser to start PostgreSQL as")
        pw = pwd.getpwnam(name)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = [runuser, "-u", name, "--"]
    data, log, port = base / "data", base / "server.log", free_port()
    user = "sr4ir"
    env = dict(os.environ, LC_ALL="C", PGTZ="UTC")
    try:
        init = subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8",
                               "--no-sync"], capture_output=True, text=True, timeout=timeout, env=env, cwd=base)
        if init.returncode:
            raise Unavailable(f"initdb failed: {(init.stderr or init.stdout).strip()[-800:]}")
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=50")
        start = subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w",
                                "-t", str(int(timeout)), "start"], capture_output=True, text=True, timeout=timeout + 10,
                               env=env, cwd=base)
        if start.returncode:
            raise Unavailable(f"pg_ctl start failed: {(start.stderr or start.stdout).strip()[-400:]} {_tail(log, 800)}")
    except (OSError, subprocess.TimeoutExpired) as err:
        shutil.rmtree(base, ignore_errors=True)
        raise Unavailable(f"PostgreSQL did not start: {type(err).__name__}: {err}") from None
    except Unavailable:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield Postgres(port, user)
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
                       capture_output=True, timeout=60, env=env, cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# ---------------------------------------------------------------------------------------------------
# mlflow server


class MlflowServer:
    def __init__(self, proc: subprocess.Popen, port: int, root: Path):
        self.proc, self.port, self.root = proc, port, root
        self.uri = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop the server and every worker it started (its own process group), at once."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(root: Path, backend: str | None = None, timeout: float = 120.0) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free port: backend store ``backend`` (default SQLite in ``root``), artifacts served
    from ``root/artifacts``; one worker. Stopped (process group killed) when the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend or f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts")]
    log = (root / "server.log").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    server = MlflowServer(proc, port, root)
    try:
        deadline = time.time() + timeout
        while not _healthy(server.uri):
            if proc.poll() is not None:
                raise Unavailable(f"mlflow server exited with {proc.returncode}: {_tail(root / 'server.log')}")
            if time.time() > deadline:
                raise Unavailable(f"mlflow server not healthy after {timeout:.0f} s: {_tail(root / 'server.log')}")
            time.sleep(0.3)
        yield server
    finally:
        server.stop()
        log.close()
