"""DVC stage `degrade`: bicubic x`degrade.scale` downscale of every HR image a loader reads the LR of from disk
(the val split's as evaluated; the train split's unless each batch degrades its own crops), 8-bit PNGs in data/lr; then
data/manifest.json, the summary of data/raw and data/lr that the later stages depend on."""

import argparse
import logging

from pipeline import _stage, paths
from src.config import load_params
from src.data.degrade import degrade_folder
from src.data.transforms import split_views
from src.data.manifest import write_manifest
from src.tracking import stage_run


def main(args: argparse.Namespace) -> None:
    params = load_params()
    with stage_run("degrade", params) as run:
        # The LR a loader can read from disk: every val image's (as evaluated) and, without random crops or
        # variable-size batches, every train image's; the others are degraded as each batch is drawn.
        splits = tuple(split for split, on_disk in params.data.lr_on_disk.items() if on_disk)
        n = degrade_folder(paths.RAW, paths.LR, params.degrade, splits, views=split_views(params.data))
        write_manifest(paths.MANIFEST, {"raw": paths.RAW, "lr": paths.LR})
        run.log_metrics({"images": n})
        run.tag_identity([paths.LR])
    logging.info("degrade: %d images at x%d -> %s", n, params.degrade.scale, paths.LR)


if __name__ == "__main__":
    _stage.run(main, argparse.ArgumentParser(description=__doc__))
