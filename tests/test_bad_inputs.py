"""Bad data: each corrupt image or annotation fails naming the file and the problem, or is skipped and counted.

Every case copies the tiny dataset, breaks one thing in it and builds the dataset the way the stages do.
Per-sample problems are dropped with ``on_bad_sample="skip"``; problems of a whole file or folder fail in
both modes. Nothing reaches a DataLoader worker.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.config import ConfigError, Params, parse_params
from src.data import dataset as dataset_mod
from src.data.dataset import PairedDataset, make_loader
from src.errors import DataError
from src.data.degrade import degrade_folder
from src.data.targets import targets_for
from src.tasks import build_task
from tests.conftest import TINY

BAD = "000003"  # the sample each case breaks (train split)
N_TRAIN = 16  # tests/conftest.py TINY


@pytest.fixture
def data(tiny_data, tmp_path) -> tuple[Path, Path]:
    """A private copy of the tiny dataset (32-px HR, x4 LR) to break."""
    raw, lr = tmp_path / "raw", tmp_path / "lr"
    shutil.copytree(tiny_data[0], raw)
    shutil.copytree(tiny_data[1], lr)
    return raw, lr


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 0) -> None:
    channels = {"RGB": 3, "L": 1}[mode]
    arr = np.full((size[1], size[0], channels) if channels > 1 else (size[1], size[0]), value, np.uint8)
    Image.fromarray(arr, mode).save(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def _first_ann(coco: dict, name: str = BAD) -> dict:
    image_id = next(im["id"] for im in coco["images"] if im["file_name"] == f"{name}.png")
    anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
    assert anns, "the tiny dataset gives every image at least one box"
    return anns[0]


def _set_box(bbox: list[float]) -> Callable[[dict], None]:
    return lambda coco: _first_ann(coco).update(bbox=bbox)


def _set_label(value: str) -> Callable[[Path], None]:
    def edit(labels: Path) -> None:
        lines = labels.read_text().splitlines()
        lines = [f"{BAD},{value}" if line.startswith(f"{BAD},") else line for line in lines]
        labels.write_text("\n".join(lines) + "\n")
    return edit


def _drop_row(labels: Path) -> None:
    labels.write_text("".join(line + "\n" for line in labels.read_text().splitlines() if not line.startswith(f"{BAD},")))


@dataclass(frozen=True)
class Case:
    id: str
    task: str | None  # None: image pairs only (SR pre-training)
    breaks: Callable[[Path, Path], None]  # (raw, lr) -> None
    error: type[Exception]
    file: str  # how the message names the file (a path suffix)
    problem: str  # ... and the problem
    per_sample: bool = True  # False: the whole file or folder is bad, an error in both modes


HR = f"train/images/{BAD}.png"
LR = f"lr/train/{BAD}.png"
MASK = f"train/masks/{BAD}.png"

CORPUS = [
    # images
    Case("truncated-hr-png", None, lambda raw, lr: _truncate(raw / HR), DataError, HR, "cannot decode image (truncated or corrupt"),
    Case("random-bytes-png", None, lambda raw, lr: (raw / HR).write_bytes(np.random.default_rng(0).bytes(300)),
         DataError, HR, "cannot decode image (truncated or corrupt"),
    Case("png-header-then-garbage", "cls", lambda raw, lr: (raw / HR).write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 50),
         DataError, HR, "cannot decode image"),
    Case("zero-byte-file", "cls", lambda raw, lr: (raw / HR).write_bytes(b""), DataError, HR, "empty file, 0 bytes"),
    Case("truncated-lr-png", None, lambda raw, lr: _truncate(lr / f"train/{BAD}.png"), DataError, LR, "cannot decode image"),
    Case("missing-lr-twin", "seg", lambda raw, lr: (lr / f"train/{BAD}.png").unlink(), DataError, LR, "LR twin missing"),
    Case("lr-wrong-size", None, lambda raw, lr: _png(lr / f"train/{BAD}.png", (7, 8)), DataError, LR,
         "LR image is 7x8, not the HR size 32x32 divided by an integer scale"),
    Case("lr-other-scale", "cls", lambda raw, lr: _png(lr / f"train/{BAD}.png", (16, 16)), DataError, LR,
         "LR image is 16x16 = HR 32x32 / 2, but the split's scale is 4"),
    Case("hr-not-a-multiple-of-lr", None, lambda raw, lr: _png(raw / HR, (30, 32)), DataError, HR,
         "image is 30x32 but the split's images are 32x32"),
    Case("hr-other-size-same-scale", "det", lambda raw, lr: (_png(raw / HR, (36, 36)), _png(lr / f"train/{BAD}.png", (9, 9))),
         DataError, HR, "image is 36x36 but the split's images are 32x32 (a batch needs one size"),
    Case("1x1-image", None, lambda raw, lr: _png(raw / HR, (1, 1)), DataError, HR,
         "image is 1x1, smaller than the split's scale factor 4"),
    Case("empty-split-folder", None, lambda raw, lr: [p.unlink() for p in (raw / "train/images").glob("*.png")],
         FileNotFoundError, "train/images", "the 'train' split is empty", per_sample=False),
    Case("missing-lr-folder", "cls", lambda raw, lr: shutil.rmtree(lr / "train"), FileNotFoundError, "lr/train",
         "missing (run the degrade stage first)", per_sample=False),
    # segmentation masks
    Case("mask-wrong-size", "seg", lambda raw, lr: _png(raw / MASK, (16, 16), "L"), DataError, MASK,
         "mask is 16x16 but its image 000003.png is 32x32"),
    Case("mask-class-id-42", "seg", lambda raw, lr: _png(raw / MASK, (32, 32), "L", 42), DataError, MASK,
         "class id 42 outside [0, 9) and not 255"),
    Case("mask-rgb", "seg", lambda raw, lr: _png(raw / MASK, (32, 32), "RGB"), DataError, MASK, "mask has mode RGB"),
    Case("mask-missing", "seg", lambda raw, lr: (raw / MASK).unlink(), DataError, MASK, "segmentation mask missing"),
    Case("mask-truncated", "seg", lambda raw, lr: _truncate(raw / MASK), DataError, MASK, "cannot decode mask"),
    # classification labels
    Case("label-unknown-class-id", "cls", lambda raw, lr: _set_label("42")(raw / "train/labels.csv"), DataError,
         "train/labels.csv", f"image '{BAD}' has class id 42, outside [0, 8)"),
    Case("label-negative-class-id", "cls", lambda raw, lr: _set_label("-1")(raw / "train/labels.csv"), DataError,
         "train/labels.csv", "class id -1, outside [0, 8)"),
    Case("label-missing-row", "cls", lambda raw, lr: _drop_row(raw / "train/labels.csv"), DataError,
         "train/labels.csv", f"no label for image '{BAD}'"),
    Case("label-not-an-integer", "cls", lambda raw, lr: _set_label("cat")(raw / "train/labels.csv"), DataError,
         "train/labels.csv", f"image '{BAD}' has label 'cat', not an integer class id"),
    Case("label-conflicting-rows", "cls",
         lambda raw, lr: (raw / "train/labels.csv").write_text((raw / "train/labels.csv").read_text() + f"{BAD},7\n{BAD},6\n"),
         DataError, "train/labels.csv", f"image '{BAD}' has 3 rows with different labels"),
    Case("labels-bad-header", "cls", lambda raw, lr: (raw / "train/labels.csv").write_text("image,class\n000000,1\n"),
         DataError, "train/labels.csv", "expected a header with columns id,label", per_sample=False),
    Case("labels-missing", "cls", lambda raw, lr: (raw / "train/labels.csv").unlink(), FileNotFoundError,
         "train/labels.csv", "missing (classification labels)", per_sample=False),
    Case("classes-json-missing", "cls", lambda raw, lr: (raw / "classes.json").unlink(), FileNotFoundError,
         "raw/classes.json", "missing (run the download stage first)", per_sample=False),
    # detection annotations
    Case("box-zero-area", "det", lambda raw, lr: _edit_json(raw / "train/instances.json", _set_box([4, 4, 0, 5])),
         DataError, "train/instances.json", "has zero area"),
    Case("box-outside-image", "det", lambda raw, lr: _edit_json(raw / "train/instances.json", _set_box([20, 4, 20, 5])),
         DataError, "train/instances.json", "lies outside the 32x32 image"),
    Case("box-unknown-category", "det",
         lambda raw, lr: _edit_json(raw / "train/instances.json", lambda c: _first_ann(c).update(category_id=99)),
         DataError, "train/instances.json", "unknown category 99"),
    Case("image-without-entry", "det",
         lambda raw, lr: _edit_json(raw / "train/instances.json",
                                    lambda c: c.update(images=[im for im in c["images"] if im["file_name"] != f"{BAD}.png"],
                                                       annotations=[a for a in c["annotations"] if a["image_id"] != 4])),
         DataError, "train/instances.json", f"no entry for image '{BAD}'"),
    Case("malformed-json", "det", lambda raw, lr: (raw / "train/instances.json").write_text('{"images": [}'),
         DataError, "train/instances.json", "not a COCO detection file", per_sample=False),
    Case("annotation-for-unknown-image", "det",
         lambda raw, lr: _edit_json(raw / "train/instances.json", lambda c: _first_ann(c).update(image_id=999)),
         DataError, "train/instances.json", "refers to unknown image 999", per_sample=False),
    Case("wrong-number-of-categories", "det",
         lambda raw, lr: _edit_json(raw / "train/instances.json", lambda c: c.update(categories=c["categories"][:3])),
         DataError, "train/instances.json", "3 categories, but the dataset has 8 classes", per_sample=False),
]


def _build(raw: Path, lr: Path, case: Case, mode: str) -> PairedDataset:
    task = build_task(case.task, Params(), raw) if case.task else None
    return PairedDataset(raw, lr, "train", task, on_bad_sample=mode)


def test_the_corpus_is_large_and_every_case_is_distinct():
    assert len(CORPUS) >= 20
    assert len({c.id for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.id)
def test_error_mode_names_the_file_and_the_problem(case, data):
    raw, lr = data
    case.breaks(raw, lr)
    with pytest.raises(case.error) as info:
        _build(raw, lr, case, "error")
    msg = str(info.value)
    assert case.file in msg and case.problem in msg, msg
    assert str(raw.parent) in msg  # the full path, not just a name
    assert "\n" not in msg  # one line: the stage prints it as `error: <msg>`
    if case.per_sample:
        assert "data.on_bad_sample: skip" in msg  # says how to go on without the sample


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.id)
def test_skip_mode_drops_and_counts_the_bad_sample_and_loads_the_rest(case, data):
    raw, lr = data
    case.breaks(raw, lr)
    if not case.per_sample:  # no single sample to drop: the same error as in error mode
        with pytest.raises(case.error, match="."):
            _build(raw, lr, case, "skip")
        return
    ds = _build(raw, lr, case, "skip")
    assert BAD not in ds.names and len(ds) == N_TRAIN - 1
    assert len(ds.skipped) == 1
    file, problem = ds.skipped[0]
    assert file.endswith(case.file) and case.problem in problem
    batch = next(iter(make_loader(ds, len(ds), False, 0)))  # everything left loads and collates
    assert batch.lr.shape == (N_TRAIN - 1, 3, 8, 8) and batch.hr.shape == (N_TRAIN - 1, 3, 32, 32)


def test_several_bad_samples_are_all_reported_and_the_warning_is_one_line(data, caplog):
    raw, lr = data
    _truncate(raw / "train/images/000001.png")
    _set_label("42")(raw / "train/labels.csv")  # 000003
    (lr / "train/000009.png").unlink()
    task = build_task("cls", Params(), raw)
    with pytest.raises(DataError, match=r"000001.png: cannot decode image .*\[3 of 16 'train' samples are bad"):
        PairedDataset(raw, lr, "train", task)  # error is the default
    with caplog.at_level(logging.WARNING, logger="src.data.dataset"):
        ds = PairedDataset(raw, lr, "train", task, on_bad_sample="skip")
    assert [Path(f).name for f, _ in ds.skipped] == ["000001.png", "labels.csv", "000009.png"]
    assert len(ds) == N_TRAIN - 3 and ds.targets == targets_for(task).load(raw / "train", ds.names)
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "\n" not in record.getMessage() and "skipping 3 of 16 'train' samples" in record.getMessage()


def test_a_split_with_only_bad_samples_names_the_folder(data):
    raw, lr = data
    for p in (raw / "val/images").glob("*.png"):
        p.write_bytes(b"")
    with pytest.raises(DataError, match=r"val/images: all 8 'val' samples are bad"):
        PairedDataset(raw, lr, "val", None, on_bad_sample="skip")


def test_the_policy_reaches_the_dataset_as_an_argument_and_training_returns_the_skipped_samples_by_split(data):
    from src.experiment import train_method

    raw, lr = data
    _truncate(raw / HR)
    task = build_task("cls", Params(), raw)
    train = PairedDataset(raw, lr, "train", task, on_bad_sample="skip")
    assert len(train) == N_TRAIN - 1 and len(train.skipped) == 1
    with pytest.raises(DataError):
        PairedDataset(raw, lr, "train", task)  # the default is "error"
    tiny = parse_params({**TINY, "data": {**TINY["data"], "on_bad_sample": "skip"}, "train": {**TINY["train"], "epochs": 2},
                         "tasks": ["cls"]})
    result = train_method(tiny, "cls", "h2t", raw, lr)
    assert {k: len(v) for k, v in result.skipped.items()} == {"train": 1, "val": 0}
    with pytest.raises(ValueError, match=r"data.on_bad_sample: 'ignore' is not one of \['error', 'skip'\]"):
        PairedDataset(raw, lr, "train", task, on_bad_sample="ignore")


def test_a_bad_sample_never_reaches_a_dataloader_worker(data):
    raw, lr = data
    _truncate(raw / HR)
    _png(raw / "train/masks/000005.png", (32, 32), "L", 42)
    task = build_task("seg", Params(), raw)
    with pytest.raises(DataError, match=HR):  # error mode: at construction, in the main process
        PairedDataset(raw, lr, "train", task)
    ds = PairedDataset(raw, lr, "train", task, on_bad_sample="skip")
    loader = make_loader(ds, 4, True, num_workers=2, seed=0)
    seen = sum(len(b.lr) for b in loader)
    assert seen == N_TRAIN - 2


def test_a_file_broken_after_the_check_fails_naming_it(data, monkeypatch):
    raw, lr = data
    monkeypatch.setattr(dataset_mod, "CACHE_BYTES", 0)  # a split too large to keep decoded: read per item
    ds = PairedDataset(raw, lr, "train", None)
    _truncate(lr / f"train/{ds.names[0]}.png")
    with pytest.raises(ValueError, match=rf"lr/train/{ds.names[0]}.png: cannot decode image"):
        ds[0]


def test_kept_pixels_equal_the_files_and_spare_the_decode(data, monkeypatch):
    raw, lr = data
    cached = PairedDataset(raw, lr, "train", None)
    monkeypatch.setattr(dataset_mod, "CACHE_BYTES", 0)
    from_disk = PairedDataset(raw, lr, "train", None)
    assert len(cached._pixels) == len(cached) and not from_disk._pixels
    for i in range(len(cached)):
        for a, b in zip(cached[i][:2], from_disk[i][:2]):
            assert a.dtype == b.dtype and torch.equal(a, b)
    before = cached[0][1].clone()
    _truncate(lr / f"train/{cached.names[0]}.png")  # kept pixels: no epoch reads the file again
    assert torch.equal(cached[0][1], before)


def test_degrade_leaves_an_unreadable_hr_image_to_the_dataset(data, tmp_path, tiny_params, caplog):
    raw, _ = data
    _truncate(raw / HR)
    _png(raw / "train/images/000004.png", (30, 30))  # not divisible by the scale
    with caplog.at_level(logging.WARNING, logger="src.data.degrade"):
        n = degrade_folder(raw, tmp_path / "lr2", tiny_params.degrade)
    assert n == N_TRAIN + 8 - 2
    assert "000003.png: cannot decode image" in caplog.text and "000004.png: image size (30, 30) is not divisible" in caplog.text
    with pytest.raises(ValueError, match="000003.png: cannot decode image"):
        degrade_folder(raw, tmp_path / "lr3", tiny_params.degrade, strict=True)
    assert not (tmp_path / "lr3").exists()  # nothing half-written
    ds = PairedDataset(raw, tmp_path / "lr2", "train", None, on_bad_sample="skip")
    assert {Path(f).name for f, _ in ds.skipped} == {"000003.png", "000004.png"}


@pytest.mark.parametrize(("raw_params", "key", "fragment"), [
    ({"data": {"on_bad_sample": "ignore"}}, "data.on_bad_sample", "'error' or 'skip'"),
    ({"data": {"num_workers": -1}}, "data.num_workers", "greater than or equal to 0"),
    ({"data": {"synthetic": {"image_size": 8}}}, "data.synthetic.image_size", "greater than or equal to 16"),
    ({"data": {"name": "imagenet"}}, "data.name", "'synthetic'"),
])
def test_bad_data_params_name_the_key_and_the_allowed_values(raw_params, key, fragment):
    with pytest.raises(ConfigError) as info:
        parse_params(raw_params, "params.yaml")
    assert f"params.yaml: {key}" in str(info.value) and fragment in str(info.value)


class _FakeRun:
    """Stands in for the MLflow stage run: records the metrics a stage logs."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.callback = None

    def log_metrics(self, metrics, step: int = 0) -> None:
        self.metrics.update(metrics)

    def __getattr__(self, name):  # tag_outputs, tag_identity, log_artifact: no-ops
        return lambda *args, **kwargs: None


def test_train_and_evaluate_stages_count_skipped_samples_in_their_metrics(data, tmp_path, monkeypatch):
    import contextlib

    import pipeline.evaluate
    import pipeline.train
    from src.experiment import EvalResult, TrainResult

    raw, lr = data
    _truncate(raw / HR)
    _truncate(raw / "val/images/000002.png")
    _truncate(raw / "val/images/000005.png")
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data/raw").symlink_to(raw)
    (work / "data/lr").symlink_to(lr)
    (work / "params.yaml").write_text("data:\n  on_bad_sample: skip\n")
    monkeypatch.chdir(work)
    run = _FakeRun()

    @contextlib.contextmanager
    def fake_stage_run(*args, **kwargs):
        yield run

    def fake_train(params, task, method, raw, lr, **kwargs):  # what train_method builds, without the training
        t = build_task(task, params, raw)
        mode = params.data.on_bad_sample
        skipped = {s: PairedDataset(raw, lr, s, t, on_bad_sample=mode).skipped for s in ("train", "val")}
        return TrainResult({"rec": {}}, [{"loss": 1.0}], 0.0, skipped)

    def fake_evaluate(params, task, method, raw, lr, model_dir, n_samples=0):
        ds = PairedDataset(raw, lr, "val", build_task(task, params, raw), on_bad_sample=params.data.on_bad_sample)
        return EvalResult({"top1": 50.0, "n_val": len(ds)}, {"class_names": np.array(["a"])}, 0.0, {"val": ds.skipped})

    for module in (pipeline.train, pipeline.evaluate):
        monkeypatch.setattr(module, "stage_run", fake_stage_run)
    monkeypatch.setattr(pipeline.train, "train_method", fake_train)
    monkeypatch.setattr(pipeline.evaluate, "evaluate_method", fake_evaluate)
    monkeypatch.setattr(pipeline.evaluate, "save_npz_atomic", lambda *a, **k: None)
    args = __import__("argparse").Namespace(task="cls", method="h2t", seed=0)

    pipeline.train.main(args)
    assert run.metrics == {"data/skipped_train": 1, "data/skipped_val": 2, "time/loop_s": 0.0}
    history = json.loads((work / "metrics/train/seed0/cls/h2t.json").read_text())
    assert history["skipped"] == {"train": 1, "val": 2}

    run.metrics.clear()
    pipeline.evaluate.main(args)
    metrics = json.loads((work / "metrics/eval/seed0/cls/h2t.json").read_text())
    assert metrics["n_skipped"] == 2 and metrics["n_val"] == 6
    assert run.metrics["data/skipped_val"] == 2 and run.metrics["val/n_skipped"] == 2


# ---------------------------------------------------------------------------------------------
# Images that would become wrong data without a word (src/data/images.py): every reader decodes by one
# policy, or refuses the file by name.

import struct
import zlib

from src.data.images import ImageError, decode_rgb
from src.data.sources import inspect_source, prepare_source


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(width: int, height: int, bit_depth: int, colour: int, rows: bytes | None) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB); ``rows=None``: a header with no real pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    idat = zlib.compress(rows) if rows is not None else zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _bomb(path: Path) -> Path:
    """12000x12000 in the header (2.25 GB of RGB once decoded), a few bytes on disk."""
    path.write_bytes(_raw_png(12000, 12000, 8, 0, None))
    return path


def _rgb16_png(path: Path, arr: np.ndarray) -> Path:
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(arr.shape[0]))
    path.write_bytes(_raw_png(arr.shape[1], arr.shape[0], 16, 2, rows))
    return path


def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    levels = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(levels).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = decode_rgb(tmp_path / "g16.png")
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], np.rint(levels / 257.0).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01  # clipped, 99 % of the pixels were 255


def test_a_16_bit_grey_png_holding_8_bit_levels_decodes_to_exactly_those_levels(tmp_path):
    eight = np.arange(256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(eight * 257).save(tmp_path / "g16.png")
    assert np.array_equal(decode_rgb(tmp_path / "g16.png")[..., 1], eight.astype(np.uint8))


def test_a_16_bit_rgb_png_arrives_as_its_8_bit_levels(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint16) * 257
    rgb = decode_rgb(_rgb16_png(tmp_path / "rgb16.png", arr))
    assert np.array_equal(rgb, (arr // 257).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr"])
def test_grey_bilevel_palette_cmyk_and_ycbcr_decode_as_pillow_converts_them(tmp_path, mode):
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "YCbCr") else "x.png")
    im.save(path)
    with Image.open(path) as back:
        expected = np.asarray(back.convert("RGB"))
    assert np.array_equal(decode_rgb(path), expected)


def test_alpha_is_dropped_when_opaque_and_multiplied_in_otherwise(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert (decode_rgb(tmp_path / "opaque.png") == 200).all()
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 128
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    out = decode_rgb(tmp_path / "alpha.png")
    assert (out[0, 0] == 0).all() and (out[0, 1] == round(200 * 128 / 255)).all() and (out[1:] == 200).all()
    la = np.stack([np.full((4, 4), 90, np.uint8), np.full((4, 4), 0, np.uint8)], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (decode_rgb(tmp_path / "la.png") == 0).all()  # fully transparent: nothing hidden shows


def test_a_palette_image_with_a_transparent_colour_follows_the_alpha_policy(tmp_path):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.info["transparency"] = 1  # colour 1 (red) is transparent
    im.save(tmp_path / "p.png", transparency=1)
    out = decode_rgb(tmp_path / "p.png")
    assert (out == 0).all()  # the red pixels were transparent: black, not red


@pytest.mark.parametrize(("mode", "what"), [("F", "32-bit float pixels"), ("I", "32-bit integer pixels")])
def test_modes_with_no_8_bit_scale_are_refused_by_name(tmp_path, mode, what):
    Image.new(mode, (4, 4)).save(tmp_path / "x.tif")
    with pytest.raises(ImageError, match=rf"x.tif: image mode {mode} \({what}\) is not supported"):
        decode_rgb(tmp_path / "x.tif")


def test_a_decompression_bomb_is_refused_from_its_header_before_any_decoding(tmp_path, monkeypatch):
    bomb = _bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1000
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded the bomb"))
    with pytest.raises(ImageError, match=r"bomb.png: image is 12000x12000 = 144,000,000 pixels, above data.max_pixels "
                                         r"\(50,000,000\): refused before decoding"):
        decode_rgb(bomb, max_pixels=50_000_000)
    with pytest.raises(ImageError, match="above Pillow's decompression-bomb limit"):  # data/raw, data/lr: no params
        decode_rgb(bomb)


def test_a_bomb_in_data_raw_is_a_bad_sample_named_by_the_dataset(data):
    raw, lr = data
    _bomb(raw / HR)
    with pytest.raises(DataError, match=rf"{HR}: image is 12000x12000 .* refused before decoding"):
        PairedDataset(raw, lr, "train", None)
    assert BAD not in PairedDataset(raw, lr, "train", None, on_bad_sample="skip").names


def test_a_16_bit_hr_png_in_data_raw_reaches_the_batch_scaled(data):
    raw, lr = data
    with Image.open(raw / HR) as im:
        eight = np.asarray(im.convert("L"))
    Image.fromarray(eight.astype(np.uint16) * 257).save(raw / HR)
    ds = PairedDataset(raw, lr, "train", None)
    hr = ds[ds.names.index(BAD)][1]
    assert torch.equal(hr[0], torch.from_numpy(eight.copy()).float() / 255.0)


# --- dataset sources (data.name: folder): checked from the headers before any image is converted


def _cls_folder(root: Path, size: tuple[int, int] = (32, 32)) -> Path:
    for split, n in (("train", 3), ("val", 2)):
        for k in range(n):
            d = root / split / ("cat", "dog")[k % 2]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((size[1], size[0], 3), 40 * k, np.uint8)).save(d / f"img{k}.png")
    return root


def _folder_params(root: Path, **data):
    return parse_params({"data": {"name": "folder", "folder": str(root), "image_size": 16, **data}, "tasks": ["cls"]},
                        "params.yaml").data


def test_a_symlink_out_of_the_dataset_folder_is_refused_by_name(tmp_path):
    root = _cls_folder(tmp_path / "ds")
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (32, 32)).save(outside)
    (root / "train/cat/img0.png").unlink()
    (root / "train/cat/img0.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"train/cat/img0.png: a symbolic link to .*elsewhere.png, outside the dataset folder"):
        inspect_source(_folder_params(root), ["cls"])


def test_a_symlinked_class_folder_leading_outside_is_refused(tmp_path):
    root = _cls_folder(tmp_path / "ds")
    other = _cls_folder(tmp_path / "other")
    shutil.rmtree(root / "val/dog")
    (root / "val/dog").symlink_to(other / "val/dog")
    with pytest.raises(DataError, match=r"val/dog/img1.png: a symbolic link to .*other/val/dog/img1.png, outside"):
        inspect_source(_folder_params(root), ["cls"])


def test_a_symlink_inside_the_dataset_folder_is_read(tmp_path):
    root = _cls_folder(tmp_path / "ds")
    (root / "train/cat/img0.png").unlink()
    (root / "train/cat/img0.png").symlink_to(root / "val/cat/img0.png")
    data, chosen = inspect_source(_folder_params(root), ["cls"])
    assert len(chosen["train"]) == 3


def test_a_symlinked_annotation_file_leading_outside_is_refused(tmp_path):
    root = _cls_folder(tmp_path / "ds")
    (tmp_path / "classes.json").write_text('["cat", "dog"]')
    (root / "classes.json").symlink_to(tmp_path / "classes.json")
    with pytest.raises(DataError, match=r"ds/classes.json: a symbolic link to .*outside the dataset folder"):
        inspect_source(_folder_params(root), ["cls"])


def test_a_source_bomb_is_refused_before_anything_is_written(tmp_path):
    root = _cls_folder(tmp_path / "ds")
    _bomb(root / "train/dog/img1.png")
    out = tmp_path / "raw"
    with pytest.raises(DataError, match=r"train/dog/img1.png: image is 12000x12000 .* above data.max_pixels"):
        prepare_source(_folder_params(root), out, ["cls"])
    assert not out.exists()


def test_data_max_pixels_is_the_limit(tmp_path):
    root = _cls_folder(tmp_path / "ds")
    with pytest.raises(DataError, match=r"image is 32x32 = 1,024 pixels, above data.max_pixels \(1,000\)"):
        inspect_source(_folder_params(root, max_pixels=1000), ["cls"])
    inspect_source(_folder_params(root, max_pixels=1024), ["cls"])


def test_an_image_far_below_image_size_is_refused_and_a_smaller_one_warned_once_with_the_count(tmp_path, caplog):
    root = _cls_folder(tmp_path / "ds", size=(8, 6))
    with pytest.raises(DataError, match=r"img\d.png: image is 8x6; its shorter side would be upscaled x2.7 to "
                                        r"data.image_size 16, above data.max_upscale \(2\)"):
        inspect_source(_folder_params(root, max_upscale=2.0), ["cls"])
    with caplog.at_level(logging.WARNING, logger="src.data.sources"):
        inspect_source(_folder_params(root, max_upscale=3.0), ["cls"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per split, with the count
    assert "3 of 3 train images have a shorter side below data.image_size 16 and are upscaled" in warnings[0]


def test_an_unsupported_source_mode_is_refused_naming_the_file(tmp_path):
    root = _cls_folder(tmp_path / "ds")
    (root / "train/cat/img0.png").unlink()
    Image.new("F", (32, 32)).save(root / "train/cat/img0.tif")
    with pytest.raises(DataError, match=r"img0.tif: image mode F \(32-bit float pixels\) is not supported"):
        prepare_source(_folder_params(root), tmp_path / "raw", ["cls"])


def test_a_16_bit_source_is_converted_scaled(tmp_path):
    root = _cls_folder(tmp_path / "ds")
    for p in (root / "train").rglob("*.png"):
        Image.fromarray(np.full((32, 32), 200 * 257, np.uint16)).save(p)
    prepare_source(_folder_params(root), tmp_path / "raw", ["cls"])
    for p in (tmp_path / "raw/train/images").glob("*.png"):
        assert (np.asarray(Image.open(p)) == 200).all()


def test_a_truncated_source_mask_names_the_mask(tmp_path):
    from src.data.sources.common import read_mask

    mask = tmp_path / "m.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)
    mask.write_bytes(b"")
    with pytest.raises(DataError, match=r"m.png: cannot decode mask \(empty file"):
        read_mask(mask, (8, 8), 3)


# ---------------------------------------------------------------------------------------------
# Weights files a stage loads: one line naming the file and the fix, never torch's `weights_only=False` advice

from src.experiment import load_state
from src.models.official import load_official_sr
from src.models.sr import build_sr


def _sr_net():
    return build_sr(parse_params(TINY, "tiny").sr, 4)


class _Code:  # a pickled object: weights_only refuses it, and torch's message would advise weights_only=False
    pass


@pytest.mark.parametrize("breakage", ["truncated", "random-bytes", "empty", "pickled-code", "text"])
def test_corrupt_pipeline_weights_give_one_line_naming_the_file_and_the_fix(tmp_path, breakage):
    path = tmp_path / "sr_pretrained.pt"
    torch.save(_sr_net().state_dict(), path)
    if breakage == "truncated":
        _truncate(path)
    elif breakage == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif breakage == "empty":
        path.write_bytes(b"")
    elif breakage == "pickled-code":
        torch.save({"x": _Code()}, path)
    else:
        path.write_text("not weights\n")
    with pytest.raises(DataError) as info:
        load_state(_sr_net(), path, "SR")
    msg = str(info.value)
    assert msg.startswith(f"{path}: cannot be read as weights") and f"dvc checkout {path}" in msg
    assert "\n" not in msg and "weights_only=False" not in msg and "WeightsUnpickler" not in msg


def test_a_corrupt_release_file_names_it_without_torchs_advice(tmp_path):
    path = tmp_path / "edsr_baseline_x4.pt"
    torch.save({"x": _Code()}, path)
    with pytest.raises(DataError) as info:
        load_official_sr(_sr_net(), path)
    assert str(info.value).startswith(f"{path}: cannot be read as weights") and "weights_only=False" not in str(info.value)


def test_a_stage_prints_the_corrupt_weights_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "w.pt"
    path.write_bytes(b"PK\x03\x04 broken zip")
    code = ("import argparse; from pipeline import _stage; from src.experiment import load_state; "
            "from tests.test_bad_inputs import _sr_net; "
            f"_stage.run(lambda a: load_state(_sr_net(), __import__('pathlib').Path({str(path)!r}), 'SR'), argparse.ArgumentParser())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {path}: " + out.stderr.split(f"{path}: ", 1)[1].strip()]
    assert "Traceback" not in out.stderr and "weights_only" not in out.stderr


# ---------------------------------------------------------------------------------------------
# params.yaml as DVC reads it, and the checks before DVC runs anything (pipeline/check.py)

from src.config import check_params_file, load_params, read_params_file


def _params_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.mark.parametrize(("text", "fragment"), [
    ("degrade:\n  scale: '4'\n", "degrade.scale: a string ('4') was given where a number is expected"),
    ("eval:\n  batch_size: \"100\"\n", "eval.batch_size: a string ('100') was given where a number is expected"),
    ("det:\n  fpn_stages: ['4', 7]\n", "det.fpn_stages: a string ('4') was given where a number is expected"),
    ("train:\n  epochs: 0\n", "train.epochs: Input should be greater than 0"),
    ("tasks: []\n", "tasks must name at least one task"),
    ("seeds: [0]\nseeds: [1]\n", "not valid YAML"),  # DVC refuses a key given twice; so does the pipeline
    ("seed: 3\n", "(top level): seed is not a key: list the study's seeds as seeds: [3]"),  # the one-seed spelling
    ("seeds: [0, 1, 0]\n", "seeds [0, 1, 0] names a seed twice"),
    ("seeds: []\n", "seeds: List should have at least 1 item"),
    ("data: [1, 2\n", "not valid YAML"),
    ("data:\n  max_pixels: 1.0e12\n", "data.max_pixels: Input should be less than or equal to 89478485"),
    ("data:\n  max_upscale: 0.5\n", "data.max_upscale: Input should be greater than or equal to 1"),
])
def test_hostile_params_name_the_key_and_what_happened(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as info:
        load_params(_params_file(tmp_path, text))
    assert fragment in str(info.value) and str(tmp_path / "params.yaml") in str(info.value)


def test_an_empty_params_yaml_is_an_error_naming_the_file_not_a_run_on_defaults(tmp_path):
    for text in ("", "# nothing but a comment\n"):
        with pytest.raises(ConfigError, match=r"params.yaml: empty; it spells out every parameter"):
            load_params(_params_file(tmp_path, text))


def test_the_pipeline_reads_params_as_dvc_does(tmp_path):
    from dvc.utils.serialize import load_yaml

    text = REPO_PARAMS.read_text().replace("  batch_size: 100\n", "  batch_size: 1e9\n", 1)
    path = _params_file(tmp_path, text)
    assert read_params_file(path) == load_yaml(str(path))  # PyYAML read 1e9 as the string '1e9'
    assert load_params(path).eval.batch_size == 10**9


def test_the_check_needs_every_key_set(tmp_path):
    text = REPO_PARAMS.read_text().replace("  max_upscale: 8.0", "  # max_upscale: 8.0", 1)
    with pytest.raises(ConfigError, match=r"params.yaml: data.max_upscale: missing; the file spells out every parameter"):
        check_params_file(_params_file(tmp_path, text))
    assert check_params_file(REPO_PARAMS) == load_params(REPO_PARAMS)


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["train.epochs=0"], "train.epochs: Input should be greater than 0"),
    (["+train.epohcs=3"], "train.epohcs: unknown key"),
    (["degrade.scale='4'"], "degrade.scale: a string ('4') was given"),
])
def test_the_check_applies_dvc_exp_run_overrides_as_dvc_does(tmp_path, monkeypatch, capsys, overrides, fragment):
    from pipeline import check

    (tmp_path / "params.yaml").write_text(REPO_PARAMS.read_text())
    monkeypatch.chdir(tmp_path)
    assert check.run(overrides) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: params.yaml: ") and fragment in err and err.count("\n") == 1
    assert (tmp_path / "params.yaml").read_text() == REPO_PARAMS.read_text()  # checked on a copy


def test_the_check_lists_a_broken_dataset_folder(tmp_path, monkeypatch, capsys):
    from pipeline import check

    text = REPO_PARAMS.read_text().replace("  name: synthetic ", "  name: folder    ", 1)
    (tmp_path / "params.yaml").write_text(text.replace('  folder: ""', f"  folder: {tmp_path / 'nowhere'}", 1))
    monkeypatch.chdir(tmp_path)
    assert check.run() == 2
    assert f"error: {tmp_path / 'nowhere'}: data.folder not found" in capsys.readouterr().err


def test_tune_with_a_storage_it_cannot_open_says_so_in_one_line(tmp_path, capsys):
    from src import tune

    code = tune.main(["--task", "cls", "--n-trials", "0", "--params", str(REPO_PARAMS),
                      "--storage", f"sqlite:///{tmp_path}/no/such/dir/optuna.db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --storage sqlite:///{tmp_path}/no/such/dir/optuna.db: cannot open the Optuna storage")


def test_the_warm_launcher_checks_params_before_dvc_runs(tmp_path):
    """`make repro`'s launcher: with no params.yaml its own message comes first, and DVC never starts."""
    import subprocess
    import sys

    marker = tmp_path / "dvc-ran"
    fake_dvc = tmp_path / "dvc"  # stands in for DVC: records that it was started
    fake_dvc.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake_dvc.chmod(0o755)
    out = subprocess.run([sys.executable, "-m", "pipeline.warm", str(fake_dvc), "repro"], cwd=tmp_path, capture_output=True,
                         text=True, env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 2 and out.stderr.startswith("error: params.yaml: file not found"), out.stderr
    assert not marker.exists()
    (tmp_path / "params.yaml").write_text(REPO_PARAMS.read_text())
    out = subprocess.run([sys.executable, "-m", "pipeline.warm", str(fake_dvc), "exp", "run", "-S", "degrade.scale=3"],
                         cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 2 and "error: params.yaml: degrade.scale: Input should be 2, 4 or 8" in out.stderr
    assert not marker.exists()
