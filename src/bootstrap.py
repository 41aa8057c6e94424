"""Bootstrap intervals over val images: how precisely one trained run's val score is measured.

The evaluate stage saves the task metric's per-image scores of the whole val split (``Metric.per_image``,
``pipeline.paths.eval_scores``); resampling those images with replacement and recomputing the task's primary
metric (top-1, mIoU, COCO mAP, each by its own rule, ``Metric.scorer``) shows how much the number would move
on another val split of the same size drawn from the same images' distribution: the test-set uncertainty
of that one evaluation. It says nothing about training noise: the networks are fixed, so another seed (or
another CPU) can move a method by much more than this interval (``src.stats`` is the interval over seeds).
The report shows it when the study has a single seed.

* ``bootstrap_interval``: one method's metric; ``paired_bootstrap``: the difference ``a - b`` of two methods
  scored on the same resampled images each time, so what the images share (their difficulty) cancels.
* Resamples: the rows of ``np.random.default_rng(seed).integers(0, n, (resamples, n))``, the same for ``a``
  and ``b``; an image drawn twice counts twice (for detection: as two images).
* The interval is the percentile interval, the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
  resampled values (numpy's linear interpolation); ``estimate`` is the value on the whole split. COCO mAP
  is optimistic on fewer distinct images (its precision envelope is a running maximum), so a detection
  resample scores about half a point above the whole split on average and ``estimate`` sits near ``low``;
  in a paired difference most of that cancels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from src.tasks import TASKS


@dataclass(frozen=True)
class BootstrapInterval:
    estimate: float  # the metric (or the difference a - b) on the whole val split
    low: float  # percentile interval bounds
    high: float
    resamples: int


def bootstrap_interval(task: str, scores: Mapping[str, np.ndarray], resamples: int, seed: int = 0,
                       level: float = 0.95) -> BootstrapInterval:
    """The task's primary metric on the whole val split and its percentile interval over ``resamples``
    resamples of the val images (``scores``: ``dict(np.load(path))`` of an eval scores file)."""
    score, n = _scorer(task, scores)
    index = _resample_sets(n, resamples, seed, level)
    values = np.array([score(i) for i in index])
    return _interval(score(np.arange(n)), values, level)


def paired_bootstrap(task: str, scores_a: Mapping[str, np.ndarray], scores_b: Mapping[str, np.ndarray],
                     resamples: int, seed: int = 0, level: float = 0.95) -> BootstrapInterval:
    """``a - b`` of the task's primary metric on the whole val split, and its percentile interval over
    ``resamples`` resamples of the val images, each scoring both methods on the same images."""
    score_a, n_a = _scorer(task, scores_a)
    score_b, n_b = _scorer(task, scores_b)
    if n_a != n_b:
        raise ValueError(f"paired bootstrap: the two score sets hold {n_a} and {n_b} val images; pairing needs "
                         "the same images (the same val split)")
    if "image_id" in scores_a and "image_id" in scores_b and not np.array_equal(scores_a["image_id"], scores_b["image_id"]):
        raise ValueError("paired bootstrap: the two score sets name different val images (image_id)")
    index = _resample_sets(n_a, resamples, seed, level)
    values = np.array([score_a(i) - score_b(i) for i in index])
    everything = np.arange(n_a)
    return _interval(score_a(everything) - score_b(everything), values, level)


def _scorer(task: str, scores: Mapping[str, np.ndarray]) -> tuple[Callable[[np.ndarray], float], int]:
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    metric = TASKS[task].metric_class
    n = metric.num_images(scores)
    if n == 0:
        raise ValueError(f"{task}: the scores hold no val images")
    return metric.scorer(scores), n


def _resample_sets(n: int, resamples: int, seed: int, level: float) -> np.ndarray:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return np.random.default_rng(seed).integers(0, n, (resamples, n))


def _interval(estimate: float, values: np.ndarray, level: float) -> BootstrapInterval:
    low, high = np.percentile(values, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return BootstrapInterval(float(estimate), float(low), float(high), len(values))
