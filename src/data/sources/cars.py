"""Stanford Cars for classification (``data.name: stanford_cars``), as the paper's Kaggle copy.

Kaggle's "stanford-car-dataset-by-classes-folder" holds ``car_data/car_data/{train,test}/<class name>/*.jpg``
(8,144 / 8,041 images, 196 classes). Kaggle needs a login, so the user downloads it by hand and places the
zip (or its extracted ``car_data`` folder) in ``data.cache_dir``. As the official preprocessing, ``test``
becomes ``val``; class ids are the sorted class folder names of ``train`` (torchvision ``ImageFolder``).

The paper resizes to 256 (short side) and crops 224, randomly for training and centrally for evaluation:
``configs/paper/cls_cars.yaml`` sets exactly that (``data.resize: short_side``, ``train_crop``/``eval_crop``
224); the default ``resize: square`` centre-crops every image once (``common.py``).
"""

from __future__ import annotations

from pathlib import Path

from src.config import DataConfig
from src.data.sources.common import Item, SourceData, classification_items, image_folder, locate_by_hand

ARCHIVE = "stanford-car-dataset-by-classes-folder"
URL = "https://www.kaggle.com/datasets/jutrera/stanford-car-dataset-by-classes-folder"
REL = "car_data/car_data"


def locate(cfg: DataConfig) -> Path:
    return locate_by_hand(Path(cfg.cache_dir), f"{ARCHIVE}.zip", REL, "train", ["train", "test"], "Stanford Cars",
                          f"{URL} (Kaggle's web download is called archive.zip: rename it)")


def load(cfg: DataConfig) -> SourceData:
    root = locate(cfg)
    classes = sorted(image_folder(root / "train"))
    splits: dict[str, list[Item]] = {
        "train": classification_items(root, root / "train", classes),
        "val": classification_items(root, root / "test", classes),
    }
    return SourceData(classes, splits, frozenset({"cls"}), f"data.name stanford_cars ({root})", root=root)
