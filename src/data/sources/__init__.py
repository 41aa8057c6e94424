"""Real datasets behind ``data.name``, converted into the layout of ``src/data/prepare.py``.

Each module's ``load(cfg)`` lists the source's samples and annotations (fetching or unpacking it into
``data.cache_dir`` first where needed); ``prepare_source`` picks the split sizes and writes the layout
atomically through ``common.write_split``. See each module's docstring for where the data comes from and
how the conversion departs from the paper.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from src.config import ConfigError, DataConfig
from src.errors import DataError
from src.data.sources import cars, cub, folder, voc
from src.data.sources.common import SourceData, select, write_split
from src.utils import atomic_path

SOURCES: dict[str, Callable[[DataConfig], SourceData]] = {
    "voc": voc.load,
    "stanford_cars": cars.load,
    "cub200": cub.load,
    "folder": folder.load,
}
SPLITS = ("train", "val")
_NEEDS = {"cls": "labels (class folders)", "seg": "masks", "det": "boxes (instances.json)"}


def check_tasks(data: SourceData, tasks: Sequence[str]) -> None:
    """A task the dataset has no annotations for fails now, not after the SR pre-training."""
    missing = [t for t in tasks if t not in data.tasks]
    if missing:
        raise ConfigError(
            f"tasks {list(tasks)}: {data.where} has no {', '.join(_NEEDS[t] for t in missing)} for {missing}, only "
            f"annotations for {sorted(data.tasks)}; drop {missing} from tasks or add them to the dataset"
        )


def prepare_source(cfg: DataConfig, out: Path, tasks: Sequence[str] | None = None) -> dict[str, int]:
    """Write the real dataset ``cfg.name`` at ``out`` (atomically); return split sizes."""
    if cfg.name not in SOURCES:
        raise ValueError(f"data.name: unknown dataset {cfg.name!r}; choose from synthetic, {', '.join(SOURCES)}")
    data = SOURCES[cfg.name](cfg)
    if tasks is not None:
        check_tasks(data, tasks)
    caps = {"train": cfg.max_train, "val": cfg.max_val}
    chosen = {split: select(data.splits[split], caps[split], cfg.seed, i) for i, split in enumerate(SPLITS)}
    for split, items in chosen.items():
        if not items:
            raise DataError(f"{data.where}: the {split} split is empty")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "classes.json").write_text(json.dumps(data.class_names))
        for split in SPLITS:
            write_split(tmp / split, chosen[split], data, cfg.image_size)
    return {split: len(items) for split, items in chosen.items()}
