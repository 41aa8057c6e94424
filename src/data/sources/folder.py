"""Bring your own dataset (``data.name: folder``, ``data.folder: <root>``).

``<root>/train`` and ``<root>/val`` each hold one of these, with the same kind(s) in both splits:

* ``<class>/<image>``: an image-folder tree, for classification (class ids: sorted folder names of train);
* ``images/`` + ``instances.json``: COCO detection (``file_name`` matched to ``images/`` by base name);
* ``images/`` + ``masks/<stem>.png``: segmentation (single-channel PNG of the image's size:
  0 background, 1 + class id, 255 ignore);
* ``images/`` with both ``instances.json`` and ``masks/``: detection and segmentation of the same images.

A class tree cannot share a split with ``images/``: the layout has one image list per split, and every
image needs the annotations of every task. Class names come from an optional ``<root>/classes.json`` (a
list; index = class id), else from the train class folders, else from the train COCO categories in id
order (class id = position); segmentation alone needs ``classes.json``. Every image is resized and
centre-cropped to ``data.image_size`` like the other real datasets (``common.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from src.config import DataConfig
from src.errors import DataError
from src.data.images import check_inside
from src.data.sources.common import Box, Item, SourceData, classification_items, image_folder, is_image

SPLITS = ("train", "val")
_RESERVED = ("images", "masks")


def _kinds(split_dir: Path) -> frozenset[str]:
    """The tasks the split's layout serves, or an error naming what is wrong with it."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: folder missing (data.folder needs train/ and val/)")
    images, masks, coco = split_dir / "images", split_dir / "masks", split_dir / "instances.json"
    tree = [d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in _RESERVED]
    kinds = set()
    if masks.is_dir():
        kinds.add("seg")
    if coco.is_file():
        kinds.add("det")
    if kinds and not images.is_dir():
        raise FileNotFoundError(f"{images}: folder missing ({'masks/' if 'seg' in kinds else 'instances.json'} needs it)")
    if images.is_dir():
        if not kinds:
            raise DataError(f"{images}: needs masks/ (segmentation) or instances.json (detection) beside it in {split_dir}")
        if tree:
            raise DataError(
                f"{split_dir}: holds both images/ and class folders ({tree[0].name}/, ...); one split has one image "
                "list for every task, so keep either the class tree or images/ with its annotations"
            )
    elif tree:
        kinds.add("cls")
    else:
        raise DataError(f"{split_dir}: no dataset layout: expected <class>/<image> folders, or images/ with "
                        "instances.json and/or masks/")
    return frozenset(kinds)


def _class_names_file(root: Path) -> list[str] | None:
    path = root / "classes.json"
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{path}: expected a non-empty list of class names")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a class name appears twice")
    return names


def _images(split_dir: Path) -> dict[str, Path]:
    """``images/`` files by name; two files with one stem are refused (their masks would collide)."""
    folder = split_dir / "images"
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))
    if not files:
        raise DataError(f"{folder}: no images")
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise DataError(f"{folder}: {stems[p.stem].name} and {p.name} share the stem {p.stem!r}")
        stems[p.stem] = p
    return {p.name: p for p in files}


def _read_coco(path: Path) -> dict:
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(coco, dict):
        raise DataError(f"{path}: expected a COCO object with images, annotations and categories")
    for key in ("images", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{path}: no {key!r} list (not a COCO detection file)")
    if not isinstance(coco.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' is not a list")
    try:
        cats = {c["id"]: str(c["name"]) for c in coco["categories"]}
        images = {im["id"]: str(im["file_name"]) for im in coco["images"]}
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: an image needs id and file_name, a category id and name ({err!r} missing)") from None
    if len(cats) != len(coco["categories"]):
        raise DataError(f"{path}: a category id appears twice")
    if len(images) != len(coco["images"]):
        raise DataError(f"{path}: an image id appears twice")
    return {"categories": cats, "images": images, "annotations": coco.get("annotations", [])}


def _coco_class_names(coco: dict) -> list[str]:
    return [coco["categories"][k] for k in sorted(coco["categories"])]


def _boxes(path: Path, coco: dict, class_names: Sequence[str], files: dict[str, Path]) -> dict[str, tuple[Box, ...]]:
    """Boxes per ``images/`` file name; images and annotations that do not match are errors naming them."""
    index = {n: i for i, n in enumerate(class_names)}
    class_of = {}
    for cat_id, name in coco["categories"].items():
        if name not in index:
            raise DataError(f"{path}: category {cat_id} {name!r} is not among the classes {list(class_names)}")
        class_of[cat_id] = index[name]
    by_id: dict[object, list[Box]] = {i: [] for i in coco["images"]}
    for k, ann in enumerate(coco["annotations"]):
        what = f"annotation {ann.get('id', f'#{k}') if isinstance(ann, dict) else f'#{k}'}"
        if not isinstance(ann, dict):
            raise DataError(f"{path}: {what} is not an object")
        if ann.get("image_id") not in by_id:
            raise DataError(f"{path}: {what} refers to unknown image {ann.get('image_id')!r}")
        if ann.get("category_id") not in class_of:
            raise DataError(f"{path}: {what} has unknown category {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            raise DataError(f"{path}: {what} has bbox {bbox!r}; expected [x, y, width, height] with width, height >= 0")
        crowd = ann.get("iscrowd", 0)
        by_id[ann["image_id"]].append(Box(*map(float, bbox), class_id=class_of[ann["category_id"]], iscrowd=int(bool(crowd))))
    out: dict[str, tuple[Box, ...]] = {}
    for image_id, file_name in coco["images"].items():
        name = Path(file_name).name
        if name in out:
            raise DataError(f"{path}: two images are called {name!r}")
        if name not in files:
            raise FileNotFoundError(f"{path.parent / 'images' / name}: listed in {path} (image {image_id!r}) but missing")
        out[name] = tuple(by_id[image_id])
    unlisted = sorted(set(files) - set(out))
    if unlisted:
        raise DataError(f"{path.parent / 'images' / unlisted[0]}: not listed in {path} "
                        f"({len(unlisted)} images are not; list images without objects with no annotations)")
    return out


def load(cfg: DataConfig) -> SourceData:
    root = Path(cfg.folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data.folder not found (it must hold train/ and val/)")
    kinds = {split: _kinds(root / split) for split in SPLITS}
    if kinds["train"] != kinds["val"]:
        raise DataError(f"{root}: train/ serves {sorted(kinds['train'])} but val/ serves {sorted(kinds['val'])}; "
                        "both splits need the same annotations")
    tasks = kinds["train"]
    for annotation_file in (root / "classes.json", *(root / s / "instances.json" for s in SPLITS)):
        if annotation_file.exists():  # images and masks: src.data.sources.check_files
            check_inside(annotation_file, root)
    classes_file = root / "classes.json"
    class_names = _class_names_file(root)
    cocos = {s: _read_coco(root / s / "instances.json") for s in SPLITS} if "det" in tasks else {}
    if class_names is None:
        if "cls" in tasks:
            class_names = sorted(image_folder(root / "train"))
        elif "det" in tasks:
            class_names = _coco_class_names(cocos["train"])
            if not class_names:
                raise DataError(f"{root / 'train' / 'instances.json'}: no categories")
            if cocos["val"]["categories"] != cocos["train"]["categories"]:
                raise DataError(f"{root / 'val' / 'instances.json'}: categories differ from train/instances.json "
                                f"(or write the class list to {classes_file})")
        else:
            raise FileNotFoundError(f"{classes_file}: missing; segmentation masks carry only numbers, so list the class "
                                    "names there (index = mask value - 1)")
    splits: dict[str, list[Item]] = {}
    for split in SPLITS:
        split_dir = root / split
        if "cls" in tasks:
            splits[split] = classification_items(root, split_dir, class_names)
            continue
        files = _images(split_dir)
        boxes = _boxes(split_dir / "instances.json", cocos[split], class_names, files) if "det" in tasks else {}
        items = []
        for name, path in files.items():
            mask = None
            if "seg" in tasks:
                mask = split_dir / "masks" / f"{path.stem}.png"
                if not mask.is_file():
                    raise FileNotFoundError(f"{mask}: segmentation mask missing for {path}")
            items.append(Item(path.relative_to(root).as_posix(), path, mask=mask, boxes=boxes[name] if "det" in tasks else None))
        splits[split] = items
    return SourceData(class_names, splits, tasks, f"data.folder {root}", root=root)
