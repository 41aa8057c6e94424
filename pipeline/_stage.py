"""What every stage script shares: argument parsing with --help, and errors as one clear line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from src.config import ConfigError


def run(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main(args)
    except (ConfigError, FileNotFoundError) as err:  # bad input: the message names the file or key
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
