"""Unit tests of the method's pieces: EDSR, TDP loss, CQMix, PSNR, loss weighting, schedules."""

import math

import pytest
import torch

from src.config import ClsConfig, SRConfig
from src.cqmix import cqmix, cqmix_mask
from src.optim import cosine_restart, schedule_periods
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
        assert f["layer4"].shape == (2, 512, 2, 2)  # ResNet-10 (as ResNet-18) layer4 at 64 px input
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


def _lrs(sched_opt, n):
    sched, opt = sched_opt
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def _basicsr(t, periods, base, eta_min):
    """BasicSR's CosineAnnealingRestartLR.get_lr, transcribed from its formula (unit restart weights)."""
    cumulative = [sum(periods[: i + 1]) for i in range(len(periods))]
    idx = next(i for i, c in enumerate(cumulative) if t <= c)  # BasicSR: ``iteration <= period``
    restart = 0 if idx == 0 else cumulative[idx - 1]
    return eta_min + 0.5 * (base - eta_min) * (1 + math.cos(math.pi * (t - restart) / periods[idx]))


def test_cosine_restart_is_basicsr_iteration_for_iteration():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    lrs = [lr[0] for lr in _lrs((cosine_restart(opt, [4, 8], eta_min=0.01), opt), 14)]
    for t in range(13):
        assert math.isclose(lrs[t], _basicsr(t, [4, 8], 1.0, 0.01), rel_tol=1e-12), t
    assert lrs[0] == 1.0 and math.isclose(lrs[2], 0.505, abs_tol=1e-12)  # half-way through cycle 1
    assert math.isclose(lrs[4], 0.01, rel_tol=1e-12)  # t = P1 still belongs to cycle 1: eta_min, not a restart
    assert 0.95 < lrs[5] < 1.0  # the restart: the first iteration of cycle 2 (TDP on) at just under the base lr
    assert math.isclose(lrs[12], 0.01) and math.isclose(lrs[13], 0.01)  # past the end: stays at eta_min


def test_each_param_group_anneals_from_its_own_lr_to_eta_min():
    """The seg aux head's 10x group: base 0.2 -> 1e-4 on the same schedule as the 0.02 group."""
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.02)
    lrs = _lrs((cosine_restart(opt, [10], eta_min=1e-4), opt), 11)
    for t, (lo, hi) in enumerate(lrs):
        assert math.isclose(lo, _basicsr(t, [10], 0.02, 1e-4), rel_tol=1e-12)
        assert math.isclose(hi, _basicsr(t, [10], 0.2, 1e-4), rel_tol=1e-12)
    assert math.isclose(lrs[10][1], 1e-4, rel_tol=1e-9)


def test_linear_warmup_ramps_epoch_one_then_starts_the_cosine():
    """The official det recipe: LinearLR(1/N, total_iters=N) over epoch 1, the cosine not stepped meanwhile."""
    n = 5  # iterations per epoch
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    periods = schedule_periods(epochs=4, iters=n, restart_epoch=3, linear_warmup=True)
    assert periods == [2 * n, 1 * n]  # SR4IR: [W - 1, E - W] epochs (the det configs' [2, 27] for W 3, E 30)
    lrs = [lr[0] for lr in _lrs((cosine_restart(opt, periods, 1e-4, warmup_iters=n), opt), 4 * n)]
    torch_ramp = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    linear = torch.optim.lr_scheduler.LinearLR(torch_ramp, start_factor=1 / n, total_iters=n)
    expected = [lr[0] for lr in _lrs((linear, torch_ramp), n)]
    for k in range(n):
        assert math.isclose(lrs[k], expected[k], rel_tol=1e-9), k
    assert math.isclose(lrs[0], 0.02 / n)
    for t in range(3 * n):  # epochs 2..4: the cosine from its iteration 0
        assert math.isclose(lrs[n + t], _basicsr(t, periods, 0.02, 1e-4), rel_tol=1e-12), t
    assert schedule_periods(30, 10, 0, linear_warmup=True) == [300]  # one cycle keeps E epochs: ends above eta_min
    assert schedule_periods(6, 10, 2) == [20, 40] and schedule_periods(6, 10, 0) == [60]


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
