"""Two-step training smoke runs of every method on tiny data, and what each method may change."""

import math

import pytest
import torch

from src.data.dataset import PairedDataset, make_loader
from src.engine import build_setup, evaluate, fit, train_one_epoch
from src.methods import METHODS, TABLE_METHODS
from src.tasks import build_task


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()} if net is not None else None


def _changed(before, net):
    return any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.fixture()
def loaders(tiny_data, tiny_params):
    raw, lr = tiny_data
    task = build_task("cls", tiny_params, raw)
    train = make_loader(PairedDataset(raw, lr, "train", task), 8, True, 0, seed=0)
    val = make_loader(PairedDataset(raw, lr, "val", task), 8, False, 0)
    return task, train, val


@pytest.mark.parametrize("name", TABLE_METHODS)
def test_each_method_trains_only_what_it_should(name, loaders, tiny_params):
    task, train, val = loaders
    method = METHODS[name]
    s = build_setup(method, tiny_params, task)
    sr0, rec0 = _state(s.sr), _state(s.rec)
    terms = train_one_epoch(s, train, torch.device("cpu"), [], tdp_on=True, desc="t")
    assert terms and all(math.isfinite(v) for v in terms.values())
    if name == "sr4ir":
        assert {"train/loss_pix", "train/loss_tdp", "train/loss_task_sr", "train/loss_task_hr", "train/loss_task_cqmix"} == set(terms)
    if s.sr is not None:
        assert _changed(sr0, s.sr) == method.trains_sr
    assert _changed(rec0, s.rec) == method.trains_rec
    # Frozen networks carry no gradients at all (not only "left out of the optimiser").
    for net, trains in ((s.sr, method.trains_sr), (s.rec, method.trains_rec)):
        if net is not None and not trains:
            assert all(p.grad is None for p in net.parameters())
    metrics = evaluate(s, val, torch.device("cpu"), psnr_crop=2)
    assert 0.0 <= metrics["top1"] <= 100.0
    assert ("psnr" in metrics) == (method.view != "hr")


def test_sr4ir_phase1_without_tdp_during_warmup(loaders, tiny_params):
    task, train, _ = loaders
    s = build_setup(METHODS["sr4ir"], tiny_params, task)
    terms = train_one_epoch(s, train, torch.device("cpu"), [], tdp_on=False, desc="t")
    assert "train/loss_tdp" not in terms


def test_fit_history_and_callbacks(loaders, tiny_params):
    task, train, val = loaders
    s = build_setup(METHODS["sr4ir"], tiny_params, task)
    seen = []

    class Recorder:
        def on_epoch_end(self, epoch, metrics):
            seen.append((epoch, dict(metrics)))

    hist = fit(s, train, val, 2, torch.device("cpu"), warmup_epochs=1, psnr_crop=2, callbacks=[Recorder()])
    assert [h["epoch"] for h in hist] == [1, 2] and [e for e, _ in seen] == [1, 2]
    assert "train/loss_tdp" not in hist[0] and "train/loss_tdp" in hist[1]  # TDP after the warm-up
    assert {"val/top1", "val/psnr", "time/epoch_s"} <= set(hist[1])


def test_training_is_repeatable_on_cpu(loaders, tiny_params):
    task, _, _ = loaders
    raw_ds = loaders[1].dataset

    def run():
        torch.manual_seed(0)
        s = build_setup(METHODS["sr4ir"], tiny_params, task, mix_seed=1)
        loader = make_loader(raw_ds, 8, True, 0, seed=0)
        train_one_epoch(s, loader, torch.device("cpu"), [], tdp_on=True, desc="t")
        return s.sr.state_dict(), s.rec.state_dict()

    (a_sr, a_rec), (b_sr, b_rec) = run(), run()
    assert all(torch.equal(a_sr[k], b_sr[k]) for k in a_sr)
    assert all(torch.equal(a_rec[k], b_rec[k]) for k in a_rec)


def test_non_finite_loss_stops_before_updating(loaders, tiny_params):
    task, train, _ = loaders
    s = build_setup(METHODS["h2t"], tiny_params, task)
    before = {k: v.clone() for k, v in s.rec.named_parameters()}
    batch = next(iter(train))
    batch.hr[0, 0, 0, 0] = float("nan")
    from src.engine import recogniser_step

    with pytest.raises(FloatingPointError, match="non-finite loss_task"):
        recogniser_step(s, batch, False)
    assert all(torch.equal(before[k], v) for k, v in s.rec.named_parameters())  # no NaN reaches the weights
