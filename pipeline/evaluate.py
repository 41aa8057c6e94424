"""DVC stage `evaluate@<task>-<method>-<seed>`: task metric, PSNR and LPIPS of one trained method on the val split,
and the task metric's per-image scores of the whole split (``paths.eval_scores``: the report's bootstrap over val images).

LPIPS needs torchvision's VGG16 weights in the torch hub cache (``eval.lpips: auto``); without them the metrics
file holds ``lpips_unavailable`` (the reason) instead of a number. The file is not a DVC dependency: after
placing it, re-run these stages alone, then the report: ``dvc repro -s -f --glob 'evaluate@*' && dvc repro``."""

import argparse
import logging

from pipeline import _stage, paths
from src.config import load_params
from src.experiment import evaluate_method
from src.methods import TABLE_METHODS
from src.tasks import TASKS
from src.tracking import stage_run
from src.utils import save_npz_atomic, write_json_atomic


def main(args: argparse.Namespace) -> None:
    params = load_params().with_seed(args.seed)
    seed = args.seed
    with stage_run(f"evaluate/{args.task}/{args.method}/{paths.seed_dir(seed)}", params, task=args.task,
                   method=args.method, seed=seed) as run:
        result = evaluate_method(params, args.task, args.method, paths.RAW, paths.LR,
                                 paths.model_dir(args.task, args.method, seed), n_samples=params.eval.n_samples)
        metrics, samples = result.metrics, result.samples
        metrics["n_skipped"] = len(result.skipped.get("val", []))  # data.on_bad_sample: skip
        if "lpips_unavailable" in metrics:
            logging.warning("evaluate %s/%s: LPIPS not computed: %s", args.task, args.method, metrics["lpips_unavailable"])
        out = paths.eval_metrics(args.task, args.method, seed)
        write_json_atomic(out, metrics)
        save_npz_atomic(paths.eval_samples(args.task, args.method, seed), **samples)
        save_npz_atomic(paths.eval_scores(args.task, args.method, seed), **result.scores)  # the report's bootstrap
        run.log_metrics({**{f"val/{k}": v for k, v in metrics.items()}, "data/skipped_val": metrics["n_skipped"],
                         "time/loop_s": result.seconds})  # the evaluation loop: pipeline.track sums these
        run.log_artifact(out)
        run.tag_identity([out])
    logging.info("evaluate %s/%s seed %d: %s", args.task, args.method, seed, metrics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--method", choices=TABLE_METHODS, required=True)
    parser.add_argument("--seed", type=int, required=True, help="one of seeds in params.yaml")
    _stage.run(main, parser)
