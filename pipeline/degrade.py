"""DVC stage `degrade`: bicubic x`degrade.scale` downscale of every HR image, 8-bit PNGs in data/lr; then
data/manifest.json, the summary of data/raw and data/lr that the later stages depend on."""

import argparse
import logging

from pipeline import _stage, paths
from src.config import load_params
from src.data.degrade import degrade_folder
from src.data.manifest import write_manifest
from src.tracking import stage_run


def main(args: argparse.Namespace) -> None:
    params = load_params()
    with stage_run("degrade", params) as run:
        n = degrade_folder(paths.RAW, paths.LR, params.degrade)
        write_manifest(paths.MANIFEST, {"raw": paths.RAW, "lr": paths.LR})
        run.log_metrics({"images": n})
        run.tag_identity([paths.LR])
    logging.info("degrade: %d images at x%d -> %s", n, params.degrade.scale, paths.LR)


if __name__ == "__main__":
    _stage.run(main, argparse.ArgumentParser(description=__doc__))
