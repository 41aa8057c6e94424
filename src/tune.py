"""Tune SR4IR's TDP weight and CQMix patch-mix ratio with Optuna.

Each trial trains SR4IR on a shortened budget (the ``tune:`` section of params.yaml: epochs, TDP
warm-up, share of the train split) from the pretrained SR network, reports the validation task metric
after every epoch, and may be pruned by a median pruner once the TDP warm-up has passed. The first
trial of a new study is the paper's setting (TDP weight 1, p = 0.5), so the study can only match or
beat it.

The study lives in an Optuna storage: ``sqlite:///optuna.db`` by default (its own file, never MLflow's),
or any URL from --storage / OPTUNA_STORAGE (PostgreSQL for several machines). Running the same command
again resumes the study and adds --n-trials trials. --workers K runs K processes on one storage and
splits the trials between them exactly; processes started by hand (same storage and study) share the
study too, and --max-trials caps the study's total. Trials of a killed worker are failed and retried
once when a worker next starts (heartbeats). A trial whose loss turns NaN, or that runs out of memory,
is recorded as failed with its reason and the study goes on.

--seeds N trains every trial with the same N seeds, the first N of ``seeds`` in params.yaml, each from that
seed's own pretrained SR network (--sr-init, ``{seed}`` filled in: models/seed<N>/sr_pretrained.pt, the output of
`dvc repro pretrain_sr@<N>`), and scores their mean; the summary then says whether the best trial beats the
paper's setting beyond that noise (paired 95 % t-interval over the seeds, src/stats.py); with one seed it says
the difference cannot be told from noise.

Outputs in reports/tune/<task>/: best_params.yaml, trials.csv and figures (optimisation history,
parameter importances, the metric over the two parameters; the Pareto front for --objectives task,psnr).
--apply writes the best values into params.yaml (comments and order kept), so the next `dvc repro`
retrains SR4IR with them. Each trial is an MLflow run nested under one run for the study.

Prerequisite: `dvc repro pretrain_sr@<seed>` for each seed a trial trains with (the data and the pretrained SR
network; `dvc repro pretrain_sr` makes every seed's).
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from src.config import ConfigError, Params, load_params, parse_params, read_params_file
from src.experiment import TrainResult, train_method
from src.stats import NOT_RESOLVED, mean_interval, paired_difference, verdict
from src.tasks import TASKS
from src.tracking import EpochLogger, Tracker
from src.utils import atomic_path, write_text_atomic

log = logging.getLogger("src.tune")

PAPER_DEFAULT = {"tdp_weight": 1.0, "cqmix_p": 0.5}
TUNED_KEYS = {"tdp_weight": ("train", "sr4ir", "tdp_weight"), "cqmix_p": ("train", "sr4ir", "cqmix_p"),
              "cqmix_grid": ("cls", "cqmix_grid")}

TrainFn = Callable[..., TrainResult]
SrInit = str | Path | Callable[[int], Path]

SEED_FIELD = "{seed}"
DEFAULT_SR_INIT = "models/seed{seed}/sr_pretrained.pt"  # pipeline/paths.py sr_pretrained(seed); src/ cannot import it


# ---------------------------------------------------------------------------------------------------
# One trial


def suggest(trial: optuna.Trial, params: Params) -> dict[str, Any]:
    cfg = params.tune
    values: dict[str, Any] = {
        "tdp_weight": trial.suggest_float("tdp_weight", cfg.tdp_weight.low, cfg.tdp_weight.high, log=cfg.tdp_weight.log),
        "cqmix_p": trial.suggest_float("cqmix_p", cfg.cqmix_p.low, cfg.cqmix_p.high, log=cfg.cqmix_p.log),
    }
    if cfg.cqmix_grid:
        values["cqmix_grid"] = trial.suggest_categorical("cqmix_grid", cfg.cqmix_grid)
    return values


def trial_params(raw: dict, task: str, values: dict[str, Any]) -> Params:
    """params.yaml with the trial's values and the tuning budget, re-validated as a whole."""
    merged = copy.deepcopy(raw)
    tune = merged.get("tune", {})
    merged.setdefault("train", {})
    merged["train"]["epochs"] = tune.get("epochs", Params().tune.epochs)
    merged.setdefault(task, {})["epochs"] = 0  # the tuning budget, not the task's own epochs, sets the trial's length
    merged["train"].setdefault("sr4ir", {})["warmup_epochs"] = tune.get("warmup_epochs", Params().tune.warmup_epochs)
    for name, value in values.items():
        section, *path = TUNED_KEYS[name]
        if section == "cls":
            section = task
        node = merged.setdefault(section, {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return parse_params(merged, "params.yaml (with trial values)")


class PruneCallback:
    """Reports the validation metric after each epoch; raises ``TrialPruned`` when the pruner says so."""

    def __init__(self, trial: optuna.Trial, key: str):
        self.trial, self.key = trial, key

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.key, float("nan"))
        if math.isfinite(value):
            self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({self.key} = {value:.2f})")


def trial_seeds(params: Params, n: int) -> list[int]:
    """The seeds a trial trains with: the first ``n`` of params.yaml ``seeds``, the seeds the study itself trains
    (the same for every trial, so trials pair)."""
    if not 1 <= n <= len(params.seeds):
        raise ConfigError(f"--seeds {n}: params.yaml seeds lists {len(params.seeds)} seed(s) {params.seeds}; "
                          f"use --seeds 1 to {len(params.seeds)}, or add seeds there (each needs `dvc repro pretrain_sr@<seed>`)")
    return list(params.seeds[:n])


def sr_init_for(sr_init: SrInit, seed: int) -> Path:
    """The pretrained SR network seed ``seed`` starts from: ``sr_init`` with ``{seed}`` filled in (a path without
    it is the same file for every seed), or ``sr_init(seed)`` when it is a callable."""
    if callable(sr_init):
        return Path(sr_init(seed))
    return Path(str(sr_init).replace(SEED_FIELD, str(seed)))


class Objective:
    """One trial: SR4IR on the tuning budget for each of the first ``seeds`` of params.yaml ``seeds`` (each from
    ``paths.sr_init`` for that seed, see ``sr_init_for``); the score is the mean over them."""

    def __init__(self, raw: dict, task: str, objectives: Sequence[str], paths: argparse.Namespace,
                 tracker: Tracker, parent_run: str | None, train_fn: TrainFn | None = None, seeds: int = 1):
        self.raw, self.task, self.objectives, self.paths = raw, task, list(objectives), paths
        self.tracker, self.parent_run, self.train_fn = tracker, parent_run, train_fn or train_method
        self.primary = TASKS[task].primary_metric
        self.seeds = seeds

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        params = trial_params(self.raw, self.task, suggest(trial, parse_params(self.raw)))
        run = self.tracker.start_run(f"trial-{trial.number}", tags={"optuna.trial": str(trial.number)},
                                     params=trial.params, parent_run_id=self.parent_run)
        trial.set_user_attr("mlflow_run_id", run or "")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which machine and process ran it
        t0 = time.perf_counter()
        metrics, psnrs = [], []
        try:
            for k, seed in enumerate(trial_seeds(params, self.seeds)):
                metric, psnr = self._one_seed(trial, run, params.with_seed(seed), first=k == 0)
                metrics.append(metric)
                psnrs.append(psnr)
        except optuna.TrialPruned:
            self.tracker.set_tags(run, {"optuna.state": "PRUNED"})
            self.tracker.end_run(run, "KILLED")
            raise
        except (FloatingPointError, torch.OutOfMemoryError) as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            self.tracker.set_tags(run, {"optuna.state": "FAIL", "fail_reason": str(err)[:500]})
            self.tracker.end_run(run, "FAILED")
            raise
        metric, psnr = math.fsum(metrics) / len(metrics), math.fsum(psnrs) / len(psnrs)
        if len(metrics) > 1:
            trial.set_user_attr("seed_values", metrics)
            trial.set_user_attr("seed_sd", mean_interval(metrics).sd)
        trial.set_user_attr("psnr", psnr)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        self.tracker.set_tags(run, {"optuna.state": "COMPLETE"})
        self.tracker.end_run(run, "FINISHED")
        return (metric, psnr) if len(self.objectives) == 2 else metric

    def _one_seed(self, trial: optuna.Trial, run: str | None, params: Params, first: bool) -> tuple[float, float]:
        """The last epoch's val metric and PSNR of one seed. One seed: the trial's own run holds the curves;
        several: a child run per seed. The first seed's curve alone feeds the pruner (one report per epoch)."""
        seed_run = run if self.seeds == 1 else self.tracker.start_run(
            f"trial-{trial.number}/seed-{params.seed}", tags={"optuna.trial": str(trial.number), "seed": str(params.seed)},
            params={"seed": params.seed}, parent_run_id=run)
        callbacks: list[Any] = [EpochLogger(self.tracker, seed_run)]
        if len(self.objectives) == 1 and first:  # Optuna cannot prune multi-objective studies
            callbacks.append(PruneCallback(trial, f"val/{self.primary}"))
        status = "KILLED"
        try:
            result = self.train_fn(params, self.task, "sr4ir", self.paths.raw, self.paths.lr,
                                   sr_init=sr_init_for(self.paths.sr_init, params.seed), callbacks=callbacks,
                                   train_fraction=params.tune.data_fraction,
                                   monitor_fraction=1.0)  # the objective is the last epoch's score on the whole split
            status = "FINISHED"
        finally:
            if seed_run != run:
                self.tracker.end_run(seed_run, status)
        last = result.history[-1]
        return last[f"val/{self.primary}"], last.get("val/psnr", float("nan"))


# ---------------------------------------------------------------------------------------------------
# The study


def storage_for(url: str, heartbeat: int = 20) -> optuna.storages.BaseStorage:
    """RDB storages get heartbeats: a killed worker's trial (silent for 3 heartbeats) is failed, then retried
    once, when a worker next starts."""
    try:
        if url.startswith(("sqlite", "postgresql", "mysql")):
            engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        return optuna.storages.get_storage(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy, a missing driver, a bad URL: one line, not a traceback
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(f"--storage {_shown(url)}: cannot open the Optuna storage ({type(err).__name__}: "
                          f"{first.strip()}); check the URL, the database server and its driver") from None


def _shown(url: str) -> str:
    """The storage URL without a password (``user:secret@host`` -> ``user:***@host``)."""
    head, sep, tail = url.rpartition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}" if ":" in creds else url


def open_study(name: str, storage: optuna.storages.BaseStorage, params: Params, n_objectives: int) -> optuna.Study:
    cfg = params.tune
    sampler = optuna.samplers.TPESampler(seed=cfg.sampler_seed, multivariate=True, constant_liar=True,
                                         n_startup_trials=5)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if cfg.pruner.name == "median" and n_objectives == 1:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner.n_startup_trials, n_warmup_steps=cfg.pruner.n_warmup_steps)
    directions = ["maximize"] * n_objectives
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                directions=directions, load_if_exists=True)
    if len(study.directions) != n_objectives:
        raise ConfigError(f"study {name!r} exists with {len(study.directions)} objective(s); "
                          f"use another --study-name for {n_objectives}")
    return study


def seed_paper_default(study: optuna.Study, params: Params) -> None:
    """Queue the paper's setting as the study's first trial (only for a new study)."""
    if study.trials:
        return
    values = dict(PAPER_DEFAULT)
    if params.tune.cqmix_grid:
        values["cqmix_grid"] = params.tune.cqmix_grid[0] if 4 not in params.tune.cqmix_grid else 4
    study.enqueue_trial(values, skip_if_exists=True)
    study.set_user_attr("optuna_version", optuna.__version__)


def log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial, so a long study shows where it is."""
    value = "" if trial.values is None else " ".join(f"{v:.2f}" for v in trial.values)
    reason = trial.user_attrs.get("fail_reason", "")
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    log.info("trial %d %s %s %s (%.0f s) %s", trial.number, trial.state.name, value,
             {k: round(v, 4) if isinstance(v, float) else v for k, v in trial.params.items()}, seconds, reason)


def optimize(study: optuna.Study, objective: Objective, n_trials: int, max_trials: int | None) -> None:
    callbacks: list[Any] = [log_trial]
    if max_trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(max_trials, states=None))
        done = sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)  # queued ones run below
        n_trials = max(0, min(n_trials, max_trials - done))
    if n_trials:
        study.optimize(objective, n_trials=n_trials, callbacks=callbacks, gc_after_trial=True,
                       catch=(FloatingPointError, torch.OutOfMemoryError), show_progress_bar=sys.stderr.isatty())


# ---------------------------------------------------------------------------------------------------
# Outputs


def best_values(study: optuna.Study) -> list[dict[str, Any]]:
    """The best trial (single objective) or the Pareto front (two objectives), as plain dicts."""
    trials = [study.best_trial] if len(study.directions) == 1 else study.best_trials
    return [{"trial": t.number, "params": dict(t.params), "values": list(t.values),
             "psnr": t.user_attrs.get("psnr")} for t in trials]


def against_paper_setting(study: optuna.Study) -> dict[str, Any]:
    """Whether the best trial beats the paper's setting (the study's first trial) beyond training noise: the
    paired difference over the seeds both trained with (``--seeds``), its 95 % t-interval and verdict."""
    best = study.best_trial
    paper = next((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                  and all(t.params.get(k) == v for k, v in PAPER_DEFAULT.items())), None)
    if paper is None:
        return {"verdict": NOT_RESOLVED, "why": "the paper's setting has no complete trial"}
    if best.number == paper.number:
        return {"verdict": NOT_RESOLVED, "why": "the paper's setting is the best trial"}
    a, b = best.user_attrs.get("seed_values"), paper.user_attrs.get("seed_values")
    if not a or not b or len(a) != len(b):
        return {"verdict": NOT_RESOLVED, "why": "one seed per trial: a difference cannot be told from training noise "
                                                "(tune with --seeds 3 or more)"}
    diff = paired_difference(a, b)
    return {"difference": round(diff.mean, 3), "ci95": [round(diff.low, 3), round(diff.high, 3)], "n_seeds": diff.n,
            "verdict": verdict(diff)}


def write_outputs(study: optuna.Study, out: Path, task: str, objectives: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    df = study.trials_dataframe(attrs=("number", "value" if len(objectives) == 1 else "values", "params", "state",
                                       "duration", "user_attrs"))
    write_text_atomic(out / "trials.csv", df.to_csv(index=False))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": study.study_name, "task": task, "objectives": list(objectives),
                               "n_trials": len(study.trials),
                               "states": {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState
                                          if any(t.state == s for t in study.trials)}}
    if complete:
        summary["best" if len(objectives) == 1 else "pareto_front"] = best_values(study)
        if len(objectives) == 1:
            summary["best_vs_paper_setting"] = against_paper_setting(study)
    write_text_atomic(out / "best_params.yaml", yaml.safe_dump(summary, sort_keys=False))

    plots: dict[str, Callable[[], Any]] = {}
    if len(objectives) == 1:
        plots["history.png"] = lambda: ovm.plot_optimization_history(study)
        plots["importances.png"] = lambda: ovm.plot_param_importances(study)
        plots["metric_over_params.png"] = lambda: ovm.plot_contour(study, params=["tdp_weight", "cqmix_p"])
        plots["intermediate.png"] = lambda: ovm.plot_intermediate_values(study)
    else:
        plots["pareto_front.png"] = lambda: ovm.plot_pareto_front(study, target_names=[f"val {objectives[0]}", "val PSNR"])
    for name, make in plots.items():
        try:
            ax = make()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            with atomic_path(out / name) as tmp:
                fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
            plt.close(fig)
        except Exception as err:  # noqa: BLE001 - e.g. importances need two complete trials with varied params
            log.info("skipped %s: %s", name, err)


def apply_best(params_path: Path, values: dict[str, Any], task: str) -> list[str]:
    """Write ``values`` into params.yaml in place, keeping comments, order and every other value."""
    from ruamel.yaml import YAML

    yml = YAML()
    yml.preserve_quotes = True
    yml.width = 4096  # never re-wrap the flow-style lines
    doc = yml.load(params_path.read_text())
    changed = []
    for name, value in values.items():
        section, *path = TUNED_KEYS[name]
        node = doc[task if section == "cls" else section]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        changed.append(".".join([task if section == "cls" else section, *path]))
    buf = io.StringIO()
    yml.dump(doc, buf)
    parse_params(yaml.safe_load(buf.getvalue()), params_path)  # never write an invalid params file
    write_text_atomic(params_path, buf.getvalue())
    return changed


# ---------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="cls", help="task to tune SR4IR on (default: cls)")
    p.add_argument("--n-trials", type=int, default=0, metavar="N",
                   help="trials to add to the study in this command (0: only write outputs / --apply)")
    p.add_argument("--objectives", default="task", choices=["task", "task,psnr"],
                   help="'task': maximise the validation task metric (pruning on); 'task,psnr': two objectives, "
                        "Pareto front of task metric against PSNR (no pruning)")
    p.add_argument("--storage", default=os.environ.get("OPTUNA_STORAGE", "sqlite:///optuna.db"),
                   help="Optuna storage URL (env OPTUNA_STORAGE; default sqlite:///optuna.db)")
    p.add_argument("--study-name", default=None, help="default: sr4ir-<task>-x<scale>-<dataset>[-mo]")
    p.add_argument("--workers", type=int, default=1, metavar="K",
                   help="run K worker processes on the storage, splitting --n-trials exactly between them")
    p.add_argument("--max-trials", type=int, default=None, metavar="M",
                   help="cap on the study's total number of trials (for workers started by hand)")
    p.add_argument("--apply", action="store_true", help="write the best values into params.yaml")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--raw", type=Path, default=Path("data/raw"), help="prepared dataset (download stage)")
    p.add_argument("--lr", type=Path, default=Path("data/lr"), help="LR images (degrade stage)")
    p.add_argument("--sr-init", default=DEFAULT_SR_INIT, metavar="PATTERN",
                   help="pretrained SR of each seed, {seed} filled in (stage pretrain_sr@<seed>; default "
                        "models/seed{seed}/sr_pretrained.pt; a path without {seed} serves every seed)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reports/tune/<task>)")
    p.add_argument("--heartbeat", type=int, default=20, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 3 of them is taken "
                        "as killed: failed, and retried once by the next worker to start (default 20)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train each trial with the first N of params.yaml seeds, each from its own pretrained "
                        "SR (--sr-init), and score it by their mean; with N >= 2 best_params.yaml says whether the "
                        "best beats the paper's setting beyond noise (default 1: seeds[0])")
    p.add_argument("--no-mlflow", action="store_true", help="do not log trials to MLflow")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: one of --workers
    return p


def _validate(args: argparse.Namespace, params: Params) -> None:
    if args.n_trials < 0:
        raise ConfigError(f"--n-trials: must be >= 0, got {args.n_trials}")
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat: must be >= 1 second, got {args.heartbeat}")
    if args.workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {args.workers}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {args.seeds}")
    if args.max_trials is not None and args.max_trials < 1:
        raise ConfigError(f"--max-trials: must be >= 1, got {args.max_trials}")
    if args.task not in params.tasks:
        log.info("note: task %s is not in params.yaml tasks %s; tuning it anyway", args.task, params.tasks)
    seeds = trial_seeds(params, args.seeds)  # more --seeds than params.yaml seeds: one line, exit status 2
    if args.n_trials:
        needed = [(args.raw, "download"), (args.lr, "degrade")]
        needed += [(sr_init_for(args.sr_init, seed), f"pretrain_sr@{seed}") for seed in seeds]
        for path, stage in needed:
            if not path.exists():
                raise ConfigError(f"{path}: missing; run `dvc repro {stage}` first (tuning starts from its output)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, matplotlib plots
    try:
        params = load_params(args.params)
        _validate(args, params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    raw = read_params_file(args.params)  # as DVC and load_params read it
    objectives = args.objectives.split(",")
    name = args.study_name or f"sr4ir-{args.task}-x{params.degrade.scale}-{params.data.name}" + ("-mo" if len(objectives) == 2 else "")
    try:
        storage = storage_for(args.storage, args.heartbeat)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    study = open_study(name, storage, params, len(objectives))
    tracker = Tracker("sr4ir-tune", enabled=not args.no_mlflow and args.n_trials > 0)
    study_tags = {"optuna.study_name": name, "optuna.storage": args.storage.split("@")[-1]}
    parent = tracker.find_run(study_tags) if args.worker else None
    if not args.worker:
        seed_paper_default(study, params)
        if args.n_trials:
            parent = tracker.find_run(study_tags) or tracker.start_run(f"study/{name}", tags=study_tags)

    n_left = args.n_trials
    if args.workers > 1 and n_left:
        # Queued trials (the paper's setting, retries) run here first: on SQLite, which has no row locks, two
        # workers starting together could both take the same queued trial.
        queued = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        if queued:
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
            optimize(study, Objective(raw, args.task, objectives, args, tracker, parent, seeds=args.seeds),
                     min(queued, n_left), args.max_trials)
            n_left -= min(queued, n_left)
    if args.workers > 1 and n_left:
        shares = [n_left // args.workers + (i < n_left % args.workers) for i in range(args.workers)]
        base = [a for a in (argv if argv is not None else sys.argv[1:])]
        cmd = [sys.executable, "-m", "src.tune", *_strip(base, {"--workers", "--n-trials", "--apply"}), "--worker",
               "--study-name", name]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // args.workers)))
        procs = [subprocess.Popen([*cmd, "--n-trials", str(n)], env=env) for n in shares if n]
        codes = [p.wait() for p in procs]
        if any(codes):
            print(f"error: a worker exited with {codes}", file=sys.stderr)
            return 1
    elif args.workers == 1 and args.n_trials:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        objective = Objective(raw, args.task, objectives, args, tracker, parent, seeds=args.seeds)
        optimize(study, objective, args.n_trials, args.max_trials)
    if args.worker:
        return 0

    study = optuna.load_study(study_name=name, storage=storage_for(args.storage, args.heartbeat))
    out = args.out or Path("reports/tune") / args.task
    write_outputs(study, out, args.task, objectives)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    log.info("study %s: %d trials (%d complete) -> %s", name, len(study.trials), len(done), out)
    if done and len(objectives) == 1:
        best = study.best_trial
        log.info("best: trial %d, %s = %.2f, params %s", best.number, TASKS[args.task].primary_metric, best.value, best.params)
        vs = against_paper_setting(study)
        log.info("best vs the paper's setting: %s", f"{vs['difference']:+.2f} points, 95 % CI {vs['ci95']}, "
                 f"{vs['verdict']} over {vs['n_seeds']} seeds" if "difference" in vs else f"{vs['verdict']} ({vs['why']})")
    if args.apply:
        if not done or len(objectives) != 1:
            print("error: --apply needs a single-objective study with a complete trial", file=sys.stderr)
            return 2
        changed = apply_best(args.params, study.best_trial.params, args.task)
        log.info("applied to %s: %s (run `dvc repro` to retrain)", args.params, ", ".join(changed))
    return 0


def _strip(argv: list[str], flags: set[str]) -> list[str]:
    """Drop ``flags`` (and their values) from an argument list."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        key = a.split("=", 1)[0]
        if key in flags:
            skip = "=" not in a and key != "--apply"
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
