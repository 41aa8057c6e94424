"""Write a dataset to disk in the one layout every later stage reads.

Layout (``out`` is the ``download`` stage's output, ``data/raw``)::

    classes.json                 class names, index = class id
    <split>/images/<id>.png      HR RGB images
    <split>/masks/<id>.png       per-pixel class map: 0 background, 1 + class id, 255 ignore
    <split>/labels.csv           id,label  (image-level class, for classification)
    <split>/instances.json       COCO detection annotations (category id = 1 + class id)
    <split>/sources.csv          id,source  (real datasets only: the source file each id came from)

Every image of a split has one size (a batch stacks them). A dataset writes only the annotation files it
has (VOC: masks and instances.json; Stanford Cars and CUB-200: labels.csv); the synthetic set has all.
``data.name`` other than ``synthetic`` is converted by ``src/data/sources``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from src.config import DataConfig
from src.data import synthetic
from src.data.sources import prepare_source
from src.utils import atomic_path, progress

SPLITS = ("train", "val")


def _coco(samples: list[synthetic.Sample], names: list[str], class_names: tuple[str, ...]) -> dict:
    images, annotations = [], []
    for image_id, (name, s) in enumerate(zip(names, samples), start=1):
        h, w = s.mask.shape
        images.append({"id": image_id, "file_name": f"{name}.png", "height": h, "width": w})
        for box, label in zip(s.boxes, s.box_labels):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": list(box),
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _write_split(folder: Path, samples: list[synthetic.Sample], class_names: tuple[str, ...]) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    names = [f"{i:06d}" for i in range(len(samples))]
    for name, s in progress(list(zip(names, samples)), desc=f"write {folder.name}"):
        Image.fromarray(s.image).save(folder / "images" / f"{name}.png")
        Image.fromarray(s.mask).save(folder / "masks" / f"{name}.png")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "label"])
    writer.writerows((n, s.label) for n, s in zip(names, samples))
    (folder / "labels.csv").write_text(buf.getvalue())
    (folder / "instances.json").write_text(json.dumps(_coco(samples, names, class_names)))


def prepare_dataset(cfg: DataConfig, out: Path, tasks: Sequence[str] | None = None) -> dict[str, int]:
    """Produce the dataset named by ``cfg.name`` at ``out`` (atomically); return split sizes.

    ``tasks`` (params.tasks), when given, must all have annotations in the dataset (``ConfigError``
    otherwise): for ``data.name: folder`` that is only known once the folder is read.
    """
    if cfg.name != "synthetic":
        return prepare_source(cfg, out, tasks)
    syn = cfg.synthetic
    counts = {"train": syn.num_train, "val": syn.num_val}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "classes.json").write_text(json.dumps(list(synthetic.CLASS_NAMES)))
        for offset, split in enumerate(SPLITS):
            # Independent streams per split, both derived from data.seed.
            seed = np.random.SeedSequence([cfg.seed, offset])
            samples = synthetic.generate_split(seed, counts[split], syn.image_size, syn.max_objects, syn.period)
            _write_split(tmp / split, samples, synthetic.CLASS_NAMES)
    return counts
