"""DVC stage `train@<task>-<method>-<seed>`: train one method of the paper's Table 1 for one task and seed."""

import argparse
import logging

import torch

from pipeline import _stage, paths
from src.checkpoint import Checkpointing, discard
from src.config import load_params
from src.distributed import is_main
from src.experiment import train_method
from src.methods import METHODS, TABLE_METHODS
from src.tasks import TASKS
from src.tracking import stage_run
from src.utils import atomic_path, write_json_atomic


def main(args: argparse.Namespace) -> None:
    params = load_params().with_seed(args.seed)
    method = METHODS[args.method]
    seed = args.seed
    out = paths.model_dir(args.task, args.method, seed)
    name = f"train/{args.task}/{args.method}/{paths.seed_dir(seed)}"
    with stage_run(name, params, task=args.task, method=args.method, seed=seed) as run:
        # Resumes from checkpoints/seed<N>/<task>/<method>.pt when a killed run of the same params left one.
        ckpt = Checkpointing(paths.checkpoint(args.task, args.method, seed), params.digest(), params.train.checkpoint_every_steps)
        result = train_method(
            params,
            args.task,
            args.method,
            paths.RAW,
            paths.LR,
            sr_init=paths.sr_pretrained(seed) if method.reads_pretrained_sr else None,
            rec_init=paths.model_dir(args.task, method.rec_from, seed) / "rec.pt" if method.rec_from else None,
            callbacks=[run.callback],
            checkpoint=ckpt,
        )
        if not is_main():  # under torchrun rank 0 alone writes the outputs and removes the checkpoint
            return
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for name, state in result.states.items():  # sr.pt (when the method has an SR network), rec.pt
                torch.save(state, tmp / f"{name}.pt")
        history = paths.train_history(args.task, args.method, seed)
        # DVC plots need the same fields in every record: a term not yet computed (TDP in the warm-up) is 0.
        keys = sorted({k for record in result.history for k in record})
        epochs = [{k: record.get(k, 0.0) for k in keys} for record in result.history]
        n_skipped = {split: len(bad) for split, bad in sorted(result.skipped.items())}  # data.on_bad_sample: skip
        write_json_atomic(history, {"seconds": result.seconds, "epochs": epochs, "skipped": n_skipped})
        run.log_metrics({**{f"data/skipped_{split}": n for split, n in n_skipped.items()},
                         "time/loop_s": result.seconds})  # the training loop: pipeline.track sums these
        run.tag_outputs(sorted(out.glob("*.pt")))
        run.tag_identity([out])
        run.log_artifact(history)
        discard(ckpt)
    logging.info("train %s/%s seed %d: %.0f s, last epoch %s", args.task, args.method, seed, result.seconds, result.history[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--method", choices=TABLE_METHODS, required=True)
    parser.add_argument("--seed", type=int, required=True, help="one of seeds in params.yaml")
    _stage.run(main, parser, distributed=True)
