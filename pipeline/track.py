"""After `dvc repro`: make sure this pipeline run has an MLflow parent listing every stage.

Stages that ran logged their own runs; stages DVC skipped as cached get a child linked to the run that
produced their current outputs. `make repro` calls this with the same SR4IR_PIPELINE_RUN key it gave
`dvc repro`, so even a fully cached repro appears in `mlflow ui`. It is not a DVC stage on purpose: a
stage that always runs would make `dvc status` report a change forever.
"""

import argparse
import logging
import os

from pipeline import _stage, paths
from src.config import load_params
from src.methods import TABLE_METHODS
from src.tracking import PIPELINE_ENV, Tracker, link_cached_stages, pipeline_parent


def main(args: argparse.Namespace) -> None:
    key = args.key or os.environ.get(PIPELINE_ENV)
    if not key:
        raise SystemExit(f"error: give --key or set {PIPELINE_ENV} (the key `dvc repro` ran with)")
    params = load_params()
    tracker = Tracker("sr4ir")
    parent = pipeline_parent(tracker, key)
    linked = link_cached_stages(tracker, parent, paths.stage_outputs(params.tasks, TABLE_METHODS))
    logging.info("track: pipeline run %s, %d cached stages linked", key, len(linked))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--key", help=f"pipeline run key (default: ${PIPELINE_ENV})")
    _stage.run(main, parser)
