"""DVC stage `download`: produce the dataset named by data.name at data/raw.

For data.name=synthetic the images are generated from data.seed (no network). voc is downloaded into
data.cache_dir (once; checksum-verified); stanford_cars and cub200 are read from archives placed there by
hand; folder converts data.folder. See src/data/sources.
"""

import argparse
import logging

from pipeline import _stage, paths
from src.config import load_params
from src.errors import DataError
from src.data.archive import ArchiveError
from src.data.fetch import DownloadError
from src.data.prepare import prepare_dataset
from src.tracking import stage_run


def main(args: argparse.Namespace) -> None:
    params = load_params()
    with stage_run("download", params) as run:
        try:
            counts = prepare_dataset(params.data, paths.RAW, params.tasks)
        except (DownloadError, ArchiveError) as err:  # the message says what to fetch or place by hand
            raise DataError(str(err)) from err
        run.log_metrics({f"images/{k}": v for k, v in counts.items()})
        run.tag_identity([paths.RAW])
    logging.info("download: %s -> %s (%s)", params.data.name, paths.RAW, counts)


if __name__ == "__main__":
    _stage.run(main, argparse.ArgumentParser(description=__doc__))
