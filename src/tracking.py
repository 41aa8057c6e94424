"""MLflow at the edge: the only module that imports mlflow.

Runs are created with explicit ids through ``MlflowClient`` (no global "active run"), so parents and
children can live in different processes. The store is ``MLFLOW_TRACKING_URI`` when set, otherwise
``sqlite:///mlflow.db`` in the working directory (the repository root), which is what ``mlflow ui``
opens there with no flags. A tracking failure (server down, database locked) warns once and turns
tracking off for the process; it never stops training, and the DVC metrics files keep every number.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from src.utils import file_md5, outputs_digest

log = logging.getLogger(__name__)


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root(Path.cwd()) / 'mlflow.db'}"


def project_root(cwd: Path) -> Path:
    """``cwd``, or the repository that queued the experiment when ``cwd`` is one of DVC's temporary workspaces
    (`dvc exp run --queue` / `--temp` run stages in ``<repo>/.dvc/tmp/exps/<tmpdir>``, deleted afterwards): its
    runs go to the repository's own ``mlflow.db``, beside every other run."""
    for p in (cwd, *cwd.parents):
        if p.parent.name == "exps" and p.parent.parent.name == "tmp" and p.parent.parent.parent.name == ".dvc":
            return p.parent.parent.parent.parent
    return cwd


# MLflow 3's UI opens an experiment in its GenAI view unless the experiment says what it holds.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    """A thin, failure-tolerant wrapper over ``MlflowClient``; every method returns quietly when disabled."""

    def __init__(self, experiment: str, uri: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.client = None
        self.experiment_id: str | None = None
        if not enabled:
            return
        self._guard(self._connect, experiment, uri or default_uri())

    def _connect(self, experiment: str, uri: str) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # an unreachable server fails fast
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, tags=EXPERIMENT_KIND)
        else:
            self.experiment_id = exp.experiment_id
            for k, v in EXPERIMENT_KIND.items():  # experiments made before the tag existed here
                if exp.tags.get(k) != v:
                    self.client.set_experiment_tag(self.experiment_id, k, v)

    def _guard(self, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop the work
            log.warning("MLflow tracking disabled for this process: %s: %s", type(err).__name__, err)
            self.enabled = False
            return None

    def start_run(self, name: str, tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
                  parent_run_id: str | None = None, start_time: float | None = None) -> str | None:
        """A new run; ``start_time`` (seconds since the epoch) when it began before now."""
        def _start() -> str:
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags,
                                         start_time=None if start_time is None else int(start_time * 1000))
            if params:
                from mlflow.entities import Param

                items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
                for i in range(0, len(items), 100):
                    self.client.log_batch(run.info.run_id, params=items[i:i + 100])
            return run.info.run_id

        return self._guard(_start)

    def find_run(self, tags: Mapping[str, str]) -> str | None:
        """The newest run carrying all ``tags`` (e.g. the parent run of an Optuna study)."""

        def _find() -> str | None:
            query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
            runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1,
                                           order_by=["attributes.start_time DESC"])
            return runs[0].info.run_id if runs else None

        return self._guard(_find)

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int) -> None:
        if run_id is None:
            return

        def _log() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and math.isfinite(float(v))]
            self.client.log_batch(run_id, metrics=items)

        self._guard(_log)

    def log_artifact(self, run_id: str | None, path: Path, folder: str | None = None) -> None:
        if run_id is not None:
            self._guard(self.client.log_artifact, run_id, str(path), folder)

    def set_tags(self, run_id: str | None, tags: Mapping[str, str]) -> None:
        if run_id is not None:
            self._guard(lambda: [self.client.set_tag(run_id, k, str(v)) for k, v in tags.items()])

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id is not None:
            self._guard(self.client.set_terminated, run_id, status)


class EpochLogger:
    """Training callback: per-epoch metrics of one run."""

    def __init__(self, tracker: Tracker, run_id: str | None):
        self.tracker, self.run_id = tracker, run_id

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step=epoch)


# ---------------------------------------------------------------------------------------------------
# DVC stages: one parent run per `dvc repro` / `dvc exp run`, one child run per stage that runs.


def _git(*args: str) -> str:
    import subprocess

    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


PIPELINE_ENV = "SR4IR_PIPELINE_RUN"


def dvc_invocation_key() -> str | None:
    """Identify the pipeline run this stage belongs to, so every stage of it finds the same parent run:
    ``$SR4IR_PIPELINE_RUN`` when set (`make repro` sets it), else '<pid>-<start time>' of the nearest `dvc`
    ancestor process (Linux /proc). None when the stage was started by hand."""
    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    pid = os.getppid()
    for _ in range(10):
        try:
            argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        names = [Path(a).name for a in argv[:3]]
        if "dvc" in names or ("-m" in argv[:3] and "dvc" in argv[:4]):
            return f"{pid}-{fields[19]}"  # field 22 of /proc/<pid>/stat: start time in clock ticks
        ppid = int(fields[1])
        if ppid <= 1:
            return None
        pid = ppid
    return None


class StageRun:
    """The MLflow run of one DVC stage; a no-op shell when tracking is off or failing."""

    def __init__(self, tracker: Tracker, run_id: str | None):
        self.tracker, self.run_id = tracker, run_id
        self.callback = EpochLogger(tracker, run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.tracker.log_artifact(self.run_id, path, folder)

    def tag_identity(self, paths: list[Path]) -> None:
        """Tag the digest of this stage's outputs, so a later cached `dvc repro` can link back to this run."""
        if self.run_id is not None:
            self.tracker.set_tags(self.run_id, {"outputs.md5": outputs_digest(paths)})

    def link_cached(self, stage_outputs: Mapping[str, list[Path]]) -> list[str]:
        """Link every stage that did not run in this pipeline run into this run's parent."""
        parent = self.tracker._guard(lambda: self.tracker.client.get_run(self.run_id).data.tags.get("mlflow.parentRunId")) \
            if self.run_id else None
        return link_cached_stages(self.tracker, parent, stage_outputs)

    def tag_outputs(self, paths: list[Path]) -> None:
        """Model weights stay in DVC: record their md5 (DVC's file hash), not a second copy."""
        self.tracker.set_tags(self.run_id, {f"dvc.md5.{p.name}": file_md5(p) for p in paths if p.is_file()})


def git_tags() -> dict[str, str]:
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = "true" if _git("status", "--porcelain", "--untracked-files=no") else "false"
    return {"git.commit": commit, "git.dirty": dirty, "dvc.exp_name": os.environ.get("DVC_EXP_NAME", "")}


def pipeline_start(key: str | None) -> float | None:
    """When pipeline run ``key`` began (seconds since the epoch): ``$SR4IR_PIPELINE_START`` (`make repro`), else
    the start of the `dvc` process the key names ('<pid>-<start in clock ticks after boot>', Linux /proc)."""
    try:
        if os.environ.get(START_ENV):
            return float(os.environ[START_ENV])
        pid, _, ticks = (key or "").partition("-")
        if not (pid.isdigit() and ticks.isdigit()):
            return None
        btime = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + int(ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return None


def pipeline_parent(tracker: Tracker, key: str, tags: Mapping[str, str] | None = None) -> str | None:
    """Find or create the parent run of pipeline run ``key``. It starts when the pipeline run started; each
    stage that ends (and pipeline.track) moves its end to that moment, so its duration spans the stages."""
    parent = tracker.find_run({"sr4ir.pipeline_key": key})
    if parent is None:
        name = f"pipeline/{time.strftime('%Y-%m-%d %H:%M:%S')}"
        start = pipeline_start(key)
        parent = tracker.start_run(name, tags={"sr4ir.pipeline_key": key, **(tags or git_tags())},
                                   start_time=start if start is not None and start <= time.time() else None)
        tracker.end_run(parent)  # children attach later; the parent holds no work of its own
    return parent


def link_cached_stages(tracker: Tracker, parent: str | None, stage_outputs: Mapping[str, list[Path]]) -> list[str]:
    """Give ``parent`` a child for every stage that did not run in this pipeline run (DVC found it cached),
    tagged with the run that produced its current outputs. Returns the linked stage names."""
    t = tracker
    if parent is None or not t.enabled:
        return []

    def _link() -> list[str]:
        present = {r.info.run_name for r in t.client.search_runs(
            [t.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)}
        linked = []
        for name, paths in stage_outputs.items():
            if name in present or not all(p.exists() for p in paths):
                continue
            digest = outputs_digest(paths)
            found = t.client.search_runs(
                [t.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                filter_string=f"tags.`outputs.md5` = '{digest}' and attributes.run_name = '{name}' "
                              "and attributes.status = 'FINISHED'")
            if not found:
                continue
            orig = found[0]
            keep = {k: v for k, v in orig.data.tags.items() if not k.startswith("mlflow.") and k != "linked_run_id"}
            source = orig.data.tags.get("linked_run_id", orig.info.run_id)  # always point at the run that did the work
            run_id = t.start_run(name, tags={**keep, "dvc.cached": "true", "linked_run_id": source}, parent_run_id=parent)
            t.log_metrics(run_id, orig.data.metrics, step=0)
            t.end_run(run_id)
            linked.append(name)
        return linked

    return t._guard(_link) or []


RESULT_STATS = ("mean", "ci95", "n")


def results_metrics(results_csv: Path) -> dict[str, float]:
    """``<task>/<method>/{mean,ci95,n}`` from the report's results.csv (one row per task, method and seed, the
    aggregates repeated on each seed's row). Empty or non-finite values (ci95 of one seed) are left out."""
    out: dict[str, float] = {}
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            task, method = row.get("task") or "", row.get("method") or ""
            if not task or not method:
                continue
            for stat in RESULT_STATS:
                key = f"{task}/{method}/{stat}"
                try:
                    value = float(row.get(stat) or "nan")
                except ValueError:
                    continue
                if key not in out and math.isfinite(value):
                    out[key] = value
    return out


def log_results(tracker: Tracker, run_id: str | None, results_csv: Path,
                artifacts: Iterable[Path] = (), folder: str | None = "reports") -> dict[str, float]:
    """Log the study's aggregated table to ``run_id`` (the pipeline's parent run): the metrics of
    ``results_metrics`` (step 0) and ``artifacts`` (the report, its HTML, the CSV) that exist, under ``folder``.
    Returns the metrics logged; never raises (an unreadable CSV warns and logs the artifacts alone)."""
    if run_id is None or not tracker.enabled:
        return {}
    try:
        metrics = results_metrics(results_csv)
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        log.warning("%s: not logged to MLflow: %s: %s", results_csv, type(err).__name__, err)
        metrics = {}
    if metrics:
        tracker.log_metrics(run_id, metrics, step=0)
    for path in artifacts:
        if Path(path).is_file():
            tracker.log_artifact(run_id, Path(path), folder)
    return metrics


START_ENV = "SR4IR_PIPELINE_START"  # when the pipeline run began (seconds since the epoch); `make repro` sets it


def pipeline_times(tracker: Tracker, parent: str | None, wall_s: float | None = None) -> dict[str, float] | None:
    """Where the time of pipeline run ``parent`` went, from the stages that ran in it (not those linked as
    cached): ``stages`` that ran, ``loop_s`` (their training and evaluation loops: the math), ``stage_s`` (inside
    their MLflow runs: the loops plus reading data, building networks, writing outputs, logging). With the
    run's ``wall_s`` also ``outside_s`` (process start, imports, MLflow connection, DVC) and ``overhead_pct``
    (everything but the loops, as a share of the wall time), which are logged to ``parent`` as ``time/*``."""
    t = tracker
    if parent is None or not t.enabled:
        return None

    def _times() -> dict[str, float]:
        ran = [r for r in t.client.search_runs([t.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                               max_results=5000) if r.data.tags.get("dvc.cached") != "true"]
        times = {"stages": float(len(ran)),
                 "loop_s": sum(r.data.metrics.get("time/loop_s", 0.0) for r in ran),
                 "stage_s": sum(r.data.metrics.get("time/stage_s", 0.0) for r in ran)}
        if wall_s is not None:
            times |= {"wall_s": wall_s, "outside_s": wall_s - times["stage_s"],
                      "overhead_pct": 100.0 * (wall_s - times["loop_s"]) / wall_s if wall_s > 0 else 0.0}
            t.log_metrics(parent, {f"time/{k}": v for k, v in times.items()}, step=0)
        return times

    return t._guard(_times)


def stage_run(stage: str, params: Any, *, task: str = "", method: str = "", seed: int | None = None,
              experiment: str = "sr4ir"):
    """Context manager: a child run named ``stage`` under this `dvc repro`'s parent run. ``seed``: the seed
    of a per-seed stage (tag and param ``seed``); the stages shared by every seed (download, degrade, report)
    carry neither, so grouping runs by seed in `mlflow ui` shows each seed's stages alone."""
    import contextlib

    @contextlib.contextmanager
    def _cm():
        from src.distributed import is_main

        # Under torchrun only rank 0 tracks: the other ranks get a disabled tracker (every call a no-op).
        tracker = Tracker(experiment, enabled=os.environ.get("SR4IR_TRACKING", "1") != "0" and is_main())
        common = git_tags()
        key = dvc_invocation_key()
        parent = pipeline_parent(tracker, key, common) if key else None
        tags = {**common, "dvc.stage": stage, "params.hash": params.digest(), "task": task, "method": method,
                "scale": str(params.degrade.scale), "seed": "" if seed is None else str(seed)}
        logged = params.model_dump(mode="json", exclude=None if seed is not None else {"seed"})
        run_id = tracker.start_run(stage, tags=tags, params=logged, parent_run_id=parent)
        run = StageRun(tracker, run_id)
        t0 = time.perf_counter()
        try:
            yield run
        except BaseException:
            tracker.end_run(run_id, "FAILED")
            tracker.end_run(parent, "FAILED")  # the pipeline run stops here (a later stage of it sets FINISHED again)
            raise
        run.log_metrics({"time/stage_s": time.perf_counter() - t0})
        tracker.end_run(run_id, "FINISHED")
        tracker.end_run(parent, "FINISHED")  # the parent's duration now reaches the end of this stage

    return _cm()
