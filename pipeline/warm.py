"""Run a command with a warm stage server: `python -m pipeline.warm dvc repro`.

Every DVC stage is its own process, and before it does any work it imports torch, torchvision and MLflow's
database layer: about 4 s on two CPU cores, most of the pipeline's overhead over forty stages. This command
starts a server that imports them once, runs the command with ``$SR4IR_STAGE_SERVER`` naming the server's
socket, and stops the server when the command ends. A stage started as ``python -m pipeline <stage> …`` (the
``cmd`` of every stage in dvc.yaml) then asks the server to fork a process for it: the fork has the libraries
already imported and takes the stage's working directory, environment, arguments and standard streams; the
stage's own code (``pipeline.*``, ``src.*``) is imported fresh in the fork, so an edit is never missed. The
launching process passes SIGTERM and SIGINT on to the fork and exits with its exit code, so DVC sees what it
would see from the stage run directly. Without the variable, or when the server cannot be reached, the stage
runs in its own process as before: plain ``dvc repro`` needs none of this.

The server imports only third-party libraries (their versions cannot change under a running command), runs
no torch operation (no thread pools start before a fork), and stops by itself when the command's launcher
is gone.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

ENV = "SR4IR_STAGE_SERVER"
PRELOAD = (  # imported by the server; each stage process would import them again otherwise
    "numpy", "PIL.Image", "yaml", "tqdm", "torch", "torch.distributed", "torchvision", "torchvision.models",
    "torchvision.models.detection", "torchvision.models.segmentation", "torchvision.transforms.v2",
    "mlflow.tracking", "mlflow.entities", "mlflow.store.tracking.sqlalchemy_store", "pandas",
    "matplotlib", "pycocotools.coco", "pycocotools.cocoeval",
)
OPTIONAL = {"pycocotools.coco", "pycocotools.cocoeval", "matplotlib", "pandas"}
# Environment read while those libraries load (thread counts, allocator and backend settings, the interpreter's
# own): a stage whose values differ from the server's runs in its own process instead.
AT_IMPORT = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS", "TORCH", "PYTORCH", "CUDA", "NVIDIA", "PYTHON", "LD_",
             "MPL", "TQDM")
_HEADER = struct.Struct("!I")


# --------------------------------------------------------------------------------------------------------
# The launching side: `python -m pipeline <stage>` asks the server, or runs the stage here.


def run_stage(module: str, argv: list[str]) -> int:
    """Run ``module`` as ``__main__`` with ``argv`` (argv[0] excluded): forked by the warm server when
    ``$SR4IR_STAGE_SERVER`` names a reachable one, otherwise in this process. Returns the exit code."""
    address = os.environ.get(ENV)
    if address:
        code = _delegate(address, module, argv)
        if code is not None:
            return code
    return _run_module(module, argv)


def _delegate(address: str, module: str, argv: list[str]) -> int | None:
    """The exit code of ``module`` run by the server; None when no server answered (run it here instead)."""
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(address)
    except OSError:
        return None
    # The fork may start writing to our streams before its pid reaches us: a SIGTERM in that window must not
    # kill this launcher and leave the stage running. Signals are caught from before the request goes out,
    # held until the pid is known, then passed on (or, when nothing was forked, raised here again).
    stage: dict[str, int] = {}
    held: list[int] = []

    def forward(signum, _frame):
        if "pid" not in stage:
            held.append(signum)
            return
        try:
            os.kill(stage["pid"], signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def not_forked() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in held:
            signal.raise_signal(signum)

    with conn:
        request = json.dumps({"module": module, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                              "path": sys.path[0] if sys.path else ""}).encode()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        try:
            socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
            conn.sendall(request)
            reader = conn.makefile("rb")
            started = json.loads(reader.readline() or b"{}")
        except (OSError, ValueError):
            not_forked()
            return None
        if "pid" not in started:  # the server did not fork: nothing ran yet
            not_forked()
            print(f"note: warm stage server not used ({started.get('error', 'no answer')}); {module} starts afresh",
                  file=sys.stderr)
            return None
        stage["pid"] = started["pid"]
        for signum in held:
            forward(signum, None)
        line = reader.readline()
    if not line:
        print(f"error: the warm stage server ({address}) went away while running {module}", file=sys.stderr)
        return 1
    return int(json.loads(line)["exit"])


def _run_module(module: str, argv: list[str]) -> int:
    """Run ``module`` as ``python -m module *argv`` would, in this process; return its exit code."""
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130
    return 0


# --------------------------------------------------------------------------------------------------------
# The server.


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import ``modules`` (those that are installed); return the ones imported."""
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            if name not in OPTIONAL:
                raise
            continue
        done.append(name)
    return done


def serve(address: str, parent: int | None = None, modules: tuple[str, ...] = PRELOAD) -> None:
    """Import ``modules``, then fork one process per request on the Unix socket ``address`` until SIGTERM,
    or until the process ``parent`` is gone. The socket appears only once the imports are done."""
    settings = import_settings(os.environ)
    preload(modules)
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")  # what every plotting function here selects
        importlib.import_module("matplotlib.pyplot")
    if threading.active_count() != 1:  # forking a process with other threads risks locks held forever
        raise RuntimeError(f"warm stage server: {threading.active_count()} threads after the imports; not serving")
    stop = False

    def on_term(_signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the stages through their launchers
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{address}.{os.getpid()}.tmp"
    listener.bind(tmp)
    listener.listen(16)
    os.replace(tmp, address)  # clients connect only once the server is ready
    running: dict[int, socket.socket] = {}
    # A finished stage wakes the loop at once (SIGCHLD writes to the wake-up pipe), so its launcher gets the
    # exit code without waiting for a poll.
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    try:
        while not stop and (parent is None or _alive(parent)):
            for key, _events in selector.select(timeout=0.5):
                if key.fileobj == wake_r:
                    while True:
                        try:
                            if not os.read(wake_r, 4096):
                                break
                        except BlockingIOError:
                            break
                    continue
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                _start(conn, listener, running, settings, (wake_r, wake_w))
            _reap(running)
        while running:  # stopped while stages run: they finish, their launchers get their codes
            _reap(running)
            time.sleep(0.05)
    finally:
        listener.close()
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(running: dict[int, socket.socket]) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        try:
            conn.sendall(json.dumps({"exit": code if code >= 0 else 128 - code}).encode() + b"\n")
        except OSError:
            pass
        conn.close()


def import_settings(env) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(AT_IMPORT)}


def _start(conn: socket.socket, listener: socket.socket, running: dict[int, socket.socket],
           settings: dict[str, str], wake: tuple[int, int]) -> None:
    """Read one request from ``conn`` and fork its stage process (not when ``settings`` differ)."""
    fds: list[int] = []
    try:
        conn.settimeout(10)
        head, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
        (size,) = _HEADER.unpack(head)
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise OSError("request cut short")
            body += chunk
        request = json.loads(body)
        if len(fds) != 3:
            raise OSError(f"expected 3 file descriptors, got {len(fds)}")
        if (theirs := import_settings(request["env"])) != settings:
            differ = sorted(k for k in theirs.keys() | settings.keys() if theirs.get(k) != settings.get(k))
            raise ValueError(f"environment differs from the server's in {', '.join(differ)}")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
    except (OSError, ValueError) as err:
        for fd in fds:
            os.close(fd)
        try:
            conn.sendall(json.dumps({"error": str(err)}).encode() + b"\n")
        except OSError:
            pass
        conn.close()
        return
    if pid == 0:  # the stage process
        signal.set_wakeup_fd(-1)
        for fd in wake:
            os.close(fd)
        listener.close()
        conn.close()
        for other in running.values():
            other.close()
        _child(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    conn.settimeout(None)
    running[pid] = conn
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass


def _child(request: dict, fds: list[int]) -> None:
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if sys.path:
            sys.path[0] = request["path"]
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        code = _run_module(request["module"], request["argv"])
    except BaseException:  # noqa: BLE001 - whatever happens, the launcher gets an exit code
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# --------------------------------------------------------------------------------------------------------
# The command: start the server, run the command with $SR4IR_STAGE_SERVER, stop the server.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.warm", description=__doc__.split("\n\n")[0],
        epilog="example: python -m pipeline.warm dvc repro    (what `make repro` runs)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, e.g. dvc repro")
    args = parser.parse_args(argv)
    from src.tracking import PIPELINE_ENV

    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the command to run, e.g. python -m pipeline.warm dvc repro")
    dvc_run = dvc_repro(args.command)
    if dvc_run is not None:  # what can be checked before DVC deletes an output, with the stages' messages
        overrides = [w for o in dvc_run[1] for w in ("-S", o)]
        if code := subprocess.run([sys.executable, "-m", "pipeline.check", *overrides], check=False).returncode:
            return code
    with tempfile.TemporaryDirectory(prefix="sr4ir-warm-") as folder:
        address = str(Path(folder) / "stages.sock")
        server = subprocess.Popen([sys.executable, "-m", "pipeline.warm", "--serve", address, str(os.getpid())],
                                  start_new_session=True)  # Ctrl-C goes to the command, not to the server
        try:
            # One MLflow parent run for the command's stages: a fork's parent process is the server, not `dvc`,
            # so the stages cannot find their `dvc repro` by walking up their processes (src.tracking).
            env = dict(os.environ, **{ENV: address})
            env.setdefault(PIPELINE_ENV, uuid.uuid4().hex)  # (main runs in the launcher, never in the server)
            deadline = time.monotonic() + 120
            while not os.path.exists(address) and server.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # the first stage should not start before the server is ready
            if not os.path.exists(address):
                print("note: the warm stage server did not start; every stage starts afresh", file=sys.stderr)
            try:
                command = subprocess.Popen(args.command, env=env)
            except FileNotFoundError:
                print(f"error: command not found: {args.command[0]}", file=sys.stderr)
                return 127
            while True:
                try:
                    code = command.wait()
                    break
                except KeyboardInterrupt:  # the command got Ctrl-C too; wait for it to stop
                    continue
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    code = code if code >= 0 else 128 - code
    if code and dvc_run is not None:
        restore_outputs(dvc_run[0])
    return code


def dvc_repro(command: list[str]) -> tuple[list[str], list[str]] | None:
    """For ``dvc repro ...`` or ``dvc exp run ...`` (``dvc``, ``python -m dvc``, a path to dvc): the words
    that start DVC and the ``-S`` overrides given; None for any other command."""
    if Path(command[0]).name == "dvc":
        start = 1
    elif Path(command[0]).name.startswith("python") and command[1:3] == ["-m", "dvc"]:
        start = 3
    else:
        return None
    rest = command[start:]
    if rest[:1] != ["repro"] and rest[:2] != ["exp", "run"]:
        return None
    overrides = [rest[j + 1] for j, w in enumerate(rest[:-1]) if w in ("-S", "--set-param")]
    overrides += [w.split("=", 1)[1] for w in rest if w.startswith("--set-param=")]
    return command[:start], overrides


def restore_outputs(dvc: list[str]) -> None:
    """After a failed repro: put back, from DVC's cache, the outputs DVC deleted before the stage that failed
    (``dvc checkout``; dvc.lock still names their last good version). The outputs with ``persist: true`` in
    dvc.yaml were never deleted."""
    print("note: the run failed; restoring the cached outputs DVC removed before the failing stage: dvc checkout",
          file=sys.stderr)
    subprocess.run([*dvc, "checkout", "--quiet"], check=False)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], parent=int(sys.argv[3]))
    else:
        sys.exit(main())
