"""Two-step training smoke runs of every method on tiny data, and what each method may change."""

import math

import pytest
import torch

from src.data.dataset import PairedDataset, make_loader
from src.experiment import build_setup
from src.loop import evaluate, fit, train_one_epoch
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
    from src.steps import recogniser_step

    with pytest.raises(FloatingPointError, match="non-finite loss_task"):
        recogniser_step(s, batch, False)
    assert all(torch.equal(before[k], v) for k, v in s.rec.named_parameters())  # no NaN reaches the weights


@pytest.mark.parametrize("arch", ["swinir_light", "swinir_m"])
def test_sr4ir_trains_with_a_swinir_sr_network(arch, loaders, tiny_params):
    """sr.arch switches the SR network for every method; the SR4IR step runs through SwinIR unchanged."""
    from src.config import parse_params
    from src.models.swinir import SwinIR

    raw = tiny_params.model_dump(exclude={"seed"})  # seed: derived from seeds, not a file key
    raw["sr"]["arch"] = arch
    params = parse_params(raw)
    task, train, val = loaders
    s = build_setup(METHODS["sr4ir"], params, task)
    assert isinstance(s.sr, SwinIR) and s.sr.embed_dim == (60 if arch == "swinir_light" else 180)
    sr0 = _state(s.sr)
    batch = next(iter(train))
    from src.data.dataset import Batch
    from src.steps import alternate_step

    small = Batch(lr=batch.lr[:2], hr=batch.hr[:2], target=batch.target[:2])  # SwinIR-M is large for a CPU test
    terms = alternate_step(s, small, True)
    assert all(math.isfinite(float(v.detach())) for v in terms.values())
    assert _changed(sr0, s.sr)
    assert s.sr(small.lr).shape == small.hr.shape


def _without_batchnorm(net):
    for name, child in net.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(net, name, torch.nn.Identity())
        else:
            _without_batchnorm(child)
    return net


def test_phase2_batched_is_the_same_loss_in_one_forward(loaders, tiny_params):
    """train.sr4ir.phase2_batched: one recogniser forward over [SR; HR; CQMix]. Without BatchNorm (whose batch
    statistics are what the approximation changes) it takes the paper's phase-2 step exactly."""
    import copy

    from src.config import parse_params
    from src.steps import alternate_step

    task, train, _ = loaders
    raw = tiny_params.model_dump(exclude={"seed"})  # seed: derived from seeds, not a file key
    raw["train"]["sr4ir"]["phase2_batched"] = True
    batched_params = parse_params(raw)
    torch.manual_seed(0)
    paper = build_setup(METHODS["sr4ir"], tiny_params, task, mix_seed=1)
    _without_batchnorm(paper.rec)
    paper.opt_rec = torch.optim.SGD(paper.rec.parameters(), lr=0.1)
    batched = copy.deepcopy(paper)
    batched.loss = batched_params.train.sr4ir
    batched.opt_rec = torch.optim.SGD(batched.rec.parameters(), lr=0.1)
    calls = []
    batched.rec.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = next(iter(train))
    t_paper = alternate_step(paper, batch, True)
    t_batched = alternate_step(batched, batch, True)
    assert calls == [3 * batch.hr.shape[0]]  # one phase-2 forward (phase 1 runs the critic's features, no forward)
    assert set(t_batched) == {"loss_pix", "loss_tdp", "loss_task_batched"}
    mean3 = (t_paper["loss_task_sr"] + t_paper["loss_task_hr"] + t_paper["loss_task_cqmix"]) / 3
    assert torch.allclose(t_batched["loss_task_batched"], mean3, atol=1e-6)
    for (k, a), b in zip(paper.rec.state_dict().items(), batched.rec.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_phase2_batched_needs_equal_weights(tiny_params):
    from src.config import ConfigError, parse_params

    raw = tiny_params.model_dump(exclude={"seed"})  # seed: derived from seeds, not a file key
    raw["train"]["sr4ir"].update(phase2_batched=True, hr_weight=0.5)
    with pytest.raises(ConfigError, match="phase2_batched needs sr_weight == hr_weight == cqmix_weight"):
        parse_params(raw)
