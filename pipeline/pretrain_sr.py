"""DVC stage `pretrain_sr`: the SR network alone, L1 on HR/LR pairs (stand-in for DIV2K pre-training)."""

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
    params = load_params()
    with stage_run("pretrain_sr", params, method="sr_pretrain") as run:
        ckpt = Checkpointing(paths.CHECKPOINTS / "sr_pretrain.pt", params.digest(), params.train.checkpoint_every_steps)
        result = pretrain_sr(params, paths.RAW, paths.LR, callbacks=[run.callback], checkpoint=ckpt)
        if not is_main():  # under torchrun rank 0 alone writes the outputs and removes the checkpoint
            return
        run.log_metrics({**{f"data/skipped_{split}": len(bad) for split, bad in sorted(result.skipped.items())},
                         "time/loop_s": result.seconds})  # the training loop: pipeline.track sums these
        save_torch_atomic(paths.SR_PRETRAINED, result.states["sr"])
        write_json_atomic(paths.PRETRAIN_HISTORY, {"seconds": result.seconds, "epochs": result.history})
        run.tag_outputs([paths.SR_PRETRAINED])
        run.tag_identity([paths.SR_PRETRAINED])
        run.log_artifact(paths.PRETRAIN_HISTORY)
        discard(ckpt)
    logging.info("pretrain_sr: val PSNR %.2f dB in %.0f s", result.history[-1]["val/psnr"], result.seconds)


if __name__ == "__main__":
    _stage.run(main, argparse.ArgumentParser(description=__doc__), distributed=True)
