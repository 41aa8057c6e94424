"""Every task behind the one interface (parametrised over the registry), and the segmentation metric."""

import math

import numpy as np
import pytest
import torch

from src.config import Params, SRConfig
from src.data.dataset import PairedDataset, make_loader
from src.engine import build_setup, evaluate, train_one_epoch
from src.losses import tdp_loss
from src.methods import METHODS
from src.models.sr import build_sr
from src.tasks import TASKS, build_task
from src.tasks.seg import ConfusionIoU

FEATURE_SHAPES = {"cls": {"layer4": (2, 512, 2, 2)}, "seg": {"C5": (2, 960, 4, 4)}}  # at 64 px input


def _task(name: str):
    return TASKS[name](Params().task_config(name), num_classes=8)


def _target(name: str) -> torch.Tensor:
    if name == "cls":
        return torch.tensor([1, 5])
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 10:40, 10:40] = 3
    mask[:, 9, 10:40] = 255
    return mask


@pytest.mark.parametrize("name", sorted(TASKS))
def test_loss_terms_are_named_as_params_expect_and_finite(name):
    task = _task(name)
    terms = task.losses(task.build_model().train(), torch.rand(2, 3, 64, 64), _target(name))
    assert set(terms) == set(Params().task_config(name).loss_weights)
    assert all(math.isfinite(v.item()) for v in terms.values())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tdp_features_have_the_documented_shapes(name):
    task = _task(name)
    rec = task.build_model().eval()
    feats = task.features(rec, torch.rand(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == FEATURE_SHAPES[name]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_sr_phase_gradients_reach_sr_and_not_the_frozen_recogniser(name):
    task = _task(name)
    rec, sr = task.build_model(), build_sr(SRConfig(n_blocks=1, n_feats=8), 4)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    with task.frozen(rec):
        out = sr(lr)
        with torch.no_grad():
            f_hr = task.features(rec, hr)
        loss = tdp_loss(task.features(rec, out), f_hr, Params().task_config(name).tdp_layers)
        loss = loss + sum(task.losses(rec, out, _target(name)).values())
    loss.backward()
    assert all(p.grad is None for p in rec.parameters())
    assert all(p.grad is not None for p in sr.parameters() if p.requires_grad)
    assert rec.training  # restored after the critic context


def test_miou_matches_a_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    preds = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    m = ConfusionIoU(4)
    m.update(preds, target)
    # Kept pixels (target != 255): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,2)
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 1 -> 1/2;
    # class 2: TP 1, FP 1, FN 1 -> 1/3; class 3: absent everywhere -> left out.
    expected = 100 * (1 / 3 + 1 / 2 + 1 / 3) / 3
    out = m.compute()
    assert math.isclose(out["miou"], expected, rel_tol=1e-9)
    assert math.isclose(out["pixel_acc"], 100 * 4 / 7, rel_tol=1e-9)


def test_masks_with_unknown_class_ids_are_rejected_naming_the_file(tmp_path):
    from PIL import Image

    path = tmp_path / "masks" / "000000.png"
    path.parent.mkdir()
    Image.fromarray(np.full((8, 8), 42, np.uint8)).save(path)
    task = _task("seg")
    with pytest.raises(ValueError, match="000000.png: class id 42"):
        task.collate_targets(task.load_targets(tmp_path, ["000000"]))


@pytest.mark.parametrize("method", ["h2t", "sr4ir"])
def test_segmentation_trains_through_the_same_loop(method, tiny_data, tiny_params):
    raw, lr = tiny_data
    task = build_task("seg", tiny_params, raw)
    ds = PairedDataset(raw, lr, "train", task)
    loader = make_loader(ds, 8, True, 0, torch.Generator().manual_seed(0))
    s = build_setup(METHODS[method], tiny_params, task)
    terms = train_one_epoch(s, loader, torch.device("cpu"), [], tdp_on=True, desc="t")
    assert all(math.isfinite(v) for v in terms.values())
    metrics = evaluate(s, make_loader(PairedDataset(raw, lr, "val", task), 8, False, 0), torch.device("cpu"), 2)
    assert 0.0 <= metrics["miou"] <= 100.0
