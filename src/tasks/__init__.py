"""Task registry: ``build_task(name, params)`` is the only place a task is chosen by name."""

from __future__ import annotations

import json
from pathlib import Path

from src.config import Params
from src.tasks.base import Task
from src.tasks.cls import ClassificationTask
from src.tasks.det import DetectionTask
from src.tasks.seg import SegmentationTask

TASKS = {"cls": ClassificationTask, "seg": SegmentationTask, "det": DetectionTask}


def build_task(name: str, params: Params, raw: Path | None = None, *, num_classes: int | None = None) -> Task:
    """The task ``name`` configured by ``params``. Its class count comes from the prepared dataset
    (``raw/classes.json``), or is given as ``num_classes`` by a caller that has no prepared dataset to read
    (the report stage counts the class names saved with the samples; the benchmarks use fixed counts)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    if (raw is None) == (num_classes is None):
        raise TypeError("build_task: give the prepared dataset (raw) or num_classes, not both or neither")
    if num_classes is None:
        classes_file = raw / "classes.json"
        try:
            num_classes = len(json.loads(classes_file.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{classes_file}: missing (run the download stage first)") from None
    return TASKS[name](params.task_config(name), num_classes)
