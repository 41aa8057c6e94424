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
    args = __import__("argparse").Namespace(task="cls", method="h2t")

    pipeline.train.main(args)
    assert run.metrics == {"data/skipped_train": 1, "data/skipped_val": 2, "time/loop_s": 0.0}
    history = json.loads((work / "metrics/train/cls/h2t.json").read_text())
    assert history["skipped"] == {"train": 1, "val": 2}

    run.metrics.clear()
    pipeline.evaluate.main(args)
    metrics = json.loads((work / "metrics/eval/cls/h2t.json").read_text())
    assert metrics["n_skipped"] == 2 and metrics["n_val"] == 6
    assert run.metrics["data/skipped_val"] == 2 and run.metrics["val/n_skipped"] == 2
