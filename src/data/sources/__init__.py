"""Real datasets behind ``data.name``, converted into the layout of ``src/data/prepare.py``.

Each module's ``load(cfg)`` lists the source's samples and annotations (fetching or unpacking it into
``data.cache_dir`` first where needed); ``prepare_source`` picks the split sizes and writes the layout
atomically through ``common.write_split``. See each module's docstring for where the data comes from and
how the conversion departs from the paper.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from src.config import ConfigError, DataConfig
from src.errors import DataError
from src.data.sources import cars, cub, folder, voc
from src.data.images import check_inside, header_size
from src.data.sources.common import Item, SourceData, select, write_split
from src.utils import atomic_path

log = logging.getLogger(__name__)

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


def check_files(data: SourceData, chosen: dict[str, list[Item]], cfg: DataConfig) -> None:
    """Every chosen image and mask, from its header alone (no pixel decoded): inside the dataset folder
    (no symbolic link out of it), at most ``data.max_pixels``, and not upscaled more than ``data.max_upscale``
    times to ``data.image_size``; those upscaled at all are counted in one warning per split."""
    for split, items in chosen.items():
        upscaled: list[float] = []
        for item in items:
            for path in (item.image, item.mask):
                if path is not None and data.root is not None:
                    check_inside(path, data.root)
            width, height = header_size(item.image, cfg.max_pixels)
            if cfg.image_size and min(width, height) < cfg.image_size:
                factor = cfg.image_size / min(width, height)
                if factor > cfg.max_upscale:
                    raise DataError(f"{item.image}: image is {width}x{height}; its shorter side would be upscaled "
                                    f"x{factor:.1f} to data.image_size {cfg.image_size}, above data.max_upscale "
                                    f"({cfg.max_upscale:g}): drop the image or raise data.max_upscale")
                upscaled.append(factor)
        if upscaled:
            log.warning("%s: %d of %d %s images have a shorter side below data.image_size %d and are upscaled "
                        "(bilinear; up to x%.2f, data.max_upscale %g)", data.where, len(upscaled), len(items), split,
                        cfg.image_size, max(upscaled), cfg.max_upscale)


def inspect_source(cfg: DataConfig, tasks: Sequence[str] | None = None) -> tuple[SourceData, dict[str, list[Item]]]:
    """List the dataset ``cfg.name`` and check all that can be checked without decoding an image (the
    layout, the tasks against its annotations, the chosen files' headers); return it and the chosen items."""
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
    check_files(data, chosen, cfg)
    return data, chosen


def prepare_source(cfg: DataConfig, out: Path, tasks: Sequence[str] | None = None) -> dict[str, int]:
    """Write the real dataset ``cfg.name`` at ``out`` (atomically); return split sizes."""
    data, chosen = inspect_source(cfg, tasks)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "classes.json").write_text(json.dumps(data.class_names))
        for split in SPLITS:
            write_split(tmp / split, chosen[split], data, cfg.image_size, square=cfg.resize == "square")
    return {split: len(items) for split, items in chosen.items()}
