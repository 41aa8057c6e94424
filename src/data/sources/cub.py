"""CUB-200-2011 for classification (``data.name: cub200``), split as the official ``train_test_split.txt``.

The archive ``CUB_200_2011.tgz`` (Caltech's data repository) holds ``CUB_200_2011/images/<class>/*.jpg``
with ``images.txt`` (id path), ``image_class_labels.txt`` (id class), ``train_test_split.txt`` (id is_train)
and ``classes.txt`` (class name). The user places the archive (or its extracted ``CUB_200_2011`` folder) in
``data.cache_dir``. Training images (5,994) go to ``train``, the others (5,794) to ``val``; class id =
class number - 1, which is also torchvision ``ImageFolder``'s order of the zero-padded folder names the
official preprocessing creates; ``classes.json`` holds the ``classes.txt`` names (``001.Black_footed_Albatross``).

As for Stanford Cars (``cars.py``): ``configs/paper/cls_cub.yaml`` sets the paper's Resize(256) +
RandomCrop/CenterCrop(224); the default ``resize: square`` centre-crops every image once.
"""

from __future__ import annotations

from pathlib import Path

from src.config import DataConfig
from src.errors import DataError
from src.data.sources.common import Item, SourceData, locate_by_hand, read_table

ARCHIVE = "CUB_200_2011"
URL = "https://data.caltech.edu/records/65de6-vn318 (CUB_200_2011.tgz)"
REL = "CUB_200_2011"


def locate(cfg: DataConfig) -> Path:
    return locate_by_hand(Path(cfg.cache_dir), f"{ARCHIVE}.tgz", REL, "images.txt", ["images.txt"], "CUB-200-2011", URL)


def _by_id(path: Path, columns: int = 2) -> dict[str, str]:
    out: dict[str, str] = {}
    for fields in read_table(path, columns):
        if fields[0] in out:
            raise DataError(f"{path}: id {fields[0]} appears twice")
        out[fields[0]] = fields[-1]
    return out


def load(cfg: DataConfig) -> SourceData:
    root = locate(cfg)
    classes_file = root / "classes.txt"
    numbered = _by_id(classes_file)
    try:
        order = sorted(numbered, key=int)
    except ValueError:
        raise DataError(f"{classes_file}: class numbers must be integers") from None
    if order != [str(i) for i in range(1, len(order) + 1)]:
        raise DataError(f"{classes_file}: class numbers must run 1..{len(order)}")
    classes = [numbered[k] for k in order]
    paths = _by_id(root / "images.txt")
    labels = _by_id(root / "image_class_labels.txt")
    is_train = _by_id(root / "train_test_split.txt")
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for image_id, rel in paths.items():
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DataError(f"{root / name}: no row for image id {image_id} ({rel})")
        label = labels[image_id]
        if label not in numbered:
            raise DataError(f"{root / 'image_class_labels.txt'}: image id {image_id} has class {label!r}, not in classes.txt")
        if is_train[image_id] not in ("0", "1"):
            raise DataError(f"{root / 'train_test_split.txt'}: image id {image_id} has {is_train[image_id]!r}, not 0 or 1")
        if rel.startswith("/") or ".." in rel.split("/"):
            raise DataError(f"{root / 'images.txt'}: image id {image_id} has path {rel!r} outside images/")
        split = "train" if is_train[image_id] == "1" else "val"
        splits[split].append(Item(f"images/{rel}", root / "images" / rel, label=int(label) - 1))
    for split, items in splits.items():
        if not items:
            raise DataError(f"{root / 'train_test_split.txt'}: no {split} images")
    return SourceData(classes, splits, frozenset({"cls"}), f"data.name cub200 ({root})", root=root)
