"""After `dvc repro`: make sure this pipeline run has an MLflow parent listing every stage.

Stages that ran logged their own runs; stages DVC skipped as cached get a child linked to the run that
produced their current outputs. `make repro` calls this with the same SR4IR_PIPELINE_RUN key it gave
`dvc repro`, so even a fully cached repro appears in `mlflow ui`. It is not a DVC stage on purpose: a
stage that always runs would make `dvc status` report a change forever.

When the report exists, the parent run also gets the study's aggregated table: ``<task>/<method>/mean``,
``/ci95`` and ``/n`` over the seeds from reports/results.csv, and reports/report.md, report.html and
results.csv as artifacts (under ``reports/``).

It also says where the time went: the stages' training and evaluation loops against everything else
(process start, imports, MLflow, data loading, DVC), logged to the parent run as ``time/*``; the share of the
wall time needs ``$SR4IR_PIPELINE_START`` (`make repro` sets it).
"""

import argparse
import logging
import os
import time

from pipeline import _stage, paths
from src.config import load_params
from src.methods import TABLE_METHODS
from src.tracking import (PIPELINE_ENV, START_ENV, Tracker, link_cached_stages, log_results, pipeline_parent,
                          pipeline_times)


def _minutes(seconds: float) -> str:
    """``12 min 5 s`` (whole seconds) from a minute on, else ``42.3 s``."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def main(args: argparse.Namespace) -> None:
    key = args.key or os.environ.get(PIPELINE_ENV)
    if not key:
        raise SystemExit(f"error: give --key or set {PIPELINE_ENV} (the key `dvc repro` ran with)")
    start = os.environ.get(START_ENV)
    try:
        wall = time.time() - float(start) if start else None
    except ValueError:
        raise SystemExit(f"error: ${START_ENV} must be seconds since the epoch, got {start!r}") from None
    params = load_params()
    tracker = Tracker("sr4ir")
    parent = pipeline_parent(tracker, key)
    linked = link_cached_stages(tracker, parent, paths.stage_outputs(params.tasks, TABLE_METHODS, params.seeds))
    logging.info("track: pipeline run %s, %d cached stages linked", key, len(linked))
    results = paths.REPORTS / "results.csv"
    if results.exists():
        reports = [paths.REPORTS / "report.md", paths.REPORTS / "report.html", results]
        logged = log_results(tracker, parent, results, reports)
        logging.info("track: %d aggregated metrics of %s logged to the pipeline run", len(logged), results)
    times = pipeline_times(tracker, parent, wall)
    tracker.end_run(parent)  # the parent's duration spans the whole `make repro`, linking included
    if times and times["stages"]:
        line = (f"track: {times['stages']:.0f} stages ran; training and evaluation loops {_minutes(times['loop_s'])}, "
                f"the rest of the stages' runs {_minutes(times['stage_s'] - times['loop_s'])}")
        if "wall_s" in times:
            line += (f", outside them (process start, imports, MLflow connection, DVC) {_minutes(times['outside_s'])}; "
                     f"wall {_minutes(times['wall_s'])}, overhead (all but the loops) {times['overhead_pct']:.1f} %")
        logging.info(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--key", help=f"pipeline run key (default: ${PIPELINE_ENV})")
    _stage.run(main, parser)
