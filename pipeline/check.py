"""`python -m pipeline.check [-S key=value ...]`: check all that can be checked before DVC runs a stage.

DVC deletes a stage's outputs before it starts the stage's command, so a stage that then stops on a bad
parameter would already have cost them. This checks, without running anything and with the stages' own
one-line errors (exit status 2):

* the whole ``params.yaml``: present, not empty, valid YAML as DVC reads it, every key known and set, every
  value of the right type and range (``src/config.py``), with ``dvc exp run``'s ``-S`` overrides applied
  as DVC applies them;
* the dataset source, when the ``download`` stage's params differ from ``dvc.lock`` (it will re-run):
  for ``data.name: folder``, its layout, the tasks against its annotations and every image's header
  (symbolic links, ``data.max_pixels``, ``data.max_upscale``), without decoding a pixel. The other real
  datasets are fetched or unpacked by the stage itself and checked there.

``python -m pipeline.warm dvc repro`` (what ``make repro`` runs) and ``python -m pipeline.warm dvc exp run``
run this first. It is a dep of no stage: it writes nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.config import PARAMS_FILE, Params, check_params_file, read_params_file
from src.errors import ConfigError, DataError

LOCK = Path("dvc.lock")


def check(overrides: Sequence[str] = (), path: Path = PARAMS_FILE) -> Params:
    """The validated params (overrides applied); a ``ConfigError``/``DataError``/``FileNotFoundError`` otherwise."""
    raw = read_params_file(path)
    if overrides:
        raw = _overridden(path, overrides)
    params = check_params_file(path, raw)
    if params.data.name == "folder" and _download_will_rerun(raw):
        from src.data.sources import inspect_source  # imports torch: only when there is a folder to look at

        inspect_source(params.data, params.tasks)
    return params


def _overridden(path: Path, overrides: Sequence[str]) -> Any:
    """``path`` as ``dvc exp run -S ...`` leaves it: DVC's own override code, applied to a copy."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    mine = to_path_overrides(list(overrides)).get(str(path), [])
    if not mine:
        return read_params_file(path)
    with tempfile.TemporaryDirectory(prefix="sr4ir-check-") as folder:
        copy = Path(folder) / path.name
        shutil.copyfile(path, copy)
        try:
            apply_overrides(copy, mine)
        except (InvalidArgumentError, ValueError, KeyError) as err:
            raise ConfigError(f"{path}: -S {' '.join(mine)}: {err} ({err.__cause__ or 'not a valid override'})") from None
        return read_params_file(copy)


def _download_will_rerun(raw: dict) -> bool:
    """Whether the download stage's params (as dvc.lock recorded them) changed, or it never ran."""
    if not LOCK.is_file() or not Path("data/raw").exists():
        return True
    import yaml

    try:
        lock = yaml.load(LOCK.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        recorded = lock["stages"]["download"]["params"][str(PARAMS_FILE)]
    except (yaml.YAMLError, KeyError, TypeError):
        return True
    for key, value in recorded.items():
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            return True
    return False


def run(overrides: Sequence[str] = ()) -> int:
    """``check`` with the stages' error convention: ``error: <message>`` on stderr and exit status 2."""
    try:
        check(overrides)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="an override as `dvc exp run -S` takes it (checked on a copy; params.yaml is not changed)")
    return run(parser.parse_args(argv).set_param)


if __name__ == "__main__":
    sys.exit(main())
