"""DVC stage `code`: data/code/<stage>.json for each stage named, the md5 of every module of this project on
that stage's import path (src/codedeps.py). Each later stage depends on its own file instead of listing the
modules, so DVC re-runs it exactly when code it runs changes, and the lock stays small."""

import argparse
import logging
from pathlib import Path

from pipeline import _stage, paths
from src.codedeps import write_fingerprints
from src.config import load_params
from src.tracking import stage_run


def main(args: argparse.Namespace) -> None:
    params = load_params()  # a bad params.yaml fails here, before any stage's work
    with stage_run("code", params) as run:
        write_fingerprints(Path.cwd(), paths.CODE, args.stages)
        run.tag_identity([paths.CODE])
    logging.info("code: import paths of %s -> %s", ", ".join(args.stages), paths.CODE)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stages", nargs="+", metavar="STAGE", help="a stage script's name (pipeline/STAGE.py)")
    _stage.run(main, parser)
