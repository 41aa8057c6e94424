"""Shared fixtures: tiny params and a tiny prepared dataset on disk (generated, never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.config import Params, parse_params
from src.data.degrade import degrade_folder
from src.data.prepare import prepare_dataset

TINY = {
    "seeds": [0, 1],  # the tiny study trains two seeds (the seed axis of dvc.yaml)
    "device": "cpu",
    "data": {"seed": 3, "synthetic": {"num_train": 16, "num_val": 8, "image_size": 32, "max_objects": 2}},
    "sr": {"n_blocks": 1, "n_feats": 8},
    "pretrain_sr": {"epochs": 1, "batch_size": 8},
    "train": {"epochs": 2, "batch_size": 8, "sr4ir": {"warmup_epochs": 1}},
    "cls": {"epochs": 0},  # every task trains train.epochs, whatever its embedded default (cls: 8)
    "det": {"epochs": 0},
    "eval": {"batch_size": 8, "psnr_crop_border": 2},
}


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return parse_params(TINY, "tiny")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_params) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    raw, lr = root / "raw", root / "lr"
    prepare_dataset(tiny_params.data, raw)
    degrade_folder(raw, lr, tiny_params.degrade)
    return raw, lr


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """A copy of the repository with tiny params after one full `dvc repro`, built once per session
    (tests/test_pipeline_e2e.py edits it in place; tests/test_nothing_lost.py copies it first)."""
    from tests.test_pipeline_e2e import build_tiny_study

    return build_tiny_study(tmp_path_factory.mktemp("proj") / "repo")
