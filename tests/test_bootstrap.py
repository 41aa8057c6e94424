"""Per-image scores (Metric.per_image / Metric.scorer) and the bootstrap over val images (src/bootstrap.py).

Scoring every image once must give exactly what ``compute()`` reports; a detection resample must score as
COCOeval scores a dataset rebuilt from it, a repeated image counting as a new one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.bootstrap import BootstrapInterval, bootstrap_interval, paired_bootstrap
from src.config import Params
from src.tasks import TASKS
from src.tasks.cls import Top1
from src.tasks.det import CocoMAP
from src.tasks.seg import ConfusionIoU


def test_every_task_exports_per_image_scores_through_its_metric_class():
    for name, task in TASKS.items():
        for attr in ("per_image", "num_images", "scorer"):
            assert callable(getattr(task.metric_class, attr)), (name, attr)
    assert TASKS["cls"](Params().cls, 3).new_metric().__class__ is TASKS["cls"].metric_class


# ---------------------------------------------------------------------------------------------
# Scoring every image once is compute()'s primary number, exactly


def _cls_metric(n: int = 37, seed: int = 0, p_correct: float = 0.6) -> Top1:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 5, n)
    preds = np.where(rng.random(n) < p_correct, target, (target + 1) % 5)
    metric = Top1()
    for lo in range(0, n, 8):  # batches of 8, the last one short
        metric.update(torch.tensor(preds[lo:lo + 8]), torch.tensor(target[lo:lo + 8]))
    return metric


def test_cls_all_images_equal_compute():
    metric = _cls_metric()
    scores = metric.per_image()
    assert scores["correct"].dtype == bool and scores["correct"].shape == (37,)
    assert Top1.scorer(scores)(np.arange(37)) == metric.compute()["top1"]
    assert Top1.num_images(scores) == 37


def _seg_metric(n: int = 11, k: int = 4, seed: int = 0, noise: float = 0.3) -> ConfusionIoU:
    rng = np.random.default_rng(seed)
    metric = ConfusionIoU(k)
    for lo in range(0, n, 4):
        b = min(4, n - lo)
        target = torch.tensor(rng.integers(0, k, (b, 6, 7)))
        target[:, 0, :2] = 255  # not scored
        preds = torch.where(torch.tensor(rng.random((b, 6, 7)) < noise), torch.tensor(rng.integers(0, k, (b, 6, 7))), target % k)
        metric.update(preds, target)
    return metric


def test_seg_all_images_equal_compute():
    metric = _seg_metric()
    scores = metric.per_image()
    conf = scores["confusion"]
    assert conf.shape == (11, 4, 4) and conf.dtype == np.int64
    assert np.array_equal(conf.sum(0), metric.mat.numpy())
    assert conf.sum() == 11 * 6 * 7 - 11 * 2  # every scored pixel, none of the 255s
    assert ConfusionIoU.scorer(scores)(np.arange(11)) == metric.compute()["miou"]
    # a resample is the mIoU of its images' summed matrices, a repeated image counted twice
    index = np.array([3, 3, 0, 7])
    mat = torch.from_numpy(conf[[3, 3, 0, 7]].sum(0))
    ref = ConfusionIoU(4)
    ref.mat = mat
    assert ConfusionIoU.scorer(scores)(index) == ref.compute()["miou"]


CATS = torch.tensor([3, 7, 11])  # COCO category ids: label l is CATS[l - 1]


def _det_batch(rng: np.random.Generator, n: int, hard: bool, start_id: int = 0):
    """``n`` images of 0-4 boxes: detections near each, some with the wrong class or duplicated, spurious
    ones, tied scores, crowd boxes, identical boxes and (hard) images with over 100 detections."""
    preds, targets = [], []
    for i in range(n):
        m = int(rng.integers(0, 5))
        xy = rng.integers(0, 30, (m, 2)).astype(float)
        wh = rng.integers(4, 20, (m, 2)).astype(float)
        if m >= 2 and rng.random() < 0.3:
            xy[1], wh[1] = xy[0], wh[0]
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, 4, m)
        crowd = (rng.random(m) < (0.15 if hard else 0.0)).astype(int)
        d = int(rng.choice([0, 2, 6, 130] if hard else [0, 2, 6]))
        if m:
            src = rng.integers(0, m, d)
            boxes = gt[src] + rng.choice([0.0, 0.0, 0.5, 1.0, 3.0], (d, 1)) * rng.integers(-2, 3, (d, 4))
            dl = np.where(rng.random(d) < 0.85, labels[src], rng.integers(1, 4, d))
        else:
            xy0 = rng.uniform(0, 20, (d, 2))
            boxes, dl = np.concatenate([xy0, xy0 + rng.uniform(2, 10, (d, 2))], 1), rng.integers(1, 4, d)
        scores = rng.choice([0.1, 0.5, 0.9, 1.0], d) if rng.random() < 0.7 else rng.random(d)
        targets.append({"boxes": torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.int64),
                        "image_id": torch.tensor(int(rng.integers(0, 10**6)) if hard else start_id + 5 * i),
                        "area": torch.tensor(wh.prod(1), dtype=torch.float32), "iscrowd": torch.tensor(crowd),
                        "category_ids": CATS})
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      "labels": torch.tensor(dl, dtype=torch.int64), "scores": torch.tensor(scores, dtype=torch.float32)})
    return preds, targets


def _det_metric(n: int = 30, seed: int = 0, hard: bool = True) -> CocoMAP:
    rng = np.random.default_rng(seed)
    metric = CocoMAP()
    for lo in range(0, n, 8):
        metric.update(*_det_batch(rng, min(8, n - lo), hard, start_id=lo * 5))
    return metric


def _rebuilt(metric: CocoMAP, index: np.ndarray) -> float:
    """COCOeval (CocoMAP.compute) on a dataset rebuilt from the images ``index``: each copy a new image, the
    new ids in the order of the old ids (copies of one image together)."""
    index = np.asarray(index)
    ids = np.array(metric.images)
    order = index[np.lexsort((np.arange(len(index)), ids[index]))]
    s = metric.per_image()
    out = CocoMAP()
    out.categories = metric.categories
    for new_id, pos in enumerate(order, start=1):
        out.images.append(new_id)
        for j in np.flatnonzero(s["gt_image"] == pos):
            out.gt.append({"id": len(out.gt) + 1, "image_id": new_id, "category_id": int(s["gt_category"][j]),
                           "bbox": s["gt_bbox"][j].tolist(), "area": float(s["gt_area"][j]), "iscrowd": int(s["gt_crowd"][j])})
        for j in np.flatnonzero(s["dt_image"] == pos):
            out.dt.append({"image_id": new_id, "category_id": int(s["dt_category"][j]), "bbox": s["dt_bbox"][j].tolist(),
                           "score": float(s["dt_score"][j])})
    return out.compute()["map"]


def test_det_all_images_equal_compute_on_a_small_hand_made_set():
    # image 1: one box found exactly, one missed; image 2: a crowd box and a duplicate detection; image 3: nothing
    target = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 32.0]]), "labels": torch.tensor([1, 2]),
         "image_id": torch.tensor(5), "area": torch.tensor([100.0, 120.0]), "iscrowd": torch.tensor([0, 0]), "category_ids": CATS},
        {"boxes": torch.tensor([[5.0, 5.0, 25.0, 25.0], [0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([1, 1]),
         "image_id": torch.tensor(2), "area": torch.tensor([400.0, 1600.0]), "iscrowd": torch.tensor([0, 1]), "category_ids": CATS},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": torch.tensor(9),
         "area": torch.zeros(0), "iscrowd": torch.zeros(0, dtype=torch.int64), "category_ids": CATS},
    ]
    preds = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [21.0, 19.0, 30.0, 30.0]]), "labels": torch.tensor([1, 3]),
         "scores": torch.tensor([0.9, 0.8])},
        {"boxes": torch.tensor([[5.0, 6.0, 25.0, 25.0], [5.0, 5.0, 24.0, 25.0], [1.0, 1.0, 8.0, 8.0]]),
         "labels": torch.tensor([1, 1, 1]), "scores": torch.tensor([0.9, 0.9, 0.4])},
        {"boxes": torch.tensor([[3.0, 3.0, 9.0, 9.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.7])},
    ]
    metric = CocoMAP()
    metric.update(preds[:2], target[:2])
    metric.update(preds[2:], target[2:])
    scores = metric.per_image()
    assert scores["image_id"].tolist() == [5, 2, 9] and scores["dt_image"].tolist() == [0, 0, 1, 1, 1, 2]
    assert scores["gt_bbox"][1].tolist() == [20.0, 20.0, 10.0, 12.0]  # COCO [x, y, w, h], as COCOeval got it
    value = metric.compute()["map"]
    assert 0.0 < value < 100.0
    score = CocoMAP.scorer(scores)
    assert score(np.arange(3)) == value
    for index in ([0, 0, 1], [1, 1, 1, 2], [2], [2, 2], [0]):
        assert score(np.array(index)) == _rebuilt(metric, np.array(index)), index


@pytest.mark.parametrize("seed", range(8))
def test_det_all_images_and_resamples_equal_cocoeval(seed):
    """Random sets with tied scores, crowd boxes, identical boxes and > 100 detections per image: every image
    once is compute(), and a resample is COCOeval on the dataset rebuilt from it."""
    metric = _det_metric(seed=seed, hard=seed % 2 == 0)
    n = len(metric.images)
    score = CocoMAP.scorer(metric.per_image())
    assert score(np.arange(n)) == metric.compute()["map"]
    rng = np.random.default_rng(seed)
    for index in (rng.integers(0, n, n), rng.integers(0, n, 5), np.repeat(np.arange(4), 3)):
        assert score(index) == _rebuilt(metric, index)
    assert score(np.zeros(0, np.int64)) == 0.0  # no images: as compute() with nothing seen
    with pytest.raises(IndexError):
        score(np.array([n]))


def test_det_saved_and_reloaded_scores_give_the_same_numbers(tmp_path):
    from src.utils import save_npz_atomic

    metric = _det_metric(seed=1)
    save_npz_atomic(tmp_path / "s.npz", **metric.per_image())
    with np.load(tmp_path / "s.npz") as f:
        loaded = dict(f)
    assert CocoMAP.scorer(loaded)(np.arange(30)) == metric.compute()["map"]


def test_the_eval_loop_returns_per_image_scores_from_its_own_pass(tiny_data, tiny_params):
    """evaluate_scored: the metrics of ``evaluate`` and per-image scores that give back its primary number."""
    from src.data.dataset import PairedDataset, make_loader
    from src.experiment import build_setup
    from src.loop import evaluate, evaluate_scored
    from src.methods import METHODS
    from src.tasks import build_task

    raw, lr = tiny_data
    for name in ("cls", "seg"):
        task = build_task(name, tiny_params, raw)
        s = build_setup(METHODS["l2t"], tiny_params, task)
        loader = make_loader(PairedDataset(raw, lr, "val", task), 3, False, 0)  # 8 images: batches of 3, 3, 2
        metrics, scores = evaluate_scored(s, loader, torch.device("cpu"), 2)
        metric = task.metric_class
        assert metric.num_images(scores) == 8
        assert metric.scorer(scores)(np.arange(8)) == metrics[task.primary_metric]
        assert evaluate(s, loader, torch.device("cpu"), 2) == metrics


# ---------------------------------------------------------------------------------------------
# The bootstrap


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    scores = _cls_metric(n=200, seed=1).per_image()
    iv = bootstrap_interval("cls", scores, resamples=300, seed=4)
    assert isinstance(iv, BootstrapInterval) and iv.resamples == 300
    assert iv == bootstrap_interval("cls", scores, resamples=300, seed=4)
    assert iv != bootstrap_interval("cls", scores, resamples=300, seed=5)
    assert iv.estimate == Top1.scorer(scores)(np.arange(200))
    assert iv.low < iv.estimate < iv.high
    assert 3.0 < iv.high - iv.low < 25.0  # about 2 * 1.96 * sqrt(p (1 - p) / n) = 13 points
    assert bootstrap_interval("cls", scores, resamples=300, seed=4, level=0.5).high < iv.high
    for task, metric in (("seg", _seg_metric(n=40)), ("det", _det_metric(n=40, hard=False))):
        iv = bootstrap_interval(task, metric.per_image(), resamples=100, seed=0)
        assert iv == bootstrap_interval(task, metric.per_image(), resamples=100, seed=0)
        assert iv.low <= iv.estimate <= iv.high
        assert iv.estimate == metric.compute()[TASKS[task].primary_metric]


@pytest.mark.parametrize("task", ["cls", "seg", "det"])
def test_paired_bootstrap_of_a_method_with_itself_is_exactly_zero(task):
    metric = {"cls": _cls_metric, "seg": _seg_metric, "det": _det_metric}[task]()
    scores = metric.per_image()
    iv = paired_bootstrap(task, scores, dict(scores), resamples=50, seed=2)
    assert (iv.estimate, iv.low, iv.high, iv.resamples) == (0.0, 0.0, 0.0, 50)


def test_a_method_better_on_every_image_gets_an_interval_above_zero():
    rng = np.random.default_rng(0)
    n = 120
    worse = {"correct": rng.random(n) < 0.6}
    better = {"correct": np.ones(n, bool)}  # right wherever the other is, and more
    iv = paired_bootstrap("cls", better, worse, resamples=200)
    assert 0.0 < iv.low <= iv.estimate <= iv.high
    assert paired_bootstrap("cls", worse, better, resamples=200).high < 0.0

    seg = _seg_metric(n=30, noise=0.4).per_image()
    perfect = {"confusion": np.stack([np.diag(m.sum(1)) for m in seg["confusion"]])}  # every pixel right
    assert paired_bootstrap("seg", perfect, seg, resamples=200).low > 0.0

    metric = _det_metric(n=30, hard=False)
    s = metric.per_image()
    exact = {**s, "dt_image": s["gt_image"], "dt_bbox": s["gt_bbox"], "dt_category": s["gt_category"],
             "dt_score": np.ones(len(s["gt_image"]))}  # every box found, nothing else
    assert CocoMAP.scorer(exact)(np.arange(30)) == 100.0
    assert paired_bootstrap("det", exact, s, resamples=100).low > 0.0


def test_mismatched_image_counts_raise():
    a, b = _cls_metric(n=20).per_image(), _cls_metric(n=21).per_image()
    with pytest.raises(ValueError, match="20 and 21 val images"):
        paired_bootstrap("cls", a, b, resamples=10)
    d = _det_metric(n=12, hard=False).per_image()
    with pytest.raises(ValueError, match="different val images"):
        paired_bootstrap("det", d, {**d, "image_id": d["image_id"] + 1}, resamples=10)
    with pytest.raises(ValueError, match="no val images"):
        bootstrap_interval("cls", {"correct": np.zeros(0, bool)}, resamples=10)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval("cls", a, resamples=0)
    with pytest.raises(KeyError, match="unknown task"):
        bootstrap_interval("pose", a, resamples=10)
