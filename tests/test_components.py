"""Unit tests of the method's pieces: EDSR, TDP loss, CQMix, PSNR, loss weighting, schedules."""

import math

import pytest
import torch

from src.config import ClsConfig, SRConfig
from src.cqmix import cqmix, cqmix_mask
from src.optim import cosine_restart
from src.experiment import load_state
from src.losses import tdp_loss
from src.metrics import PSNR
from src.models.sr import EDSR, build_sr
from src.tasks.base import frozen_critic, weighted_sum
from src.tasks.cls import ClassificationTask


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_edsr_output_shape(scale):
    net = EDSR(scale, n_blocks=2, n_feats=8)
    assert net(torch.rand(2, 3, 6, 5)).shape == (2, 3, 6 * scale, 5 * scale)


def test_edsr_state_dict_uses_the_official_key_names():
    keys = set(EDSR(4, n_blocks=2, n_feats=8).state_dict())
    for k in ("sub_mean.weight", "add_mean.bias", "head.0.weight", "body.0.body.0.weight", "body.1.body.2.bias",
              "body.2.weight", "tail.0.0.weight", "tail.0.2.weight", "tail.1.weight"):
        assert k in keys


def test_loading_weights_of_another_scale_names_the_bad_keys(tmp_path):
    path = tmp_path / "x2.pt"
    torch.save(EDSR(2, 1, 8).state_dict(), path)
    with pytest.raises(ValueError, match="x2.pt: SR weights do not fit") as info:
        load_state(EDSR(4, 1, 8), path, "SR")
    assert "tail.0.2" in str(info.value)


def _cls_task():
    return ClassificationTask(ClsConfig(), num_classes=4)


def test_tdp_loss_is_zero_for_identical_features_and_positive_otherwise():
    task = _cls_task()
    rec = task.build_model()
    x = torch.rand(2, 3, 64, 64)
    with frozen_critic(rec):
        f = task.features(rec, x)
        assert f["layer4"].shape == (2, 512, 2, 2)  # ResNet-18 layer4 at 64 px input
        assert tdp_loss(f, task.features(rec, x.clone()), {"layer4": 1.0}).item() == 0.0
        assert tdp_loss(task.features(rec, x + 0.1), f, {"layer4": 1.0}).item() > 0.0


def test_tdp_gradient_reaches_sr_and_not_the_frozen_recogniser():
    task = _cls_task()
    rec, sr = task.build_model(), build_sr(SRConfig(n_blocks=1, n_feats=8), 4)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    flags_before = [p.requires_grad for p in rec.parameters()]
    with frozen_critic(rec):
        assert not rec.training
        loss = tdp_loss(task.features(rec, sr(lr)), task.features(rec, hr), {"layer4": 1.0})
    loss.backward()
    assert all(p.grad is None for p in rec.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sr.parameters() if p.requires_grad)
    assert [p.requires_grad for p in rec.parameters()] == flags_before and rec.training  # restored


def test_tdp_rejects_unknown_layers():
    with pytest.raises(KeyError, match="TDP layers"):
        tdp_loss({"layer4": torch.zeros(1)}, {"layer4": torch.zeros(1)}, {"layer3": 1.0})


def test_cqmix_mask_is_grid_aligned_binary_and_sized_like_the_image():
    mask = cqmix_mask(5, 64, 48, grid=4, p=0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (5, 1, 64, 48)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    cells = mask.unfold(2, 16, 16).unfold(3, 12, 12)  # (B, 1, 4, 4, 16, 12): one block per grid cell
    assert torch.equal(cells.amax(dim=(-1, -2)), cells.amin(dim=(-1, -2)))  # each cell is constant


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_cqmix_fraction_from_sr_is_close_to_p(p):
    mask = cqmix_mask(400, 32, 32, grid=4, p=p, generator=torch.Generator().manual_seed(1))
    assert abs(mask.mean().item() - p) < 0.02  # 6,400 cells: std ~0.006


def test_cqmix_takes_sr_where_mask_is_one_and_hr_elsewhere():
    sr, hr = torch.ones(3, 3, 16, 16), torch.zeros(3, 3, 16, 16)
    assert torch.equal(cqmix(sr, hr, 4, 1.0), sr) and torch.equal(cqmix(sr, hr, 4, 0.0), hr)
    mixed = cqmix(sr, hr, 4, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(mixed[:, 0], mixed[:, 1])  # one mask per sample, shared by the channels


def test_psnr_matches_the_formula_with_border_crop_and_skips_identical_images():
    hr = torch.zeros(2, 3, 12, 12)
    img = hr.clone()
    img[0, :, 2:-2, 2:-2] = 10 / 255  # error inside the kept region only
    img[0, :, :2] = 1.0  # error in the border: must be cropped away
    m = PSNR(crop=2)
    m.update(img, hr)
    assert math.isclose(m.compute()["psnr"], 10 * math.log10(255**2 / 100), rel_tol=1e-9)
    assert m.count == 1  # the identical second image (MSE 0) is left out


def test_weighted_sum_is_strict_about_names():
    terms = {"loss_ce": torch.tensor(2.0), "loss_aux": torch.tensor(1.0)}
    assert weighted_sum(terms, {"loss_ce": 1.0, "loss_aux": 0.5}).item() == 2.5
    with pytest.raises(KeyError):
        weighted_sum(terms, {"loss_ce": 1.0})
    with pytest.raises(KeyError):
        weighted_sum(terms, {"loss_ce": 1.0, "loss_aux": 0.5, "loss_typo": 1.0})


def test_cosine_restart_restarts_at_the_warmup_boundary():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = cosine_restart(opt, [4, 8], eta_min=0.0)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and math.isclose(lrs[2], 0.5, abs_tol=1e-9)  # half-way through period 1
    assert lrs[4] == 1.0  # restart when TDP switches on
    assert math.isclose(lrs[8], 0.5, abs_tol=1e-9)
    assert lrs[12] == 0.0 and lrs[13] == 0.0  # past the end: stays at eta_min instead of crashing


def test_saved_weights_are_the_same_bytes_every_time_and_nothing_else_is_left(tmp_path):
    """DVC hashes model files: the same tensors must give the same file, whatever temporary name was used."""
    from src.utils import save_torch_atomic

    state = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3)}
    out = tmp_path / "sr_pretrained.pt"
    save_torch_atomic(out, state)
    first = out.read_bytes()
    save_torch_atomic(out, state)
    assert out.read_bytes() == first
    direct = tmp_path / "direct" / "sr_pretrained.pt"
    direct.parent.mkdir()
    torch.save(state, direct)
    assert direct.read_bytes() == first  # as if torch.save had written the file in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct", "sr_pretrained.pt"]
    assert torch.equal(torch.load(out)["w"], state["w"])
