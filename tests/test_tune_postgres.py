"""One Optuna study on a real PostgreSQL server, shared by workers started as separate processes (as two
machines would start them): exact trial counts, unique trial numbers, a killed worker's trial failed by
heartbeats and retried, resume, and optuna-dashboard opening the study. The server is a throwaway one
(tests/servers.py), started on 127.0.0.1 for this module; the module is skipped, with the reason, where it
cannot start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from src import tune
from tests.servers import Unavailable, free_port, postgres_server
from tests.test_tune import env  # noqa: F401 - the tiny tuning set-up (params, data, pretrained SR)

ROOT = Path(__file__).resolve().parents[1]
STUDY = "sr4ir-cls-x4-synthetic"
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg():
    try:
        cm = postgres_server()
        server = cm.__enter__()
    except Unavailable as err:
        pytest.skip(f"PostgreSQL cannot start on this machine: {err}")
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)


def _args(env, storage: str, out: str, params: Path | None = None) -> list[str]:  # noqa: F811
    args = list(env.args)
    args[args.index("--storage") + 1] = storage
    args[args.index("--out") + 1] = str(env.tmp / out)
    if params is not None:
        args[args.index("--params") + 1] = str(params)
    return args


def _worker(args: list[str], n: int, log: Path) -> subprocess.Popen:
    """`python -m src.tune` in its own process, as a second machine would run it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two workers on a 2-core machine: one thread each
    return subprocess.Popen([sys.executable, "-m", "src.tune", *args, "--heartbeat", "1", "--n-trials", str(n)],
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def _wait(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    for proc, log in zip(procs, logs):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"worker did not finish in {timeout} s:\n{log.read_text()[-3000:]}") from None
        assert code == 0, f"worker exited with {code}:\n{log.read_text()[-3000:]}"


def test_two_worker_processes_share_one_postgresql_study_exactly_and_the_dashboard_opens_it(env, pg):  # noqa: F811
    storage = pg.create_db("exact")
    assert storage.startswith("postgresql://")  # the plain URL a lab types (SQLAlchemy 2.1: driver psycopg 3)
    assert tune.main([*_args(env, storage, "setup"), "--n-trials", "0"]) == 0  # creates the study, queues the paper's trial
    logs = [env.tmp / f"w{i}.log" for i in (1, 2)]
    procs = [_worker(_args(env, storage, f"out{i}"), 2, log) for i, log in enumerate(logs, 1)]
    _wait(procs, logs)
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # exactly 2 + 2, no number twice
    assert all(t.state in DONE for t in trials), [t.state for t in trials]
    assert sum(t.params == tune.PAPER_DEFAULT for t in trials) == 1
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert workers == {str(p.pid) for p in procs}  # both processes ran trials

    # optuna-dashboard on the same storage lists the study and its trials.
    port = free_port()
    dash_log = env.tmp / "dashboard.log"
    dash = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), storage, "--host", "127.0.0.1",
                             "--port", str(port), "--server", "wsgiref", "--quiet"],
                            stdout=dash_log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                assert dash.poll() is None, dash_log.read_text()[-2000:]
                assert time.time() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == [STUDY]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as r:
            assert r.status == 200 and b"<html" in r.read().lower()  # the page itself
    finally:
        dash.kill()
        dash.wait(timeout=30)


def test_a_killed_worker_is_failed_by_heartbeats_retried_and_the_study_resumes(env, pg):  # noqa: F811
    storage = pg.create_db("killed")
    assert tune.main([*_args(env, storage, "setup"), "--n-trials", "0"]) == 0
    slow = env.tmp / "params_slow.yaml"  # worker A's trials last long enough to be caught running
    params = yaml.safe_load(env.params.read_text())
    params["tune"]["epochs"] = 12
    slow.write_text(yaml.safe_dump(params))
    logs = [env.tmp / "a.log", env.tmp / "b.log"]
    a = _worker(_args(env, storage, "outa", slow), 2, logs[0])
    b = _worker(_args(env, storage, "outb"), 2, logs[1])
    deadline, victim = time.time() + 180, None
    try:
        # Wait until one of A's trials runs and has beaten at least once (Optuna judges staleness by a
        # recorded heartbeat), then kill A without warning, as a machine that loses power.
        while victim is None:
            assert time.time() < deadline, "worker A's trial was never seen running"
            assert a.poll() is None, f"worker A finished before it could be killed:\n{logs[0].read_text()[-2000:]}"
            for t in optuna.load_study(study_name=STUDY, storage=storage).trials:
                if (t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(f":{a.pid}")
                        and pg.query("killed", f"SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = {t._trial_id}")[0][0]):
                    victim = t.number
            time.sleep(0.2)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        _wait([b], logs[1:])  # B goes on with its own trials
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    time.sleep(4)  # more than 3 missed heartbeats since A died
    # A's machine comes back: the same command resumes the study (in this process), and any stale trial left
    # RUNNING is failed first and its parameters retried.
    assert tune.main([*_args(env, storage, "outa2"), "--heartbeat", "1", "--n-trials", "2"]) == 0
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]  # A's killed trial + 2 (B) + 2 (A again)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [victim]
    assert all(t.state in DONE for t in trials if t.number != victim), [t.state for t in trials]
    retried = [t for t in trials if t.number > victim and t.params == failed[0].params]
    assert retried and retried[0].state in DONE
    assert (env.tmp / "outa2" / "best_params.yaml").is_file()
    shutil.rmtree(env.tmp / "outa", ignore_errors=True)
