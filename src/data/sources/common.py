"""What every real-dataset converter shares: the resize/crop, reading and checking files, writing the layout.

A converter (``voc.py``, ``cars.py``, ``cub.py``, ``folder.py``) only lists its samples as ``Item``s with
annotations in the source's own pixel coordinates; ``write_split`` turns them into the canonical layout of
``src/data/prepare.py``. Each image is resized so that its shorter side is ``data.image_size`` (bilinear,
which PIL antialiases when shrinking; masks nearest; torchvision's ``Resize(int)`` rounding), then with
``data.resize: square`` the centre square of that side is kept (``CenterCrop`` rounding: one HR size per
split), or with ``short_side`` (the paper's protocol) the whole resized image (``image_size`` 0: the source
size), which the loaders crop per sample. Boxes are scaled, clipped to the kept window and dropped when less
than ``MIN_BOX_SIDE`` pixels of them remain; images left with no box are kept (the official VOC loader keeps
empty images too).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.errors import DataError
from src.data.archive import safe_extract
from src.data.images import ImageError, decode_rgb, open_checked
from src.utils import progress

# torchvision's ImageFolder extensions (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MIN_BOX_SIDE = 1.0  # pixels, after resize and crop: a thinner sliver of a clipped box is no object to learn
IGNORE = 255  # mask value for "not scored"
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Box:
    """One object, COCO xywh in the source image's pixels; ``class_id`` 0-based."""

    x: float
    y: float
    w: float
    h: float
    class_id: int
    iscrowd: int = 0


@dataclass(frozen=True)
class Item:
    """One source image and the annotations the source has for it (``None``: the source has none of that kind)."""

    source: str  # path relative to the dataset root: the sort key and the provenance written to sources.csv
    image: Path
    label: int | None = None
    mask: Path | None = None
    boxes: tuple[Box, ...] | None = None


@dataclass(frozen=True)
class SourceData:
    """A dataset as listed by a converter, before any image is read."""

    class_names: list[str]
    splits: dict[str, list[Item]]
    tasks: frozenset[str]  # the annotations every item carries: cls (label), seg (mask), det (boxes)
    where: str  # how errors name the dataset, e.g. "data.folder /x/y"
    root: Path | None = None  # the dataset folder: no file it lists may lead outside it (src/data/images.py)


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class Crop:
    """Resize ``(width, height)`` -> ``(new_w, new_h)``, then keep ``width`` x ``height`` from ``(left, top)``."""

    new_w: int
    new_h: int
    left: int
    top: int
    width: int
    height: int

    def scale(self, width: int, height: int) -> tuple[float, float]:
        return self.new_w / width, self.new_h / height


def crop_for(width: int, height: int, size: int, square: bool = True) -> Crop:
    """torchvision's ``Resize(size)`` (short side, long side truncated), then ``CenterCrop(size)`` (``square``)
    or the whole resized image (the paper's protocol); ``size`` 0 with ``square=False`` keeps the image as it is."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} is empty")
    if not size:
        if square:
            raise ValueError("a square crop needs a size")
        return Crop(width, height, 0, 0, width, height)
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if not square:
        return Crop(new_w, new_h, 0, 0, new_w, new_h)
    return Crop(new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0)), size, size)


def resize_crop_image(image: Image.Image, c: Crop) -> Image.Image:
    image = image.convert("RGB")
    resized = image if image.size == (c.new_w, c.new_h) else image.resize((c.new_w, c.new_h), Image.BILINEAR)
    return resized.crop((c.left, c.top, c.left + c.width, c.top + c.height))


def resize_crop_mask(mask: np.ndarray, c: Crop) -> np.ndarray:
    resized = Image.fromarray(mask).resize((c.new_w, c.new_h), Image.NEAREST)
    return np.asarray(resized.crop((c.left, c.top, c.left + c.width, c.top + c.height)), dtype=np.uint8)


def _side(lo: float, hi: float, size: int) -> tuple[float, float]:
    """Clipped, rounded start and length of one box side; ``start + length <= size`` holds exactly."""
    lo, hi = round(min(max(lo, 0.0), size), 3), round(min(max(hi, 0.0), size), 3)
    length = round(hi - lo, 3)
    while lo + length > size:  # float rounding must not put the far edge outside the image
        length = math.nextafter(length, 0.0)
    return lo, length


def resize_crop_boxes(boxes: Iterable[Box], width: int, height: int, c: Crop) -> list[Box]:
    """The boxes in the crop's pixels; those with less than ``MIN_BOX_SIDE`` left are dropped."""
    sx, sy = c.scale(width, height)
    out = []
    for b in boxes:
        x, w = _side(b.x * sx - c.left, (b.x + b.w) * sx - c.left, c.width)
        y, h = _side(b.y * sy - c.top, (b.y + b.h) * sy - c.top, c.height)
        if w >= MIN_BOX_SIDE and h >= MIN_BOX_SIDE:
            out.append(Box(x, y, w, h, b.class_id, b.iscrowd))
    return out


# ---------------------------------------------------------------------------------------------
# Reading sources


def read_image(path: Path) -> Image.Image:
    """The decoded image as 8-bit RGB by the policy of ``src/data/images.py``, or an error naming the file.

    ``data.max_pixels`` and the upscale limit are checked from the headers before this is called
    (``src.data.sources.inspect_source``); Pillow's hard bomb limit still applies here."""
    return Image.fromarray(decode_rgb(path))


def read_mask(path: Path, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """A (H, W) uint8 class map (0 background, 1..K, 255 ignore) of ``size`` (W, H), or an error naming the file."""
    try:
        with open_checked(path) as im:
            if im.mode not in ("L", "P"):
                raise DataError(f"{path}: mask has mode {im.mode}; expected a single-channel 8-bit class map (L or P)")
            mask = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: segmentation mask missing") from None
    except ImageError as err:  # open_checked: empty, unreadable or above a pixel limit
        raise DataError(f"{path}: {err.problem.replace('decode image', 'decode mask')}") from None
    except _DECODE_ERRORS as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot decode mask ({err})") from None
    if mask.shape != (size[1], size[0]):
        raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[0]}x{size[1]}")
    bad = (mask > num_classes) & (mask != IGNORE)
    if bad.any():
        raise DataError(f"{path}: mask value {int(mask[bad][0])} is no class (0 background, 1..{num_classes}, {IGNORE} ignore)")
    return mask


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def image_folder(split_dir: Path) -> dict[str, list[Path]]:
    """``<class>/<image>`` files below ``split_dir`` by class folder name (hidden entries and non-images skipped)."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: folder missing")
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    out = {}
    for d in classes:
        files = sorted(p for p in d.iterdir() if p.is_file() and is_image(p))
        if not files:
            raise DataError(f"{d}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        out[d.name] = files
    if not out:
        raise DataError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    return out


def classification_items(root: Path, split_dir: Path, class_names: Sequence[str]) -> list[Item]:
    """Items of an image-folder tree labelled by ``class_names`` (a folder outside it is an error)."""
    index = {n: i for i, n in enumerate(class_names)}
    items = []
    for cls, files in image_folder(split_dir).items():
        if cls not in index:
            raise DataError(f"{split_dir / cls}: class {cls!r} is not among the dataset's {len(index)} classes")
        items += [Item(p.relative_to(root).as_posix(), p, label=index[cls]) for p in files]
    return items


def find_or_extract(cache_dir: Path, archive_stem: str, rel: str, check: str) -> Path | None:
    """The dataset folder ``rel`` (recognised by its file or folder ``check``) under ``cache_dir``, as the user
    extracted it or from ``cache_dir/<archive_stem>.<zip|tar.gz|tgz|tar>`` (unpacked safely, once, into
    ``cache_dir/extracted/<archive_stem>``); ``None`` when neither is there."""
    extracted = cache_dir / "extracted" / archive_stem
    for root in (cache_dir / rel, extracted / rel):
        if (root / check).exists():
            return root
    if extracted.exists() and any(extracted.iterdir()):
        raise DataError(f"{extracted}: extracted earlier but holds no {rel}/{check}; delete it if the archive was wrong")
    for suffix in ARCHIVE_SUFFIXES:
        archive = cache_dir / f"{archive_stem}{suffix}"
        if archive.is_file():
            safe_extract(archive, extracted)
            if not (extracted / rel / check).exists():
                raise DataError(f"{archive}: unpacked to {extracted}, but it holds no {rel}/{check}")
            return extracted / rel
    return None


def locate_by_hand(cache_dir: Path, archive: str, rel: str, check: str, expect: list[str], what: str, how: str) -> Path:
    """``find_or_extract`` for a dataset the user downloads by hand (``archive``, e.g. ``CUB_200_2011.tgz``);
    when absent, an error saying where to get it (``how``) and where to put it, archived or extracted (so
    that every ``expect`` exists under ``cache_dir/rel``)."""
    root = find_or_extract(cache_dir, archive.split(".", 1)[0], rel, check)
    if root is None:
        place = cache_dir / archive
        exist = " and ".join(str(cache_dir / rel / e) for e in expect)
        raise FileNotFoundError(f"{place}: {what} not found. Download it by hand from {how} and place it at {place}, "
                                f"or extract it so that {exist} exist{'s' if len(expect) == 1 else ''}")
    return root


def read_table(path: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of exactly ``columns`` fields (the last may hold spaces); blank lines skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file ({err})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns:
            raise DataError(f"{path}:{n}: expected {columns} fields, got {line!r}")
        rows.append(fields)
    return rows


def select(items: list[Item], cap: int, seed: int, split_index: int) -> list[Item]:
    """All items (or the first ``cap``) in a fixed, data.seed-shuffled order.

    Sorting first makes the result independent of the file system's listing order; shuffling makes any
    prefix (``max_train``, a tuning ``data_fraction``) a fair sample rather than the first few classes.
    """
    ordered = sorted(items, key=lambda it: it.source)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1000 + split_index]))
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    return shuffled[:cap] if cap else shuffled


# ---------------------------------------------------------------------------------------------
# Writing the layout


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_split(folder: Path, items: Sequence[Item], data: SourceData, size: int, square: bool = True) -> None:
    """``folder/{images,masks}/<id>.png``, ``labels.csv``, ``instances.json`` (those the source has) and
    ``sources.csv`` (id -> source file, so a problem reported on ``000123.png`` can be traced back).
    Each image's short side is resized to ``size`` and its centre square kept (``square``), or its aspect
    ratio kept (``data.resize: short_side``; ``size`` 0: the source size)."""
    num_classes = len(data.class_names)
    (folder / "images").mkdir(parents=True)
    if "seg" in data.tasks:
        (folder / "masks").mkdir()
    names = [f"{i:06d}" for i in range(len(items))]
    images, annotations = [], []
    for image_id, (name, item) in enumerate(progress(list(zip(names, items)), desc=f"convert {folder.name}"), start=1):
        image = read_image(item.image)
        c = crop_for(image.width, image.height, size, square)
        resize_crop_image(image, c).save(folder / "images" / f"{name}.png")
        if "seg" in data.tasks:
            assert item.mask is not None
            mask = read_mask(item.mask, image.size, num_classes)
            Image.fromarray(resize_crop_mask(mask, c)).save(folder / "masks" / f"{name}.png")
        if "det" in data.tasks:
            assert item.boxes is not None
            images.append({"id": image_id, "file_name": f"{name}.png", "height": c.height, "width": c.width})
            for b in resize_crop_boxes(item.boxes, image.width, image.height, c):
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": b.class_id + 1,
                    "bbox": [b.x, b.y, b.w, b.h],
                    "area": b.w * b.h,
                    "iscrowd": b.iscrowd,
                })
    if "cls" in data.tasks:
        (folder / "labels.csv").write_text(_csv(["id", "label"], ((n, it.label) for n, it in zip(names, items))))
    if "det" in data.tasks:
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(data.class_names)]
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (folder / "instances.json").write_text(json.dumps(coco))
    (folder / "sources.csv").write_text(_csv(["id", "source"], ((n, it.source) for n, it in zip(names, items))))
