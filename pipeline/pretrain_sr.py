"""DVC stage `pretrain_sr@<seed>`: the SR network alone, L1 on HR/LR pairs (stand-in for DIV2K pre-training)."""

import argparse
import logging

from pipeline import _stage, paths
from src.checkpoint import Checkpointing, discard
from src.config import load_params
from src.distributed import is_main
from src.experiment import pretrain_sr
from src.tracking import stage_run
from src.utils import save_torch_atomic, write_json_atomic


def main(args: argparse.Namespace) -> None:
    params = load_params().with_seed(args.seed)
    out, history = paths.sr_pretrained(args.seed), paths.pretrain_history(args.seed)
    with stage_run(f"pretrain_sr/{paths.seed_dir(args.seed)}", params, method="sr_pretrain", seed=args.seed) as run:
        ckpt = Checkpointing(paths.CHECKPOINTS / paths.seed_dir(args.seed) / "sr_pretrain.pt", params.digest(),
                             params.train.checkpoint_every_steps)
        result = pretrain_sr(params, paths.RAW, paths.LR, callbacks=[run.callback], checkpoint=ckpt)
        if not is_main():  # under torchrun rank 0 alone writes the outputs and removes the checkpoint
            return
        run.log_metrics({**{f"data/skipped_{split}": len(bad) for split, bad in sorted(result.skipped.items())},
                         "time/loop_s": result.seconds})  # the training loop: pipeline.track sums these
        save_torch_atomic(out, result.states["sr"])
        write_json_atomic(history, {"seconds": result.seconds, "epochs": result.history})
        run.tag_outputs([out])
        run.tag_identity([out])
        run.log_artifact(history)
        discard(ckpt)
    logging.info("pretrain_sr seed %d: val PSNR %.2f dB in %.0f s", args.seed, result.history[-1]["val/psnr"], result.seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True, help="one of seeds in params.yaml")
    _stage.run(main, parser, distributed=True)
