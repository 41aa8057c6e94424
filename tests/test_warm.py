"""The warm stage server (pipeline/warm.py): a stage forked from it behaves as one started afresh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.warm import ENV

ROOT = Path(__file__).resolve().parents[1]
PROBE = """\
import json, os, signal, sys, time
preloaded = "torch" in sys.modules  # before this module imports anything heavy
import torch
if "--sleep" in sys.argv:
    signal.signal(signal.SIGTERM, lambda *a: (print("stopping", flush=True), sys.exit(143)))
    print("ready", flush=True)
    time.sleep(60)
if "--crash" in sys.argv:
    os.kill(os.getpid(), signal.SIGKILL)
print(json.dumps({"version": VERSION, "preloaded": preloaded, "ppid": os.getppid(), "cwd": os.getcwd(),
                  "argv": sys.argv[1:], "x": os.environ.get("PROBE_X"), "threads": torch.get_num_threads(),
                  "main": __name__}))
print("to stderr", file=sys.stderr)
sys.exit(int(os.environ.get("PROBE_CODE", "0")))
"""
LAUNCH = "import sys; from pipeline.warm import run_stage; sys.exit(run_stage('probe', sys.argv[1:]))"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["PYTHONPATH"] = str(ROOT)
    return env | extra


def _wait_for(path: Path, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warm")
    address = folder / "s.sock"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.warm", "--serve", str(address), str(os.getpid())],
                            cwd=ROOT, env=_env(), start_new_session=True)
    _wait_for(address)
    yield address, proc.pid
    proc.terminate()
    proc.wait(timeout=30)
    assert not address.exists()  # the server removes its socket


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE.replace("VERSION", "1"))
    return tmp_path


def _launch(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=120)


def test_a_served_stage_runs_in_a_fork_with_the_callers_directory_environment_arguments_and_streams(server, probe):
    address, server_pid = server
    out = _launch(probe, "--a", "b c", PROBE_X="42", PROBE_CODE="7", **{ENV: str(address)})
    assert out.returncode == 7, out.stderr
    got = json.loads(out.stdout)
    assert got["preloaded"] and got["ppid"] == server_pid  # forked from the server, torch already imported
    assert got["cwd"] == str(probe) and got["argv"] == ["--a", "b c"] and got["x"] == "42"
    assert got["main"] == "__main__"
    assert out.stderr == "to stderr\n"


def test_the_same_stage_without_a_server_gives_the_same_output_in_its_own_process(server, probe):
    address, _ = server
    served = _launch(probe, "x", PROBE_X="1", **{ENV: str(address)})
    for env in ({ENV: str(probe / "missing.sock")}, {}):  # a named but absent server, or none at all
        alone = _launch(probe, "x", PROBE_X="1", **env)
        got, want = json.loads(alone.stdout), json.loads(served.stdout)
        assert not got["preloaded"] and want["preloaded"]
        assert {k: v for k, v in got.items() if k not in ("preloaded", "ppid")} == \
               {k: v for k, v in want.items() if k not in ("preloaded", "ppid")}
        assert (alone.returncode, alone.stderr) == (served.returncode, served.stderr) == (0, "to stderr\n")


def test_edited_stage_code_is_imported_afresh_by_every_fork(server, probe):
    address, _ = server
    assert json.loads(_launch(probe, **{ENV: str(address)}).stdout)["version"] == 1
    (probe / "probe.py").write_text(PROBE.replace("VERSION", "2"))
    assert json.loads(_launch(probe, **{ENV: str(address)}).stdout)["version"] == 2


def test_a_thread_setting_read_at_import_that_differs_makes_the_stage_start_afresh(server, probe):
    """torch reads OMP_NUM_THREADS when it loads: a fork of the server would not honour the caller's value."""
    address, _ = server
    out = _launch(probe, OMP_NUM_THREADS="1", **{ENV: str(address)})
    got = json.loads(out.stdout)
    assert out.returncode == 0 and got["threads"] == 1 and not got["preloaded"]
    assert "warm stage server not used" in out.stderr and "OMP_NUM_THREADS" in out.stderr


def test_sigterm_to_the_launcher_reaches_the_stage_and_its_exit_code_comes_back(server, probe):
    address, _ = server
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "--sleep"], cwd=probe, env=_env(**{ENV: str(address)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and out == "stopping\n"


def test_a_sigterm_before_the_stages_pid_arrives_is_held_and_passed_on(tmp_path):
    """The window between the request and the server's answer: the fork already runs (it may even have printed)
    but the launcher does not know its pid yet. A SIGTERM there must reach the stage, not kill the launcher."""
    import socket
    import threading

    from pipeline.warm import _HEADER

    address = tmp_path / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(address))
    listener.listen(1)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCH], cwd=tmp_path, env=_env(**{ENV: str(address)}),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stage: dict = {}

    def serve() -> None:  # what the server does, with a SIGTERM to the launcher before its answer
        conn, _ = listener.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
            for fd in fds:
                os.close(fd)
            os.kill(launcher.pid, signal.SIGTERM)
            time.sleep(0.5)  # the signal is delivered while the launcher waits for the pid
            stage["proc"] = proc = subprocess.Popen(
                [sys.executable, "-c", "import signal, sys, time\n"
                 "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\nprint('ready', flush=True)\ntime.sleep(60)"],
                stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline() == "ready\n"
            conn.sendall(json.dumps({"pid": proc.pid}).encode() + b"\n")
            code = proc.wait(timeout=60)
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert launcher.wait(timeout=90) == 143, launcher.stderr.read()
    finally:
        launcher.kill()
        thread.join(timeout=70)
        listener.close()
    assert stage["proc"].returncode == 143  # the stage got the held SIGTERM


def test_a_stage_killed_by_a_signal_reports_the_shells_code(server, probe):
    address, _ = server
    assert _launch(probe, "--crash", **{ENV: str(address)}).returncode == 128 + signal.SIGKILL


def test_the_command_runs_with_the_server_which_is_gone_after_it(tmp_path):
    script = f"test -S \"${ENV}\" && echo \"${ENV}\" > {tmp_path / 'address'}; exit 3"
    out = subprocess.run([sys.executable, "-m", "pipeline.warm", "sh", "-c", script], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    address = Path((tmp_path / "address").read_text().strip())  # written only when the socket existed
    assert not address.exists() and not address.parent.exists()
    assert subprocess.run([sys.executable, "-m", "pipeline.warm"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True).returncode == 2  # no command: usage


def test_the_server_stops_by_itself_when_its_launcher_is_gone(tmp_path):
    launcher = subprocess.Popen(["sleep", "3"])
    address = tmp_path / "s.sock"
    server = subprocess.Popen([sys.executable, "-m", "pipeline.warm", "--serve", str(address), str(launcher.pid)],
                              cwd=ROOT, env=_env())
    launcher.wait()
    assert server.wait(timeout=120) == 0
    assert not address.exists()


def test_the_stage_dispatcher_names_the_stages_and_passes_arguments_on():
    out = subprocess.run([sys.executable, "-m", "pipeline", "trian"], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert out.returncode == 2 and "unknown stage 'trian'" in out.stderr and "pretrain_sr" in out.stderr
    out = subprocess.run([sys.executable, "-m", "pipeline", "train", "--task", "nope", "--method", "h2t"], cwd=ROOT,
                         env=_env(), capture_output=True, text=True)
    assert out.returncode == 2 and "--task: invalid choice: 'nope'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0 and "evaluate" in out.stdout
