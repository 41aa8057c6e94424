"""PASCAL VOC 2012 for segmentation and detection (``data.name: voc``).

Where it comes from: ``data.voc_url`` (the official host) is downloaded with ``src/data/fetch.py`` into
``data.cache_dir``, its md5 checked against ``data.voc_md5``, and unpacked safely once into
``<cache_dir>/extracted/<archive name>``. An already extracted ``<cache_dir>/VOCdevkit/VOC2012`` is used as is,
without any network.

What is written, and how it differs from the official recipe (method doc section 9):

* **One image list for both tasks.** The canonical layout shares one image list per split, so both tasks use
  the *segmentation* split (``ImageSets/Segmentation/{train,val}.txt``: 1,464 / 1,449 images); every one of
  them also has an XML annotation. The official detection split (``ImageSets/Main``, 5,717 / 5,823 images)
  is therefore not used: detection trains and is scored on a quarter of its images.
* **Masks** are ``SegmentationClass`` PNGs: palette indices 0 background, 1..20 classes, 255 void, which is
  already this pipeline's mask convention.
* **Boxes** follow the official ``voc2coco.py``: categories 1..20 in the standard VOC order,
  bbox = [xmin-1, ymin-1, xmax-xmin+1, ymax-ymin+1] from integer coordinates, area = w*h, iscrowd 0,
  ``difficult`` and ``truncated`` ignored (difficult objects are ordinary ground truth), annotation ids from 1.
  Image ids are integers 1..N with the stem in ``file_name`` (the official ids are the string stems; the
  pipeline's detection targets carry integer ids). ``voc_to_coco`` is that conversion, at full resolution.
* **Size** (``common.py``). ``data.resize: square`` (the default): every image resized to a shorter side of
  ``data.image_size`` and centre-cropped square, one HR size per split. ``short_side`` (the paper profiles):
  the aspect ratio kept (seg: 520; det: ``image_size: 0``, the source size), the random 480 crops and the
  per-image evaluation done by the loaders (``src.data.transforms``). Boxes are scaled (and clipped, dropped
  when degenerate, by a square crop), masks resized nearest; images left without a box are kept, as the
  official loader keeps empty VOC images.
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from src.config import DataConfig
from src.data import fetch
from src.data.archive import safe_extract
from src.errors import DataError
from src.data.sources.common import ARCHIVE_SUFFIXES, Box, Item, SourceData

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
ROOT = "VOCdevkit/VOC2012"
DEFAULT_ARCHIVE = "VOCtrainval_11-May-2012.tar"


def _archive_name(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    return name or DEFAULT_ARCHIVE


def _stem(archive: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if archive.endswith(suffix):
            return archive[: -len(suffix)]
    return archive


def locate(cfg: DataConfig) -> Path:
    """``VOCdevkit/VOC2012`` in the cache, downloading and unpacking the archive when it is not there yet."""
    cache = Path(cfg.cache_dir)
    if (cache / ROOT / "ImageSets").is_dir():
        return cache / ROOT
    name = _archive_name(cfg.voc_url)
    extracted = cache / "extracted" / _stem(name)
    if not (extracted / ROOT).is_dir():
        archive = fetch.download(
            cfg.voc_url, cache / name, md5=cfg.voc_md5 or None,
            manual_hint=f"or extract it so that {cache / ROOT}/ImageSets exists",
        )
        if extracted.exists() and any(extracted.iterdir()):
            raise DataError(f"{extracted}: extracted earlier but holds no {ROOT}; delete it and run again")
        safe_extract(archive, extracted)
        if not (extracted / ROOT).is_dir():
            raise DataError(f"{archive}: unpacked to {extracted}, but it holds no {ROOT} (is it the VOC 2012 trainval tar?)")
    return extracted / ROOT


def _text(obj: ET.Element, tag: str, path: Path, what: str) -> str:
    value = obj.findtext(tag)
    if value is None or not value.strip():
        raise DataError(f"{path}: {what} has no <{tag}>")
    return value.strip()


def _coord(obj: ET.Element, tag: str, path: Path, what: str) -> int:
    value = _text(obj, f"bndbox/{tag}", path, what)
    try:
        return int(float(value))  # a few VOC files write "273.5"; voc2coco.py truncates the same way
    except ValueError:
        raise DataError(f"{path}: {what} has <{tag}> {value!r}, not a number") from None


def voc_to_coco(xml_paths: Sequence[Path]) -> dict:
    """COCO detection dict of VOC XML files, as the official ``voc2coco.py`` writes it (full resolution).

    Image ids are 1..N in the given order, ``file_name`` is the XML's ``<filename>`` (else ``<stem>.jpg``).
    """
    images, annotations = [], []
    category = {name: i + 1 for i, name in enumerate(CLASSES)}
    for image_id, path in enumerate(xml_paths, start=1):
        try:
            root = ET.parse(path).getroot()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: VOC annotation missing") from None
        except ET.ParseError as err:
            raise DataError(f"{path}: not valid XML ({err})") from None
        try:
            width = int(float(root.findtext("size/width", "")))
            height = int(float(root.findtext("size/height", "")))
        except ValueError:
            raise DataError(f"{path}: <size> needs numeric <width> and <height>") from None
        file_name = (root.findtext("filename") or f"{path.stem}.jpg").strip()
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for k, obj in enumerate(root.findall("object"), start=1):
            what = f"object {k}"
            name = _text(obj, "name", path, what)
            if name not in category:
                raise DataError(f"{path}: {what} has class {name!r}, not one of the 20 VOC classes")
            xmin, ymin = _coord(obj, "xmin", path, what) - 1, _coord(obj, "ymin", path, what) - 1
            xmax, ymax = _coord(obj, "xmax", path, what), _coord(obj, "ymax", path, what)
            w, h = xmax - xmin, ymax - ymin
            if w <= 0 or h <= 0:
                raise DataError(f"{path}: {what} ({name}) has an empty box: xmin {xmin + 1} xmax {xmax} ymin {ymin + 1} ymax {ymax}")
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category[name],
                "bbox": [xmin, ymin, w, h],
                "area": w * h,
                "iscrowd": 0,
                "ignore": 0,
                "segmentation": [],
            })
    categories = [{"supercategory": "none", "id": i, "name": n} for n, i in category.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _split_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    try:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: VOC segmentation split list missing") from None
    if not ids:
        raise DataError(f"{path}: lists no images")
    return ids


def load(cfg: DataConfig) -> SourceData:
    root = locate(cfg)
    splits = {}
    for split in ("train", "val"):
        ids = _split_ids(root, split)
        xmls = [root / "Annotations" / f"{i}.xml" for i in ids]
        coco = voc_to_coco(xmls)
        boxes: dict[int, list[Box]] = {im["id"]: [] for im in coco["images"]}
        for a in coco["annotations"]:
            boxes[a["image_id"]].append(Box(*a["bbox"], class_id=a["category_id"] - 1))
        splits[split] = [
            Item(
                f"JPEGImages/{i}.jpg",
                root / "JPEGImages" / f"{i}.jpg",
                mask=root / "SegmentationClass" / f"{i}.png",
                boxes=tuple(boxes[image_id]),
            )
            for image_id, i in enumerate(ids, start=1)
        ]
    return SourceData(list(CLASSES), splits, frozenset({"seg", "det"}), f"data.name voc ({root})", root=root)
