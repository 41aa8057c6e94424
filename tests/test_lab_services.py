"""What a lab shares between machines, on a copy of the tiny study (committed to git in the copy):

- a real ``mlflow server`` (SQLite backend store, artifacts in a folder) as MLFLOW_TRACKING_URI: a `dvc repro`
  logs the same runs, params, metrics and artifacts as with the local mlflow.db, and a server that goes away
  mid-stage warns once and the stage finishes;
- a DVC remote: `dvc push`, then a fresh clone `dvc pull`s and has nothing to run;
- DVC's own queue: two `dvc exp run --queue` experiments run side by side by `dvc queue start --jobs 2`, each
  under its own MLflow parent run.

Every server is started on 127.0.0.1 by the test and stopped by it (tests/servers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import Unavailable, mlflow_server
from tests.test_pipeline_e2e import FIRST_KEY, ROOT

pytestmark = pytest.mark.slow

GENERATED = {"data", "models", "metrics", "reports", "mlflow.db", "mlruns", "samples", "scores", "dvc.lock", ".dvc"}
GIT = ["git", "-c", "user.name=lab", "-c", "user.email=lab@example.invalid", "-c", "commit.gpgsign=false"]


def _env(**extra: str) -> dict[str, str]:
    """The environment a lab's shell has: the project's Python first on PATH, no MLFLOW_TRACKING_URI unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SR4IR_PIPELINE_RUN", "SR4IR_PIPELINE_START")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env | extra


def _run(args: list[str], cwd: Path, timeout: float = 600, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, env=_env(**extra), capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _dvc(*args: str, cwd: Path, warm: bool = False, **kw) -> str:
    """`dvc <args>`; ``warm``: with the stages forked from the warm server, as `make repro` runs them."""
    launcher = [sys.executable, "-m", "pipeline.warm"] if warm else []
    out = _run([*launcher, sys.executable, "-m", "dvc", *args], cwd, **kw)
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def lab(tiny_study, tmp_path_factory) -> Path:
    """A copy of the shared tiny study, brought up to date and committed (what a lab's repository holds)."""
    keep = set(os.listdir(ROOT)) | GENERATED
    dest = tmp_path_factory.mktemp("lab") / "repo"

    def ignore(folder: str, names: list[str]) -> set[str]:
        if Path(folder) == tiny_study:  # what other tests left at the top (copies of the study) stays behind
            return {n for n in names if n not in keep or n == ".git"}
        return {n for n in names if n == "__pycache__"}

    shutil.copytree(tiny_study, dest, ignore=ignore, symlinks=True)
    _run(["git", "init", "-q"], dest)
    _dvc("repro", cwd=dest, MLFLOW_TRACKING_URI=f"sqlite:///{dest / 'mlflow.db'}")  # other tests may leave a stage stale
    _run([*GIT, "add", "-A"], dest)
    _run([*GIT, "commit", "-q", "-m", "tiny study"], dest)
    return dest


# ---------------------------------------------------------------------------------------------------
# 4. A shared MLflow tracking server


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _children(client, key: str) -> dict:
    exp = client.get_experiment_by_name("sr4ir")
    runs = client.search_runs([exp.experiment_id], max_results=2000)
    parent = next(r for r in runs if r.data.tags.get("sr4ir.pipeline_key") == key)
    return parent, {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


SERVER_STAGES = {"pretrain_sr@0": "pretrain_sr/seed0", "train@cls-h2t-0": "train/cls/h2t/seed0",
                 "evaluate@cls-h2t-0": "evaluate/cls/h2t/seed0"}
VOLATILE_TAGS = ("mlflow.", "git.", "params.hash", "sr4ir.pipeline_key")


def test_a_repro_against_a_real_mlflow_server_logs_what_the_local_store_logs_and_survives_it_stopping(lab, tmp_path):
    from src.config import load_params
    from src.tracking import EXPERIMENT_KIND, flatten

    t0 = time.perf_counter()
    try:
        cm = mlflow_server(tmp_path / "server")
        server = cm.__enter__()
    except Unavailable as err:
        pytest.skip(f"mlflow server cannot start here: {err}")
    try:
        started = time.perf_counter() - t0
        # The same stages again, forced, now logging to the server (weights and metrics are bit-identical reruns).
        out = _dvc("repro", "-f", "-s", *SERVER_STAGES, cwd=lab, warm=True, MLFLOW_TRACKING_URI=server.uri, SR4IR_PIPELINE_RUN="server")
        assert "MLflow tracking disabled" not in out
        remote, local = _client(server.uri), _client(f"sqlite:///{lab / 'mlflow.db'}")
        parent, got = _children(remote, "server")
        _, ref = _children(local, FIRST_KEY)  # the study's first repro, logged to the local mlflow.db
        assert set(got) == set(SERVER_STAGES.values())
        assert remote.get_experiment_by_name("sr4ir").tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"]
        assert parent.info.end_time - parent.info.start_time >= max(r.info.end_time for r in got.values()) - min(
            r.info.start_time for r in got.values())  # the parent spans its stages
        current = {k: str(v) for k, v in flatten(load_params(lab / "params.yaml").with_seed(0).model_dump(mode="json")).items()}
        for name, run in got.items():
            before = ref[name]
            assert run.info.status == "FINISHED"
            assert run.data.params == {k: v[:6000] for k, v in current.items()}  # every param, flattened, as logged locally
            assert set(run.data.params) == set(before.data.params)
            keep = lambda tags: {k: v for k, v in tags.items() if not k.startswith(VOLATILE_TAGS)}  # noqa: E731
            assert keep(run.data.tags) == keep(before.data.tags)  # task, method, seed, the weights' DVC md5s...
            metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("time/")}
            assert metrics == pytest.approx({k: v for k, v in before.data.metrics.items() if not k.startswith("time/")})
            assert _artifacts(remote, run.info.run_id) == _artifacts(local, before.info.run_id) != set()
        history = [m.step for m in remote.get_metric_history(got["train/cls/h2t/seed0"].info.run_id, "val/top1")]
        assert history == [1, 2]
        artifact = next(iter(_artifacts(remote, got["evaluate/cls/h2t/seed0"].info.run_id)))
        assert (server.root / "artifacts").is_dir() and any((server.root / "artifacts").rglob(Path(artifact).name))

        # The server goes away while a stage runs: one warning, the stage finishes, its outputs are written.
        stage = "train@det-h2t-0"  # the slowest training stage: long enough to be caught running
        db = server.root / "server.db"
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", stage], cwd=lab, text=True,
                                env=_env(MLFLOW_TRACKING_URI=server.uri, SR4IR_PIPELINE_RUN="server-stops"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        try:
            while True:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                    running = con.execute("SELECT COUNT(*) FROM runs WHERE name = 'train/det/h2t/seed0' AND status = 'RUNNING'"
                                          ).fetchone()[0]
                if running:
                    break
                assert proc.poll() is None and time.time() < deadline, "the stage's run never appeared on the server"
                time.sleep(0.05)
            server.stop()
            output, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, output[-3000:]
        assert output.count("MLflow tracking disabled for this process") == 1, output[-3000:]
        assert json.loads((lab / "metrics/train/seed0/det/h2t.json").read_text())
        assert "up to date" in _dvc("status", stage, cwd=lab)
    finally:
        cm.__exit__(None, None, None)
    print(f"\nmlflow server: started in {started:.1f} s; test {time.perf_counter() - t0:.1f} s")


# ---------------------------------------------------------------------------------------------------
# 5. A DVC remote


def test_another_machine_pulls_models_and_metrics_from_a_dvc_remote_and_has_nothing_to_run(lab, tmp_path):
    store = tmp_path / "remote"
    config = (lab / ".dvc" / "config").read_text()
    # --local: the remote's path is this machine's, so it goes to .dvc/config.local (git-ignored), never .dvc/config.
    _dvc("remote", "add", "--local", "-d", "store", str(store), cwd=lab)
    assert (lab / ".dvc" / "config").read_text() == config and str(store) not in config
    out = _dvc("push", cwd=lab)
    assert any(store.rglob("*")), out
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(lab), str(clone)], tmp_path)
    assert not (clone / "models").exists() and not (clone / "data").exists()
    _dvc("remote", "add", "--local", "-d", "store", str(store), cwd=clone)
    _dvc("pull", cwd=clone)
    assert "up to date" in _dvc("status", cwd=clone)
    out = _dvc("repro", cwd=clone, MLFLOW_TRACKING_URI=f"sqlite:///{clone / 'mlflow.db'}")
    assert "Running stage" not in out, out
    for rel in ("models/seed0/cls/sr4ir/sr.pt", "models/seed1/det/h2t/rec.pt", "models/seed1/sr_pretrained.pt",
                "metrics/eval/seed0/seg/sr4ir.json", "scores/seed1/cls/t2s.npz"):
        assert (clone / rel).read_bytes() == (lab / rel).read_bytes(), rel
    assert (clone / ".dvc" / "config").read_text() == config  # nothing machine-specific was committed


# ---------------------------------------------------------------------------------------------------
# 6. Parallel experiments: DVC's own queue


def test_two_queued_experiments_run_side_by_side_each_under_its_own_mlflow_parent(lab):
    weights = ("0.25", "4.0")
    target = "evaluate@cls-sr4ir-0"  # the experiment's stages: SR4IR on cls (seed 0) and its evaluation
    for w in weights:
        _dvc("exp", "run", "--queue", "-S", f"train.sr4ir.tdp_weight={w}", target, cwd=lab)
    t0 = time.time()
    # No MLFLOW_TRACKING_URI: the stages run in .dvc/tmp/exps/<tmp>, and log to the repository's mlflow.db.
    _dvc("queue", "start", "--jobs", "2", cwd=lab)
    try:
        deadline = time.time() + 480
        while True:
            status = _dvc("queue", "status", cwd=lab)
            done = status.count("Success")
            assert "Failed" not in status, status
            if done == 2:
                break
            assert time.time() < deadline, status
            time.sleep(2)
    finally:
        _dvc("queue", "stop", "--kill", cwd=lab, check=False)
    client = _client(f"sqlite:///{lab / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr4ir")
    parents = [r for r in client.search_runs([exp.experiment_id], max_results=2000)
               if "mlflow.parentRunId" not in r.data.tags and r.info.start_time >= (t0 - 60) * 1000]
    assert len(parents) == 2, [p.info.run_name for p in parents]
    by_weight = {}
    for p in parents:
        kids = [r for r in client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{p.info.run_id}'")]
        assert {r.info.run_name for r in kids} == {"train/cls/sr4ir/seed0", "evaluate/cls/sr4ir/seed0"}
        (weight,) = {r.data.params["train.sr4ir.tdp_weight"] for r in kids}
        assert {r.data.tags["dvc.exp_name"] for r in kids} == {p.data.tags["dvc.exp_name"]} != {""}
        by_weight[str(float(weight))] = p
    assert set(by_weight) == {str(float(w)) for w in weights}
    a, b = (by_weight[str(float(w))].info for w in weights)
    assert a.start_time < b.end_time and b.start_time < a.end_time  # side by side: the two runs overlap in time
    assert len(_dvc("exp", "list", "--name-only", cwd=lab).split()) == 2
