"""Stanford Cars for classification (``data.name: stanford_cars``), as the paper's Kaggle copy.

Kaggle's "stanford-car-dataset-by-classes-folder" holds ``car_data/car_data/{train,test}/<class name>/*.jpg``
(8,144 / 8,041 images, 196 classes). Kaggle needs a login, so the user downloads it by hand and places the
zip (or its extracted ``car_data`` folder) in ``data.cache_dir``. As the official preprocessing, ``test``
becomes ``val``; class ids are the sorted class folder names of ``train`` (torchvision ``ImageFolder``).

Deviation: the paper resizes to 256 (short side) and crops 224, randomly for training and centrally for
evaluation; here every image is resized to a ``data.image_size`` short side and centre-cropped once
(``common.py``), so training sees no random crop.
"""

from __future__ import annotations

from pathlib import Path

from src.config import DataConfig
from src.data.sources.common import Item, SourceData, classification_items, find_or_extract, image_folder

ARCHIVE = "stanford-car-dataset-by-classes-folder"
URL = "https://www.kaggle.com/datasets/jutrera/stanford-car-dataset-by-classes-folder"
REL = "car_data/car_data"


def locate(cfg: DataConfig) -> Path:
    cache = Path(cfg.cache_dir)
    root = find_or_extract(cache, ARCHIVE, REL, "train")
    if root is None:
        raise FileNotFoundError(
            f"{cache / (ARCHIVE + '.zip')}: Stanford Cars not found. Download it by hand from {URL} (Kaggle's web "
            f"download is called archive.zip: rename it) and place it at {cache / (ARCHIVE + '.zip')}, or extract it "
            f"so that {cache / REL}/train and {cache / REL}/test exist"
        )
    return root


def load(cfg: DataConfig) -> SourceData:
    root = locate(cfg)
    classes = sorted(image_folder(root / "train"))
    splits: dict[str, list[Item]] = {
        "train": classification_items(root, root / "train", classes),
        "val": classification_items(root, root / "test", classes),
    }
    return SourceData(classes, splits, frozenset({"cls"}), f"data.name stanford_cars ({root})")
