"""What every stage script shares: argument parsing with --help, and errors as one clear line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from src.checkpoint import Interrupted
from src.config import ConfigError
from src.data.dataset import DataError


def run(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main(args)
    except (ConfigError, DataError, FileNotFoundError) as err:  # bad input: the message names the file or key
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as err:  # a non-finite loss: the step and the saved last good state are named
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    except Interrupted as err:  # SIGTERM: the checkpoint is saved; the outputs are not written
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(143)
