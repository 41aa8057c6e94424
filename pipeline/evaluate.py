"""DVC stage `evaluate@<task>-<method>`: task metric and PSNR of one trained method on the val split."""

import argparse
import logging

from pipeline import _stage, paths
from src.config import load_params
from src.experiment import evaluate_method
from src.methods import TABLE_METHODS
from src.tasks import TASKS
from src.utils import write_json_atomic


def main(args: argparse.Namespace) -> None:
    params = load_params()
    metrics = evaluate_method(params, args.task, args.method, paths.RAW, paths.LR, paths.model_dir(args.task, args.method))
    write_json_atomic(paths.eval_metrics(args.task, args.method), metrics)
    logging.info("evaluate %s/%s: %s", args.task, args.method, metrics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--method", choices=TABLE_METHODS, required=True)
    _stage.run(main, parser)
