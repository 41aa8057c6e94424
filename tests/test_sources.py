"""Real datasets (src/data/sources): each source format on a tiny archive or folder built here, converted
into the canonical layout and read back by the tasks' own loaders. No network beyond 127.0.0.1."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from src.config import ClsConfig, ConfigError, DataConfig, DetConfig, SegConfig, parse_params
from src.data import fetch
from src.errors import DataError
from src.data.prepare import prepare_dataset
from src.data.sources import cars, voc
from src.data.sources.common import Box, crop_for, resize_crop_boxes, resize_crop_image, resize_crop_mask
from src.data.targets import targets_for
from src.tasks.cls import ClassificationTask
from src.tasks.det import DetectionTask
from src.tasks.seg import SegmentationTask
from tests.test_fetch import make_tar, make_zip

SIZE = 16


# ---------------------------------------------------------------------------------------------
# Builders


def _rgb(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _palette_mask(arr: np.ndarray) -> bytes:
    """A VOC-style palette PNG holding the indices ``arr``."""
    im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.astype(np.uint8).tobytes())
    im.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
    return _png_bytes(im)


def _voc_xml(stem: str, w: int, h: int, objects: list[tuple]) -> bytes:
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>{t}</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1, t, d in objects
    )
    return (f"<annotation><folder>VOC2012</folder><filename>{stem}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>").encode()


# (stem, width, height, objects (name, xmin, ymin, xmax, ymax, truncated, difficult))
VOC_SAMPLES = {
    "train": [
        ("2007_000032", 40, 30, [("aeroplane", 5, 4, 30, 20, 0, 0), ("person", 1, 1, 4, 30, 1, 1)]),
        ("2007_000039", 30, 40, [("tvmonitor", 3, 10, 28, 35, 0, 0)]),
        ("2008_000008", 32, 32, []),
    ],
    "val": [
        ("2007_000033", 36, 24, [("dog", 10, 2, 25.5, 20, 0, 1), ("cat", 1, 1, 5, 24, 1, 0)]),
        ("2007_000042", 24, 24, [("bird", 2, 2, 20, 20, 0, 0)]),
    ],
}


def _voc_files() -> dict[str, bytes]:
    base = "VOCdevkit/VOC2012"
    files = {}
    for split, samples in VOC_SAMPLES.items():
        files[f"{base}/ImageSets/Segmentation/{split}.txt"] = "".join(f"{s[0]}\n" for s in samples).encode()
        for k, (stem, w, h, objs) in enumerate(samples):
            files[f"{base}/JPEGImages/{stem}.jpg"] = _png_bytes(_rgb(w, h, k), "JPEG")
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1 + k
            mask[0, :] = 255
            files[f"{base}/SegmentationClass/{stem}.png"] = _palette_mask(mask)
            files[f"{base}/Annotations/{stem}.xml"] = _voc_xml(stem, w, h, objs)
    files[f"{base}/ImageSets/Main/train.txt"] = b"ignored\n"
    return files


def _tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    return make_tar(path, files, mode)


_zip = make_zip


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


CAR_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "BMW M3 Coupe 2012"]


def _cars_files() -> dict[str, bytes]:
    files = {"car_data/anno_train.csv": b"", "car_data/names.csv": b""}
    for split, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(CAR_CLASSES):
            for i in range(n):
                files[f"car_data/car_data/{split}/{name}/{c:02d}{i:03d}.jpg"] = _png_bytes(_rgb(30 + i, 20, c * 10 + i), "JPEG")
    return files


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]


def _cub_files() -> dict[str, bytes]:
    files, images, labels, split = {}, [], [], []
    for k in range(1, 7):
        c = (k - 1) % 2
        rel = f"{CUB_CLASSES[c]}/{CUB_CLASSES[c][4:]}_{k:04d}_{k}.jpg"
        files[f"CUB_200_2011/images/{rel}"] = _png_bytes(_rgb(20 + k, 18, k), "JPEG")
        images.append(f"{k} {rel}")
        labels.append(f"{k} {c + 1}")
        split.append(f"{k} {1 if k <= 4 else 0}")
    files["CUB_200_2011/images.txt"] = ("\n".join(images) + "\n").encode()
    files["CUB_200_2011/image_class_labels.txt"] = ("\n".join(labels) + "\n").encode()
    files["CUB_200_2011/train_test_split.txt"] = ("\n".join(split) + "\n").encode()
    files["CUB_200_2011/classes.txt"] = "".join(f"{i + 1} {n}\n" for i, n in enumerate(CUB_CLASSES)).encode()
    files["attributes.txt"] = b""
    return files


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple[Path, str, list[str]]]:
    """A folder served over HTTP on 127.0.0.1: (folder, base URL, request paths seen)."""
    root = tmp_path / "www"
    root.mkdir()
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), image_size=SIZE, **kw)


def _names(split_dir: Path) -> list[str]:
    return sorted(p.stem for p in (split_dir / "images").glob("*.png"))


def _sources(split_dir: Path) -> dict[str, str]:
    with (split_dir / "sources.csv").open(newline="") as f:
        return {row["id"]: row["source"] for row in csv.DictReader(f)}


def _check_images(split_dir: Path, count: int) -> list[str]:
    names = _names(split_dir)
    assert names == [f"{i:06d}" for i in range(count)]
    for n in names:
        with Image.open(split_dir / "images" / f"{n}.png") as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"
    return names


# ---------------------------------------------------------------------------------------------
# Geometry


def test_resize_and_centre_crop_match_torchvision():
    import torchvision.transforms.functional as TF

    for w, h in [(40, 30), (30, 41), (16, 16), (8, 100), (500, 375)]:
        im = _rgb(w, h, w)
        c = crop_for(w, h, SIZE)
        assert min(c.new_w, c.new_h) == SIZE
        ours = np.asarray(resize_crop_image(im, c))
        ref = np.asarray(TF.center_crop(TF.resize(im, SIZE, antialias=True), SIZE))
        assert np.array_equal(ours, ref), (w, h)


def test_boxes_are_scaled_clipped_and_dropped_when_degenerate():
    c = crop_for(40, 20, 10)  # resize x0.5 to 20x10, keep x in [5, 15)
    assert (c.new_w, c.new_h, c.left, c.top) == (20, 10, 5, 0)
    boxes = [
        Box(12, 2, 8, 10, class_id=3),  # inside: x 6..10 -> 1..5, y 1..6
        Box(0, 0, 16, 4, class_id=1),  # left part cut: x 0..8 -> -5..3 -> clipped 0..3
        Box(0, 0, 6, 20, class_id=2),  # entirely in the cropped-away border: dropped
        Box(8, 0, 2.6, 20, class_id=4),  # 0.3 px left after the crop: dropped
        Box(20, 0, 20, 20, class_id=5, iscrowd=1),  # right part cut at the image edge
    ]
    out = resize_crop_boxes(boxes, 40, 20, c)
    assert [(b.x, b.y, b.w, b.h, b.class_id, b.iscrowd) for b in out] == [
        (1.0, 1.0, 4.0, 5.0, 3, 0),
        (0.0, 0.0, 3.0, 2.0, 1, 0),
        (5.0, 0.0, 5.0, 10.0, 5, 1),
    ]
    for b in resize_crop_boxes([Box(0.1 * k, 0.3, 40 - 0.1 * k, 19.7, 0) for k in range(50)], 40, 20, crop_for(40, 20, 7)):
        assert b.x + b.w <= 7 and b.y + b.h <= 7  # exact: the task's loader refuses boxes past the edge


def test_mask_resize_is_nearest_and_follows_the_image_crop():
    mask = np.zeros((20, 40), np.uint8)
    mask[:, 20:] = 2
    mask[0:2, :] = 255
    c = crop_for(40, 20, 10)
    out = resize_crop_mask(mask, c)
    assert out.shape == (10, 10) and set(np.unique(out).tolist()) == {0, 2, 255}  # no blended values
    assert (out[5, :5] == 0).all() and (out[5, 5:] == 2).all()  # the 0|2 edge sits at x=20 -> 10 - left 5
    assert (out[0] == 255).all() and (out[1:] != 255).all()


# ---------------------------------------------------------------------------------------------
# VOC


def test_voc_to_coco_matches_the_official_conversion(tmp_path):
    xml = tmp_path / "2008_000008.xml"
    xml.write_bytes(_voc_xml("2008_000008", 500, 442, [
        ("horse", 53, 87, 471, 420, 0, 0),
        ("person", 158, 44, 289, 167, 1, 1),  # truncated and difficult: kept as ordinary ground truth
        ("person", "273.5", 10, 300, 20.9, 0, 0),  # decimals are truncated, as voc2coco.py does
    ]))
    empty = tmp_path / "2008_000009.xml"
    empty.write_bytes(_voc_xml("2008_000009", 10, 10, []))
    out = tmp_path / "instances.json"
    out.write_text(json.dumps(voc.voc_to_coco([xml, empty])))
    coco = COCO(str(out))
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(voc.CLASSES)
    assert sorted(coco.getCatIds()) == list(range(1, 21))
    assert coco.loadImgs([1, 2]) == [
        {"id": 1, "file_name": "2008_000008.jpg", "width": 500, "height": 442},
        {"id": 2, "file_name": "2008_000009.jpg", "width": 10, "height": 10},
    ]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [(a["id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in anns] == [
        (1, 13, [52, 86, 419, 334], 419 * 334, 0),  # horse is the 13th VOC class
        (2, 15, [157, 43, 132, 124], 132 * 124, 0),
        (3, 15, [272, 9, 28, 11], 28 * 11, 0),
    ]
    assert coco.getAnnIds(imgIds=[2]) == []


def test_voc_bad_xml_names_the_file_and_object(tmp_path):
    bad = tmp_path / "a.xml"
    bad.write_bytes(_voc_xml("a", 10, 10, [("car", 1, 1, 5, 5, 0, 0), ("unicorn", 1, 1, 5, 5, 0, 0)]))
    with pytest.raises(DataError, match=r"a\.xml: object 2 has class 'unicorn'"):
        voc.voc_to_coco([bad])
    bad.write_bytes(_voc_xml("a", 10, 10, [("car", 6, 1, 5, 5, 0, 0)]))
    with pytest.raises(DataError, match=r"a\.xml: object 1 \(car\) has an empty box"):
        voc.voc_to_coco([bad])
    bad.write_text("<annotation><size>")
    with pytest.raises(DataError, match=r"a\.xml: not valid XML"):
        voc.voc_to_coco([bad])


def test_voc_download_convert_and_load(tmp_path, http_root):
    www, base, seen = http_root
    archive = _tar(www / "VOCtrainval.tar", _voc_files())
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    cfg = _cfg(tmp_path, name="voc", voc_url=f"{base}/VOCtrainval.tar", voc_md5=md5)
    raw = tmp_path / "raw"

    assert prepare_dataset(cfg, raw, ["seg", "det"]) == {"train": 3, "val": 2}
    assert seen == ["/VOCtrainval.tar"]
    assert (tmp_path / "cache" / "VOCtrainval.tar").is_file()  # cached for the next run
    assert json.loads((raw / "classes.json").read_text()) == list(voc.CLASSES)
    for split, samples in VOC_SAMPLES.items():
        split_dir = raw / split
        names = _check_images(split_dir, len(samples))
        assert not (split_dir / "labels.csv").exists()  # VOC has no image-level labels
        assert sorted(_sources(split_dir).values()) == sorted(f"JPEGImages/{s[0]}.jpg" for s in samples)
        masks = targets_for(SegmentationTask(SegConfig(), 20)).load(split_dir, names)
        for p in masks:
            values = set(np.unique(np.asarray(Image.open(p))).tolist())
            assert values <= {0, 1, 2, 3, 255} and 0 in values
        targets = targets_for(DetectionTask(DetConfig(), 20)).load(split_dir, names)
        coco = COCO(str(split_dir / "instances.json"))
        assert sorted(coco.getImgIds()) == list(range(1, len(samples) + 1))
        assert sorted(a["id"] for a in coco.loadAnns(coco.getAnnIds())) == list(range(1, len(coco.getAnnIds()) + 1))
        by_source = {src: t for src, t in zip((_sources(split_dir)[n] for n in names), targets)}
        for stem, w, h, objs in samples:
            t = by_source[f"JPEGImages/{stem}.jpg"]
            ints = [(n, *(int(float(v)) for v in xyxy)) for n, *xyxy, _t, _d in objs]
            boxes = [Box(x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1, voc.CLASSES.index(n)) for n, x0, y0, x1, y1 in ints]
            kept = resize_crop_boxes(boxes, w, h, crop_for(w, h, SIZE))
            assert t["labels"].tolist() == [b.class_id + 1 for b in kept]
            want = np.array([[b.x, b.y, b.x + b.w, b.y + b.h] for b in kept]).reshape(-1, 4)
            np.testing.assert_allclose(t["boxes"].numpy(), want, atol=1e-4)
            assert (t["boxes"] >= 0).all() and (t["boxes"] <= SIZE).all()
    # The person at x 1..4 of the 40x30 image lies in the 2 px cut from the left: dropped, not clipped to a sliver.
    src = _sources(raw / "train")
    first = next(n for n in _names(raw / "train") if src[n].endswith("2007_000032.jpg"))
    assert targets_for(DetectionTask(DetConfig(), 20)).load(raw / "train", [first])[0]["labels"].tolist() == [1]
    # The 40x30 image becomes 21x16 (x scale 21/40, y 16/30) and loses 2 px on the left: the aeroplane,
    # COCO xyxy (4, 3, 30, 20), lands at x 4*0.525-2 .. 30*0.525-2, y 3*16/30 .. 20*16/30 (3 decimals).
    box = targets_for(DetectionTask(DetConfig(), 20)).load(raw / "train", [first])[0]["boxes"][0].tolist()
    assert box == pytest.approx([0.1, 1.6, 13.75, 10.667], abs=1e-5)

    # A second run finds the archive and the extracted folder: no request.
    prepare_dataset(cfg, tmp_path / "raw2", ["seg"])
    assert seen == ["/VOCtrainval.tar"]
    assert (raw / "train/images/000001.png").read_bytes() == (tmp_path / "raw2/train/images/000001.png").read_bytes()


def test_voc_wrong_checksum_fails_and_keeps_nothing(tmp_path, http_root, monkeypatch):
    monkeypatch.setattr(fetch, "_sleep", lambda s: None)
    www, base, _ = http_root
    _tar(www / "VOCtrainval.tar", _voc_files())
    cfg = _cfg(tmp_path, name="voc", voc_url=f"{base}/VOCtrainval.tar", voc_md5="0" * 32)
    with pytest.raises(fetch.ChecksumError, match="md5 expected 0{32}"):
        prepare_dataset(cfg, tmp_path / "raw", ["seg"])
    assert not (tmp_path / "raw").exists() and not (tmp_path / "cache" / "VOCtrainval.tar").exists()


def test_voc_already_extracted_needs_no_network_and_names_a_missing_mask(tmp_path):
    files = _voc_files()
    del files["VOCdevkit/VOC2012/SegmentationClass/2007_000042.png"]
    _write(tmp_path / "cache", files)
    cfg = _cfg(tmp_path, name="voc", voc_url="http://127.0.0.1:9/unreachable.tar")
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass/2007_000042\.png: segmentation mask missing"):
        prepare_dataset(cfg, tmp_path / "raw", ["seg", "det"])
    assert not (tmp_path / "raw").exists()  # atomic: nothing half-written


# ---------------------------------------------------------------------------------------------
# Stanford Cars and CUB-200-2011


@pytest.mark.parametrize("placed", ["zip", "extracted"])
def test_stanford_cars_from_zip_or_folder(tmp_path, placed):
    cache = tmp_path / "cache"
    cache.mkdir()
    if placed == "zip":
        _zip(cache / f"{cars.ARCHIVE}.zip", _cars_files())
    else:
        _write(cache, _cars_files())
    raw = tmp_path / "raw"
    assert prepare_dataset(_cfg(tmp_path, name="stanford_cars"), raw, ["cls"]) == {"train": 9, "val": 6}
    assert json.loads((raw / "classes.json").read_text()) == sorted(CAR_CLASSES)
    for split, folder in (("train", "train"), ("val", "test")):
        names = _check_images(raw / split, 9 if split == "train" else 6)
        assert not (raw / split / "masks").exists() and not (raw / split / "instances.json").exists()
        labels = targets_for(ClassificationTask(ClsConfig(), 3)).load(raw / split, names)
        src = _sources(raw / split)
        for n, label in zip(names, labels):
            assert src[n].startswith(f"{folder}/{sorted(CAR_CLASSES)[label]}/")  # test/ became val


def test_stanford_cars_missing_names_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        prepare_dataset(_cfg(tmp_path, name="stanford_cars"), tmp_path / "raw", ["cls"])
    msg = str(err.value)
    assert str(tmp_path / "cache" / "stanford-car-dataset-by-classes-folder.zip") in msg
    assert "kaggle.com/datasets/jutrera/stanford-car-dataset-by-classes-folder" in msg
    assert str(tmp_path / "cache" / "car_data" / "car_data") in msg


def test_cub_from_tgz_with_the_official_split(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _tar(cache / "CUB_200_2011.tgz", _cub_files(), "w:gz")
    raw = tmp_path / "raw"
    assert prepare_dataset(_cfg(tmp_path, name="cub200"), raw, ["cls"]) == {"train": 4, "val": 2}
    assert json.loads((raw / "classes.json").read_text()) == CUB_CLASSES
    seen = {}
    for split, count in (("train", 4), ("val", 2)):
        names = _check_images(raw / split, count)
        labels = targets_for(ClassificationTask(ClsConfig(), 2)).load(raw / split, names)
        src = _sources(raw / split)
        for n, label in zip(names, labels):
            assert src[n].startswith(f"images/{CUB_CLASSES[label]}/")
            seen[int(src[n].rsplit("_", 1)[1].removesuffix(".jpg"))] = split
    assert seen == {1: "train", 2: "train", 3: "train", 4: "train", 5: "val", 6: "val"}


def test_cub_bad_tables_name_the_file(tmp_path):
    files = _cub_files()
    files["CUB_200_2011/image_class_labels.txt"] = b"1 1\n2 2\n3 1\n4 2\n5 1\n"  # id 6 missing
    _write(tmp_path / "cache", files)
    with pytest.raises(DataError, match=r"image_class_labels\.txt: no row for image id 6"):
        prepare_dataset(_cfg(tmp_path, name="cub200"), tmp_path / "raw", ["cls"])
    files["CUB_200_2011/image_class_labels.txt"] = b"1 1\n2 2\n3 1\n4 2\n5 1\n6\n"
    _write(tmp_path / "cache", files)
    with pytest.raises(DataError, match=r"image_class_labels\.txt:6: expected 2 fields"):
        prepare_dataset(_cfg(tmp_path, name="cub200"), tmp_path / "raw", ["cls"])


def test_cub_missing_names_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"place it at .*cache/CUB_200_2011\.tgz.*CUB_200_2011/images\.txt"):
        prepare_dataset(_cfg(tmp_path, name="cub200"), tmp_path / "raw", ["cls"])


def test_max_train_and_max_val_keep_a_seeded_sample(tmp_path):
    _write(tmp_path / "cache", _cars_files())
    cfg = _cfg(tmp_path, name="stanford_cars", max_train=4, max_val=2)
    assert prepare_dataset(cfg, tmp_path / "a", ["cls"]) == {"train": 4, "val": 2}
    prepare_dataset(cfg, tmp_path / "b", ["cls"])
    assert _sources(tmp_path / "a" / "train") == _sources(tmp_path / "b" / "train")  # deterministic
    other = _cfg(tmp_path, name="stanford_cars", max_train=4, max_val=2, seed=1)
    prepare_dataset(other, tmp_path / "c", ["cls"])
    assert _sources(tmp_path / "a" / "train") != _sources(tmp_path / "c" / "train")  # data.seed picks them


# ---------------------------------------------------------------------------------------------
# Bring your own folder


def _folder(root: Path, kinds: set[str], classes: list[str] | None = None) -> Path:
    sizes = {"train": [(20, 14), (14, 20), (16, 16)], "val": [(18, 12)]}
    for split, dims in sizes.items():
        d = root / split
        if "cls" in kinds:
            for k, (w, h) in enumerate(dims):
                _write(d, {f"{['cat', 'dog'][k % 2]}/img{k}.png": _png_bytes(_rgb(w, h, k))})
            continue
        images, anns = [], []
        for k, (w, h) in enumerate(dims):
            _write(d, {f"images/s{k}.jpg": _png_bytes(_rgb(w, h, k), "JPEG")})
            if "seg" in kinds:
                mask = np.full((h, w), 2, np.uint8)
                mask[: h // 2] = 0
                _write(d, {f"masks/s{k}.png": _png_bytes(Image.fromarray(mask))})
            images.append({"id": 100 + k, "file_name": f"s{k}.jpg", "width": w, "height": h})
            if k != 1:  # image 1 has no object: kept, with no boxes
                anns.append({"id": 7 + k, "image_id": 100 + k, "category_id": 9, "bbox": [1, 2, w / 2, h / 2], "iscrowd": 0})
        if "det" in kinds:
            coco = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "kite"}, {"id": 9, "name": "boat"}]}
            (d / "instances.json").write_text(json.dumps(coco))
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes))
    return root


def _folder_cfg(tmp_path: Path, root: Path) -> DataConfig:
    return _cfg(tmp_path, name="folder", folder=str(root))


@pytest.mark.parametrize("kinds", [{"cls"}, {"det"}, {"seg"}, {"seg", "det"}])
def test_folder_layouts_convert_and_load(tmp_path, kinds):
    classes = ["kite", "boat"] if "seg" in kinds else None  # masks alone need classes.json
    root = _folder(tmp_path / "mine", kinds, classes)
    raw = tmp_path / "raw"
    assert prepare_dataset(_folder_cfg(tmp_path, root), raw, sorted(kinds)) == {"train": 3, "val": 1}
    names = {split: _check_images(raw / split, n) for split, n in (("train", 3), ("val", 1))}
    class_names = json.loads((raw / "classes.json").read_text())
    assert class_names == (["cat", "dog"] if kinds == {"cls"} else ["kite", "boat"])
    assert (raw / "train" / "labels.csv").exists() == ("cls" in kinds)
    assert (raw / "train" / "masks").exists() == ("seg" in kinds)
    assert (raw / "train" / "instances.json").exists() == ("det" in kinds)
    for split, ns in names.items():
        src = _sources(raw / split)
        if "cls" in kinds:
            labels = targets_for(ClassificationTask(ClsConfig(), 2)).load(raw / split, ns)
            assert [src[n].split("/")[1] for n in ns] == [class_names[label] for label in labels]
        if "seg" in kinds:
            for p in targets_for(SegmentationTask(SegConfig(), 2)).load(raw / split, ns):
                assert set(np.unique(np.asarray(Image.open(p))).tolist()) == {0, 2}
        if "det" in kinds:
            targets = targets_for(DetectionTask(DetConfig(), 2)).load(raw / split, ns)
            for n, t in zip(ns, targets):
                empty = src[n].endswith("s1.jpg")
                assert t["labels"].tolist() == ([] if empty else [2])  # "boat" is class 1 -> label 2


@pytest.mark.parametrize(("breakage", "error", "pattern"), [
    ("no_mask", FileNotFoundError, r"train/masks/s2\.png: segmentation mask missing"),
    ("unlisted", DataError, r"train/images/extra\.jpg: not listed in .*train/instances\.json"),
    ("listed_missing", FileNotFoundError, r"val/images/s0\.jpg: listed in .*val/instances\.json"),
    ("bad_bbox", DataError, r"train/instances\.json: annotation 7 has bbox \[1, 2\]"),
    ("bad_json", DataError, r"val/instances\.json: not valid JSON"),
    ("mixed", DataError, r"train: holds both images/ and class folders"),
    ("split_mismatch", DataError, r"train/ serves \['det', 'seg'\] but val/ serves \['det'\]"),
    ("mask_size", DataError, r"train/masks/s0\.png: mask is 3x3 but its image is 20x14"),
    ("mask_value", DataError, r"train/masks/s0\.png: mask value 7 is no class"),
    ("no_classes", FileNotFoundError, r"mine/classes\.json: missing"),
])
def test_folder_errors_name_the_file(tmp_path, breakage, error, pattern):
    root = _folder(tmp_path / "mine", {"seg", "det"}, ["kite", "boat"])
    if breakage == "no_mask":
        (root / "train/masks/s2.png").unlink()
    elif breakage == "unlisted":
        _write(root, {"train/images/extra.jpg": _png_bytes(_rgb(8, 8, 0), "JPEG")})
    elif breakage == "listed_missing":
        (root / "val/images/s0.jpg").unlink()
        (root / "val/masks/s0.png").unlink()
        _write(root, {"val/images/t.jpg": _png_bytes(_rgb(8, 8, 0), "JPEG"), "val/masks/t.png": b""})
    elif breakage == "bad_bbox":
        coco = json.loads((root / "train/instances.json").read_text())
        coco["annotations"][0]["bbox"] = [1, 2]
        (root / "train/instances.json").write_text(json.dumps(coco))
    elif breakage == "bad_json":
        (root / "val/instances.json").write_text("{")
    elif breakage == "mixed":
        _write(root, {"train/owl/a.png": _png_bytes(_rgb(8, 8, 0))})
    elif breakage == "split_mismatch":
        for p in (root / "val/masks").iterdir():
            p.unlink()
        (root / "val/masks").rmdir()
    elif breakage == "mask_size":
        (root / "train/masks/s0.png").write_bytes(_png_bytes(Image.fromarray(np.zeros((3, 3), np.uint8))))
    elif breakage == "mask_value":
        (root / "train/masks/s0.png").write_bytes(_png_bytes(Image.fromarray(np.full((14, 20), 7, np.uint8))))
    elif breakage == "no_classes":
        (root / "classes.json").unlink()
        for split in ("train", "val"):
            (root / split / "instances.json").unlink()
    with pytest.raises(error, match=pattern):
        prepare_dataset(_folder_cfg(tmp_path, root), tmp_path / "raw", ["seg"])
    assert not (tmp_path / "raw").exists()


# ---------------------------------------------------------------------------------------------
# Configuration: tasks x dataset


@pytest.mark.parametrize(("name", "tasks", "missing"), [
    ("stanford_cars", ["cls", "seg"], "['seg']"),
    ("cub200", ["det"], "['det']"),
    ("voc", ["cls", "seg", "det"], "['cls']"),
])
def test_a_task_the_dataset_cannot_serve_is_a_config_error(name, tasks, missing):
    with pytest.raises(ConfigError) as err:
        parse_params({"tasks": tasks, "data": {"name": name}}, "params.yaml")
    msg = str(err.value)
    assert msg.startswith("params.yaml: (top level): tasks ")
    assert f"asks for {missing}" in msg and f"data.name {name!r}" in msg


def test_dataset_params_are_validated():
    p = parse_params({"tasks": ["seg", "det"], "data": {"name": "voc", "image_size": 96}})
    assert p.data.hr_size == 96
    with pytest.raises(ConfigError, match=r"data\.image_size \(250\) must be divisible by degrade\.scale \(4\)"):
        parse_params({"tasks": ["cls"], "data": {"name": "cub200", "image_size": 250}})
    with pytest.raises(ConfigError, match=r"params\.yaml: data: data\.folder must name the dataset folder"):
        parse_params({"data": {"name": "folder"}}, "params.yaml")
    with pytest.raises(ConfigError, match=r"params\.yaml: data\.voc_md5"):
        parse_params({"data": {"voc_md5": "not-a-digest"}}, "params.yaml")


def test_folder_without_a_requested_task_is_a_config_error(tmp_path):
    root = _folder(tmp_path / "mine", {"cls"})
    with pytest.raises(ConfigError, match=r"tasks \['cls', 'det'\]: data\.folder .*mine has no boxes"):
        prepare_dataset(_folder_cfg(tmp_path, root), tmp_path / "raw", ["cls", "det"])
    assert not (tmp_path / "raw").exists()
