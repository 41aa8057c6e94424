"""DVC stage `degrade`: bicubic x`degrade.scale` downscale of every HR image, 8-bit PNGs in data/lr."""

import argparse
import logging

from pipeline import _stage, paths
from src.config import load_params
from src.data.degrade import degrade_folder


def main(args: argparse.Namespace) -> None:
    params = load_params()
    n = degrade_folder(paths.RAW, paths.LR, params.degrade)
    logging.info("degrade: %d images at x%d -> %s", n, params.degrade.scale, paths.LR)


if __name__ == "__main__":
    _stage.run(main, argparse.ArgumentParser(description=__doc__))
