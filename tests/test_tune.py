"""`python -m src.tune`: resume, workers, failures, pruning, --apply, MLflow nesting, on tiny data."""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import shutil
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from src import tune
from src.config import parse_params
from src.experiment import TrainResult
from src.models.sr import build_sr
from src.tracking import Tracker
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
TINY_TUNE = {"epochs": 2, "warmup_epochs": 1, "data_fraction": 1.0,
             "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 2}}
# Not 0, 1, 2 and not sorted: --seeds N must take the first N of these, not seed, seed + 1, ...
SEEDS = [5, 2, 9]


@pytest.fixture()
def env(tmp_path, tiny_data, tiny_params):
    raw, lr = tiny_data
    params = {k: v for k, v in copy.deepcopy(TINY).items() if k != "seed"} | {"seeds": SEEDS, "tune": TINY_TUNE}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    # One pretrained SR per seed, as pretrain_sr@<seed> writes them (models/seed<N>/sr_pretrained.pt).
    sr_init = str(tmp_path / "models" / "seed{seed}" / "sr_pretrained.pt")
    for seed in SEEDS:
        torch.manual_seed(seed)
        file = Path(sr_init.replace("{seed}", str(seed)))
        file.parent.mkdir(parents=True)
        torch.save(build_sr(tiny_params.sr, tiny_params.degrade.scale).state_dict(), file)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["--params", str(path), "--raw", str(raw), "--lr", str(lr), "--sr-init", sr_init,
            "--storage", storage, "--out", str(tmp_path / "out"), "--no-mlflow"]
    return argparse.Namespace(args=args, storage=storage, tmp=tmp_path, params=path, raw=raw, lr=lr, sr_init=sr_init)


def _sr_file(env, seed: int) -> Path:
    return Path(env.sr_init.replace("{seed}", str(seed)))


def _heartbeats(storage: str) -> int:
    """Heartbeats recorded in the study database (Optuna's RDB schema: table trial_heartbeats)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(storage.removeprefix("sqlite:///"))) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def _study(storage: str, name: str = "sr4ir-cls-x4-synthetic") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def test_three_trials_then_resume_to_six(env):
    assert tune.main([*env.args, "--n-trials", "3"]) == 0
    study = _study(env.storage)
    assert len(study.trials) == 3
    assert study.trials[0].params == tune.PAPER_DEFAULT  # the paper's setting runs first
    out = env.tmp / "out"
    summary = yaml.safe_load((out / "best_params.yaml").read_text())
    assert summary["n_trials"] == 3 and set(summary["best"][0]["params"]) == {"tdp_weight", "cqmix_p"}
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 4
    assert (out / "history.png").stat().st_size > 1000
    assert tune.main([*env.args, "--n-trials", "3"]) == 0
    study = _study(env.storage)
    assert len(study.trials) == 6
    assert sum(t.params == tune.PAPER_DEFAULT for t in study.trials) == 1  # not queued again on resume


def test_two_workers_share_one_study_exactly(env):
    assert tune.main([*env.args, "--n-trials", "4", "--workers", "2"]) == 0
    trials = _study(env.storage).trials
    assert len(trials) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)


def test_max_trials_caps_the_study(env):
    assert tune.main([*env.args, "--n-trials", "5", "--max-trials", "2"]) == 0
    assert len(_study(env.storage).trials) == 2


def _objective(env, train_fn, objectives=("task",), seeds=1):
    raw = yaml.safe_load(env.params.read_text())
    paths = argparse.Namespace(raw=env.raw, lr=env.lr, sr_init=env.sr_init)
    return tune.Objective(raw, "cls", list(objectives), paths, Tracker("x", enabled=False), None, train_fn, seeds=seeds)


def test_a_nan_trial_is_marked_failed_and_the_study_goes_on(env):
    params = parse_params(yaml.safe_load(env.params.read_text()))
    study = tune.open_study("nan", tune.storage_for(env.storage), params, 1)

    def train_fn(p, *args, callbacks=(), **kwargs):
        if p.train.sr4ir.tdp_weight > 5:
            raise FloatingPointError("non-finite SR4IR phase-1 loss (nan)")
        return TrainResult({}, [{"epoch": 1, "val/top1": 50.0, "val/psnr": 20.0}], 0.0)

    study.enqueue_trial({"tdp_weight": 1.0, "cqmix_p": 0.5})
    study.enqueue_trial({"tdp_weight": 9.0, "cqmix_p": 0.5})
    study.enqueue_trial({"tdp_weight": 2.0, "cqmix_p": 0.5})
    tune.optimize(study, _objective(env, train_fn), 3, None)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "nan" in study.trials[1].user_attrs["fail_reason"]


@pytest.mark.parametrize("seeds", [1, 3])
def test_seeds_score_a_trial_by_their_mean_and_say_whether_the_best_beats_the_paper_setting(env, seeds):
    params = parse_params(yaml.safe_load(env.params.read_text()))
    study = tune.open_study(f"seeds{seeds}", tune.storage_for(env.storage), params, 1)
    seen = []

    def train_fn(p, *args, callbacks=(), sr_init=None, **kwargs):
        seen.append((p.train.sr4ir.cqmix_p, p.seed, sr_init))
        k = SEEDS.index(p.seed)  # 0, 1, 2: the seed's place in params.yaml seeds
        top1 = 50.0 + k if p.train.sr4ir.cqmix_p == 0.5 else 60.0 + 0.5 * k  # +10, +9.5, +9 over the paper's
        return TrainResult({}, [{"epoch": 1, "val/top1": top1, "val/psnr": 20.0 + k}], 0.0)

    study.enqueue_trial(tune.PAPER_DEFAULT)
    study.enqueue_trial({"tdp_weight": 1.0, "cqmix_p": 0.2})
    tune.optimize(study, _objective(env, train_fn, seeds=seeds), 2, None)
    # The first N of params.yaml seeds, the same for every trial (so they pair), each from its own pretrained SR.
    assert seen == [(p, s, _sr_file(env, s)) for p in (0.5, 0.2) for s in SEEDS[:seeds]]
    paper, best = study.trials
    assert paper.value == pytest.approx(50.0 + (seeds - 1) / 2) and best.value == pytest.approx(60.0 + (seeds - 1) / 4)
    assert paper.user_attrs["psnr"] == pytest.approx(20.0 + (seeds - 1) / 2)
    vs = tune.against_paper_setting(study)
    if seeds == 1:
        assert "seed_values" not in best.user_attrs
        assert vs["verdict"] == "not resolved" and "one seed per trial" in vs["why"]
    else:
        assert best.user_attrs["seed_values"] == [60.0, 60.5, 61.0] and best.user_attrs["seed_sd"] == pytest.approx(0.5)
        assert vs["difference"] == pytest.approx(9.5) and vs["n_seeds"] == 3 and vs["verdict"] == "holds"
        assert vs["ci95"][0] > 0


def test_pruning_stops_an_obviously_bad_trial(env):
    params = parse_params(yaml.safe_load(env.params.read_text()))
    study = tune.open_study("prune", tune.storage_for(env.storage), params, 1)
    epochs_run = []

    def train_fn(p, *args, callbacks=(), **kwargs):
        good = p.train.sr4ir.cqmix_p < 0.9
        history = []
        for epoch in range(1, 5):
            record = {"epoch": epoch, "val/top1": 80.0 + epoch if good else 5.0, "val/psnr": 20.0}
            history.append(record)
            epochs_run.append((good, epoch))
            for cb in callbacks:
                cb.on_epoch_end(epoch, record)
        return TrainResult({}, history, 0.0)

    for p in (0.1, 0.2, 0.95):
        study.enqueue_trial({"tdp_weight": 1.0, "cqmix_p": p})
    tune.optimize(study, _objective(env, train_fn), 3, None)
    assert [t.state for t in study.trials][-1] == optuna.trial.TrialState.PRUNED
    assert max(e for good, e in epochs_run if not good) == 2  # judged right after the warm-up step, not later


def test_the_tuning_budget_sets_a_trials_epochs_whatever_the_tasks_own():
    """A trial runs tune.epochs even on a task whose own epochs differ (the embedded cls.epochs: 8)."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert parse_params(raw).train_epochs("cls") == (8, "cls.epochs")
    trial = tune.trial_params(raw, "cls", {"tdp_weight": 0.5, "cqmix_p": 0.5})
    assert trial.train_epochs("cls") == (raw["tune"]["epochs"], "train.epochs")
    assert trial.cls.optim == parse_params(raw).cls.optim  # the rest of the section is the study's


def test_apply_changes_exactly_the_two_params_and_keeps_comments(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    before = path.read_text()
    changed = tune.apply_best(path, {"tdp_weight": 0.37, "cqmix_p": 0.81}, "cls")
    after = path.read_text()
    assert changed == ["train.sr4ir.tdp_weight", "train.sr4ir.cqmix_p"]
    diff = [l for l in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    assert sorted(diff) == sorted(["-    tdp_weight: 1.0", "+    tdp_weight: 0.37", "-    cqmix_p: 0.5", "+    cqmix_p: 0.81"])
    new = parse_params(yaml.safe_load(after))
    assert new.train.sr4ir.tdp_weight == 0.37 and new.train.sr4ir.cqmix_p == 0.81


def test_apply_after_a_study_and_bad_flags(env):
    assert tune.main([*env.args, "--n-trials", "1", "--apply"]) == 0
    assert parse_params(yaml.safe_load(env.params.read_text())).train.sr4ir.tdp_weight == 1.0  # only trial = default
    assert tune.main([*env.args, "--n-trials", "-1"]) == 2
    assert tune.main([*env.args, "--n-trials", "1", "--sr-init", str(env.tmp / "missing.pt")]) == 2


def test_seeds_are_the_first_of_params_seeds_each_from_its_own_pretrained_sr(env, monkeypatch):
    from src import experiment

    assert tune.trial_seeds(parse_params(yaml.safe_load(env.params.read_text())), 2) == [5, 2]
    assert tune.sr_init_for("models/seed{seed}/sr_pretrained.pt", 9) == Path("models/seed9/sr_pretrained.pt")
    assert tune.sr_init_for(lambda s: f"w{s}.pt", 2) == Path("w2.pt")
    assert tune.sr_init_for("one.pt", 5) == Path("one.pt")  # no {seed}: one file for every seed
    seen = []
    real = experiment.train_method

    def spy(params, task, method, raw, lr, sr_init=None, **kwargs):
        seen.append((params.seed, sr_init))
        return real(params, task, method, raw, lr, sr_init=sr_init, **kwargs)

    monkeypatch.setattr(tune, "train_method", spy)  # what main()'s Objective trains with
    assert tune.main([*env.args, "--n-trials", "1", "--seeds", "2"]) == 0
    assert seen == [(5, _sr_file(env, 5)), (2, _sr_file(env, 2))]
    assert len(_study(env.storage).trials[0].user_attrs["seed_values"]) == 2


def test_more_seeds_than_params_lists_or_a_missing_seeds_sr_fail_in_one_line(env, capsys):
    assert tune.main([*env.args, "--n-trials", "1", "--seeds", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --seeds 4: params.yaml seeds lists 3 seed(s) [5, 2, 9]")
    _sr_file(env, 2).unlink()
    assert tune.main([*env.args, "--n-trials", "1", "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {_sr_file(env, 2)}: missing; run `dvc repro pretrain_sr@2` first (tuning starts from its output)\n"
    assert tune.main([*env.args, "--n-trials", "1", "--seeds", "1"]) == 0  # seed 5 alone needs only its own


def test_two_objectives_and_mlflow_nesting(env, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{env.tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = [a for a in env.args if a != "--no-mlflow"]
    assert tune.main([*args, "--n-trials", "2", "--objectives", "task,psnr"]) == 0
    summary = yaml.safe_load((env.tmp / "out" / "best_params.yaml").read_text())
    assert summary["objectives"] == ["task", "psnr"] and summary["pareto_front"]
    assert (env.tmp / "out" / "pareto_front.png").exists()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sr4ir-tune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    assert all(r.data.tags["optuna.state"] == "COMPLETE" and "tdp_weight" in r.data.params for r in children)
    history = client.get_metric_history(children[0].info.run_id, "val/top1")
    assert [m.step for m in history] == [1, 2]  # per-epoch metrics


def test_unreachable_tracking_server_never_stops_a_trial(env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    args = [a for a in env.args if a != "--no-mlflow"]
    assert tune.main([*args, "--n-trials", "1"]) == 0
    assert _study(env.storage).trials[0].state == optuna.trial.TrialState.COMPLETE


def test_a_killed_workers_trial_is_failed_and_retried_on_the_next_start(env):
    import signal
    import subprocess
    import sys
    import time

    params = yaml.safe_load(env.params.read_text())
    params["tune"]["epochs"] = 8  # long enough to be caught running
    env.params.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "src.tune", *env.args, "--heartbeat", "1"]
    proc = subprocess.Popen([*cmd, "--n-trials", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        # Wait until the trial is running and has beaten at least once (Optuna judges staleness only by a
        # recorded heartbeat: a worker killed before its first one leaves a trial nothing can fail), then kill
        # the worker without warning.
        while time.time() < deadline:
            try:
                trials = _study(env.storage).trials
            except KeyError:  # the study is not created yet
                trials = []
            # ...and has its parameters: a trial killed before them is retried with freshly sampled ones.
            if trials and trials[0].state == optuna.trial.TrialState.RUNNING and _heartbeats(env.storage) \
                    and {"tdp_weight", "cqmix_p"} <= set(trials[0].params):
                break
            assert proc.poll() is None, "the worker finished before it could be killed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _study(env.storage).trials[0].state == optuna.trial.TrialState.RUNNING  # left behind
    time.sleep(4)  # more than 3 missed heartbeats
    params["tune"]["epochs"] = 2
    env.params.write_text(yaml.safe_dump(params))
    assert tune.main([*env.args, "--heartbeat", "1", "--n-trials", "1"]) == 0
    trials = _study(env.storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials[1:] if t.params == trials[0].params]
    assert retried and retried[0].state == optuna.trial.TrialState.COMPLETE
