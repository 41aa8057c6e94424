"""DVC stage `evaluate@<task>-<method>`: task metric and PSNR of one trained method on the val split."""

import argparse
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from pipeline import _stage, paths
from src.config import load_params
from src.experiment import evaluate_method
from src.methods import METHODS, TABLE_METHODS
from src.report import plot_sample_grid
from src.tasks import TASKS, build_task
from src.tracking import stage_run
from src.utils import atomic_path, write_json_atomic


def main(args: argparse.Namespace) -> None:
    params = load_params()
    with stage_run(f"evaluate/{args.task}/{args.method}", params, task=args.task, method=args.method) as run:
        metrics, samples = evaluate_method(params, args.task, args.method, paths.RAW, paths.LR,
                                           paths.model_dir(args.task, args.method), n_samples=params.eval.n_samples)
        out = paths.eval_metrics(args.task, args.method)
        write_json_atomic(out, metrics)
        class_names = json.loads((paths.RAW / "classes.json").read_text())
        with atomic_path(paths.eval_samples(args.task, args.method)) as tmp:
            buf = io.BytesIO()
            np.savez_compressed(buf, class_names=np.array(class_names), **samples)
            tmp.write_bytes(buf.getvalue())
        # A picture of what this method sees and predicts, for the MLflow run (not a DVC output).
        with tempfile.TemporaryDirectory() as d:
            grid = Path(d) / f"samples_{args.task}_{args.method}.png"
            task = build_task(args.task, params, paths.RAW)
            plot_sample_grid(task, samples, class_names, METHODS[args.method].label, grid)
            run.log_artifact(grid)
        run.log_metrics({f"val/{k}": v for k, v in metrics.items()})
        run.log_artifact(out)
        run.tag_identity([out])
    logging.info("evaluate %s/%s: %s", args.task, args.method, metrics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--method", choices=TABLE_METHODS, required=True)
    _stage.run(main, parser)
