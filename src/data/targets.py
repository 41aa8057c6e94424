"""Task targets on the data side: read from a split's annotations, flipped with their image, collated into a batch.

One class per kind of target (``Task.target_kind``), chosen through ``TARGETS``; the task itself sees a
target only once it is collated (its ``losses``, its metric). What a kind needs to check its files (the
class count) is passed in, by ``targets_for(task)``:

* ``"label"``: ``labels.csv`` (columns id,label), one class id in [0, num_classes) per image;
* ``"mask"``: ``masks/<name>.png``, a single-channel class map of the image's size, values in
  [0, num_classes) (``num_classes`` counts the background) or ``IGNORE``; read lazily, one per sample;
* ``"boxes"``: ``instances.json`` (COCO), one dict of xyxy boxes and labels in [1, num_classes] per image.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from src.data.transforms import Window, crop

IGNORE = 255  # mask value for "not scored" (the segmentation loss and metric skip it)


class Targets(Protocol):
    def load(self, split_dir: Path, names: Sequence[str]) -> list[Any]:
        """One target per name, or an error naming the file and the problem (``src.data.dataset`` drops or reports it)."""
        ...
    def collate(self, targets: list[Any]) -> Any: ...
    def hflip(self, target: Any, width: int) -> Any:
        """``target`` for the image flipped left to right (``width``: the image's width in pixels)."""
        ...
    def crop(self, target: Any, win: Window) -> Any:
        """``target`` for the window ``win`` of its image (padded right/bottom where the image is smaller)."""
        ...


class LabelTargets:
    """Image classification: one class id per image."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def load(self, split_dir: Path, names: Sequence[str]) -> list[int]:
        """The class id of each image from ``labels.csv``; a bad row fails only for the image it labels."""
        path = split_dir / "labels.csv"
        rows: dict[str, list[str | None]] = {}
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
                    raise ValueError(f"{path}: expected a header with columns id,label, got {reader.fieldnames}")
                for row in reader:
                    rows.setdefault(row["id"], []).append(row["label"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing (classification labels)") from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable CSV file ({err})") from None
        out = []
        for n in names:
            found = rows.get(n)
            if not found:
                raise KeyError(f"{path}: no label for image {n!r}")
            if len(set(found)) > 1:
                raise ValueError(f"{path}: image {n!r} has {len(found)} rows with different labels {found}")
            try:
                label = int(found[0])  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(f"{path}: image {n!r} has label {found[0]!r}, not an integer class id") from None
            if not 0 <= label < self.num_classes:
                raise ValueError(f"{path}: image {n!r} has class id {label}, outside [0, {self.num_classes})")
            out.append(label)
        return out

    def collate(self, targets: list[int]) -> torch.Tensor:
        return torch.tensor(targets, dtype=torch.long)

    def hflip(self, target: int, width: int) -> int:
        return target

    def crop(self, target: int, win: Window) -> int:
        return target


class MaskTargets:
    """Semantic segmentation: an (H, W) class map per image; ``num_classes`` includes the background (0)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def load(self, split_dir: Path, names: Sequence[str]) -> list[Path]:
        """Mask paths (read lazily, one per sample), each checked now: it decodes, is a single-channel class
        map of the image's size, and holds only known class ids (~0.1 ms per 64-px mask)."""
        paths = []
        for n in names:
            p = split_dir / "masks" / f"{n}.png"
            mask = self.decode(p)
            image = split_dir / "images" / f"{n}.png"
            try:
                with Image.open(image) as im:
                    width, height = im.size
            except (OSError, SyntaxError, ValueError):  # missing or unreadable: the dataset reports the image
                pass
            else:
                if mask.shape != (height, width):
                    raise ValueError(f"{p}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image.name} "
                                     f"is {width}x{height}")
            paths.append(p)
        return paths

    def decode(self, path: Path) -> np.ndarray:
        """(H, W) uint8 class map, or an error naming the file and the problem."""
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P"):
                    raise ValueError(f"{path}: mask has mode {im.mode}; expected a single-channel class map (L or P)")
                mask = np.asarray(im, dtype=np.uint8)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: segmentation mask missing") from None
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise ValueError(f"{path}: cannot decode mask (truncated or corrupt: {err})") from None
        bad = (mask >= self.num_classes) & (mask != IGNORE)
        if bad.any():
            raise ValueError(f"{path}: class id {int(mask[bad][0])} outside [0, {self.num_classes}) and not {IGNORE}")
        return mask

    def read(self, target: Any) -> torch.Tensor:
        """A loaded target (a mask path) as an (H, W) long tensor; a tensor is returned as it is."""
        if isinstance(target, Path):
            return torch.from_numpy(self.decode(target).copy()).long()
        return target

    def collate(self, targets: list[Any]) -> torch.Tensor:
        return torch.stack([self.read(t) for t in targets])  # (B, H, W) long

    def hflip(self, target: Any, width: int) -> torch.Tensor:
        return self.read(target).flip(-1)

    def crop(self, target: Any, win: Window) -> torch.Tensor:
        return crop(self.read(target), win, fill=IGNORE)  # padding is not scored


class BoxTargets:
    """Object detection: a dict of boxes and labels per image, kept as a list in a batch (torchvision's format)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def load(self, split_dir: Path, names: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        """One dict per image from ``instances.json``: boxes (N, 4) xyxy, labels (N,) in [1, K], and the
        image's COCO id, areas and crowd flags (kept for COCOeval)."""
        path = split_dir / "instances.json"
        try:
            coco = json.loads(path.read_text())
            images = {Path(im["file_name"]).stem: im for im in coco["images"]}
            cat_ids = sorted(c["id"] for c in coco["categories"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing (detection annotations)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a COCO detection file ({err})") from None
        if len(cat_ids) != self.num_classes:
            raise ValueError(f"{path}: {len(cat_ids)} categories, but the dataset has {self.num_classes} classes")
        label_of = {c: i + 1 for i, c in enumerate(cat_ids)}  # contiguous; 0 is the detector's background
        per_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
        for ann in coco.get("annotations", []):
            if ann.get("image_id") not in per_image:
                raise ValueError(f"{path}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}")
            per_image[ann["image_id"]].append(ann)
        out = []
        for n in names:
            if n not in images:
                raise KeyError(f"{path}: no entry for image {n!r}")
            im = images[n]
            boxes, labels, areas, crowd = [], [], [], []
            for ann in per_image[im["id"]]:
                x, y, w, h = ann["bbox"]
                if w <= 0 or h <= 0:
                    raise ValueError(f"{path}: image {n!r}, annotation {ann['id']}: box {ann['bbox']} has zero area")
                if x < 0 or y < 0 or x + w > im["width"] or y + h > im["height"]:
                    raise ValueError(f"{path}: image {n!r}, annotation {ann['id']}: box {ann['bbox']} "
                                     f"lies outside the {im['width']}x{im['height']} image")
                if ann["category_id"] not in label_of:
                    raise ValueError(f"{path}: image {n!r}, annotation {ann['id']}: unknown category {ann['category_id']}")
                boxes.append([x, y, x + w, y + h])
                labels.append(label_of[ann["category_id"]])
                areas.append(float(ann.get("area", w * h)))
                crowd.append(int(ann.get("iscrowd", 0)))
            out.append({
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "image_id": torch.tensor(im["id"], dtype=torch.int64),
                "area": torch.tensor(areas, dtype=torch.float32),
                "iscrowd": torch.tensor(crowd, dtype=torch.int64),
                "category_ids": torch.tensor(cat_ids, dtype=torch.int64),  # label i -> category_ids[i - 1]
            })
        return out

    def collate(self, targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        return list(targets)

    def hflip(self, target: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return {**target, "boxes": boxes}

    def crop(self, target: dict[str, torch.Tensor], win: Window) -> dict[str, torch.Tensor]:
        """Boxes shifted into the window and clipped to it; those left under 1 px wide or high are dropped."""
        boxes = target["boxes"] - torch.tensor([win.left, win.top, win.left, win.top], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, win.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, win.height)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return {**target, "boxes": boxes[keep], "labels": target["labels"][keep], "area": area[keep],
                "iscrowd": target["iscrowd"][keep]}


TARGETS: dict[str, type[LabelTargets] | type[MaskTargets] | type[BoxTargets]] = {
    "label": LabelTargets, "mask": MaskTargets, "boxes": BoxTargets}  # by Task.target_kind


class TargetSpec(Protocol):
    """What ``targets_for`` reads of a task (``src.tasks.base.Task`` has both)."""

    target_kind: str
    num_classes: int


def targets_for(task: TargetSpec) -> Targets:
    """The targets of ``task``: chosen by its ``target_kind``, checked against its ``num_classes``."""
    if task.target_kind not in TARGETS:
        raise KeyError(f"unknown target kind {task.target_kind!r}; choose from {sorted(TARGETS)}")
    return TARGETS[task.target_kind](task.num_classes)
