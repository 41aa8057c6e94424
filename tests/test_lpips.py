"""LPIPS (src.metrics): computed only from a local VGG16 weights file, never downloaded; "n/a" with the reason
in the metrics and the report otherwise."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models import vgg

from src.config import Params
from src.experiment import build_setup
from src.loop import evaluate
from src.data.dataset import PairedDataset, make_loader
from src.experiment import evaluate_method
from src.methods import METHODS
from src.metrics import LPIPS, lpips_network, vgg16_weights_path
from src.report import markdown_table, render_html, render_markdown, results_table
from src.tasks import build_task

WEIGHTS_NAME = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1 file


def fake_vgg16_features() -> dict[str, torch.Tensor]:
    """Random weights under torchvision's vgg16 ``features.*`` names and shapes (the part LPIPS uses)."""
    torch.manual_seed(0)
    return {f"features.{k}": v for k, v in vgg.make_layers(vgg.cfgs["D"]).state_dict().items()}


@pytest.fixture(scope="module")
def weights_home(tmp_path_factory):
    """A TORCH_HOME holding fake VGG16 weights at the exact file name torchvision downloads to (saved in the
    legacy, non-zip format of torchvision's release files)."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    feats = fake_vgg16_features()
    torch.save(feats, home / "hub" / "checkpoints" / WEIGHTS_NAME, _use_new_zipfile_serialization=False)
    return home, feats


@pytest.fixture()
def with_weights(weights_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(weights_home[0]))
    return weights_home


@pytest.fixture()
def without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    return tmp_path / "empty_torch_home"


@pytest.fixture(scope="module")
def net(weights_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(weights_home[0]))
        lp, reason = lpips_network("auto")
    assert reason is None
    return lp


def _images(n: int = 3, size: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 3, size, size, generator=g) * 255).round() / 255  # 8-bit levels, like HR


def test_weights_are_looked_for_in_the_torch_hub_cache(with_weights):
    assert vgg16_weights_path() == with_weights[0] / "hub" / "checkpoints" / WEIGHTS_NAME


def test_trunk_comes_from_the_local_file_and_the_linear_layers_from_the_package(net, weights_home):
    feats = weights_home[1]
    trunk = net.net.state_dict()
    assert torch.equal(trunk["slice1.0.weight"], feats["features.0.weight"])
    assert torch.equal(trunk["slice5.28.bias"], feats["features.28.bias"])
    assert net.version == "0.1" and net.pnet_type == "vgg"
    assert float(net.lin0.model[1].weight.abs().sum()) > 0  # calibrated weights shipped inside lpips
    assert not any(p.requires_grad for p in net.parameters())


def test_identical_images_score_zero_and_are_left_out_of_the_mean(net):
    hr = _images()
    m = LPIPS(0, net)
    m.update(hr, hr)
    assert m.count == 0 and math.isnan(m.compute()["lpips"])
    other = _images(3)[[1, 2, 0]]
    sr = torch.cat([hr[:1], other[1:]])  # image 0 identical, images 1-2 different
    m = LPIPS(0, net)
    m.update(sr, hr)
    assert m.count == 2
    with torch.no_grad():
        each = net(other[1:] * 2 - 1, hr[1:] * 2 - 1).flatten()  # lpips on [-1, 1] inputs
    assert (each > 0).all()
    assert m.compute()["lpips"] == pytest.approx(float(each.mean()), rel=1e-5)


def test_sr_is_quantised_and_chunks_do_not_change_the_mean(net):
    hr = _images(5)
    sr = (hr + 0.3 / 255 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    whole, chunked = LPIPS(2, net), LPIPS(2, net, chunk=2)
    whole.update(sr, hr)
    chunked.update(sr, hr)
    assert whole.compute()["lpips"] == pytest.approx(chunked.compute()["lpips"], rel=1e-5)
    # Noise below half an 8-bit level rounds away: quantised SR equals HR wherever it is that small.
    tiny = LPIPS(0, net)
    tiny.update(hr + 0.4 / 255, hr)
    assert tiny.count == 0


def test_border_crop_is_applied(net):
    hr = _images(2)
    sr = hr.clone()
    sr[..., :2, :] = 1 - sr[..., :2, :]  # differ only in the top 2 rows
    cropped, full = LPIPS(2, net), LPIPS(0, net)
    cropped.update(sr, hr)
    full.update(sr, hr)
    assert cropped.count == 0  # the difference lies in the crop
    assert full.count == 2 and full.compute()["lpips"] > 0


def test_no_weights_file_gives_no_number_and_names_the_missing_path(without_weights):
    net, reason = lpips_network("auto")
    assert net is None
    expected = without_weights / "hub" / "checkpoints" / WEIGHTS_NAME
    assert str(expected) in reason and "IMAGENET1K_V1" in reason and not expected.exists()


def test_a_file_that_is_not_vgg16_is_reported_not_used(tmp_path, monkeypatch):
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    path = tmp_path / "hub" / "checkpoints" / WEIGHTS_NAME
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net, reason = lpips_network("auto")
    assert net is None and str(path) in reason and "does not fit" in reason


def test_off_skips_it_even_with_weights(with_weights):
    assert lpips_network("off") == (None, "eval.lpips: off")


def test_images_too_small_for_vgg_after_the_crop_are_reported_not_crashed(with_weights, net):
    lp, reason = lpips_network("auto", image_size=(20, 32), crop=3)
    assert lp is None and "14x26 px after the 3-px border crop" in reason
    assert lpips_network("auto", image_size=(20, 32), crop=2)[1] is None  # 16 px: enough
    with pytest.raises(ValueError, match="after the 3-px crop"):
        LPIPS(3, net).update(_images(1, 20), _images(1, 20))


# ------------------------------------------------------------------------------- engine and evaluate stage


def test_engine_evaluate_adds_lpips_for_sr_and_l2t_not_h2t(net, tiny_data, tiny_params):
    raw, lr = tiny_data
    task = build_task("cls", tiny_params, raw)
    loader = make_loader(PairedDataset(raw, lr, "val", task), 8, False, 0)
    for name, has in (("l2t", True), ("s2t", True), ("h2t", False)):
        s = build_setup(METHODS[name], tiny_params, task)
        out = evaluate(s, loader, torch.device("cpu"), psnr_crop=2, lpips_net=net)
        assert ("lpips" in out) == has, name
        if has:
            assert 0 < out["lpips"] and math.isfinite(out["psnr"])
        assert "lpips" not in evaluate(s, loader, torch.device("cpu"), psnr_crop=2)  # training-time evaluation: no LPIPS


@pytest.fixture()
def trained_dirs(tmp_path, tiny_params, tiny_data):
    """models/seed<N>/<task>/<method> as the train stages leave them (untrained weights suffice here)."""
    raw, _ = tiny_data
    task = build_task("cls", tiny_params, raw)
    out = {}
    for name in ("l2t", "h2t"):
        s = build_setup(METHODS[name], tiny_params, task)
        d = tmp_path / name
        d.mkdir()
        torch.save(s.rec.state_dict(), d / "rec.pt")
        out[name] = d
    return out


def _params(tiny_params, lpips: str):
    return tiny_params.model_copy(update={"eval": tiny_params.eval.model_copy(update={"lpips": lpips})})


def test_evaluate_method_records_lpips_or_why_not(trained_dirs, tiny_data, tiny_params, weights_home, monkeypatch, tmp_path):
    raw, lr = tiny_data
    monkeypatch.setenv("TORCH_HOME", str(weights_home[0]))
    m = evaluate_method(_params(tiny_params, "auto"), "cls", "l2t", raw, lr, trained_dirs["l2t"]).metrics
    assert m["lpips"] > 0 and "lpips_unavailable" not in m
    m = evaluate_method(_params(tiny_params, "off"), "cls", "l2t", raw, lr, trained_dirs["l2t"]).metrics
    assert "lpips" not in m and m["lpips_unavailable"] == "eval.lpips: off"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nothing"))
    m = evaluate_method(_params(tiny_params, "auto"), "cls", "l2t", raw, lr, trained_dirs["l2t"]).metrics
    assert "lpips" not in m and WEIGHTS_NAME in m["lpips_unavailable"]
    m = evaluate_method(_params(tiny_params, "auto"), "cls", "h2t", raw, lr, trained_dirs["h2t"]).metrics
    assert "lpips" not in m and "lpips_unavailable" not in m  # H2T: none by definition, nothing to explain


def test_default_is_auto():
    assert Params().eval.lpips == "auto"


# ------------------------------------------------------------------------------------------- report


def _metrics(lpips_values: dict[str, float] | None, reason: str | None = None):
    out = {"h2t": {"top1": 90.0}}
    for i, m in enumerate(("l2t", "s2t", "t2s", "joint", "sr4ir")):
        out[m] = {"top1": 50.0 + i, "psnr": 20.0 + i}
        if lpips_values is not None:
            out[m]["lpips"] = lpips_values[m]
        elif reason is not None:
            out[m]["lpips_unavailable"] = reason
    return out


def test_report_shows_lpips_values():
    df = results_table("cls", _metrics({"l2t": 0.5, "s2t": 0.4, "t2s": 0.45, "joint": 0.41, "sr4ir": 0.3812}), "top1")
    md = markdown_table(df, "top1", "x")
    assert "LPIPS ↓" in md and "| 0.381 |" in md and "n/a" not in md
    h2t = next(line for line in md.splitlines() if line.startswith("| H2T |"))
    assert "| — |" in h2t  # H2T: none by definition


def test_report_renders_na_with_the_reason(tmp_path):
    reason = f"torchvision's ImageNet VGG16 weights are not at {tmp_path}/hub/checkpoints/{WEIGHTS_NAME}"
    df = results_table("cls", _metrics(None, reason), "top1")
    md = markdown_table(df, "top1", "x")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Method" not in line]
    assert sum("n/a¹" in line for line in rows) == 5 and "n/a" not in rows[0]
    assert f"¹ LPIPS not computed: {reason}" in md  # one footnote for the shared reason
    sections = [("cls", df, [], {})]
    assert f"¹ LPIPS not computed: {reason}" in render_markdown(Params(), sections, {})
    html = render_html(Params(), sections, {}, tmp_path)
    assert html.count("<td>n/a¹</td>") == 5 and "LPIPS not computed: torchvision&#x27;s ImageNet VGG16" in html
    # A metrics file that predates LPIPS: n/a too, never an empty or made-up cell.
    old = {m: {k: v for k, v in r.items() if k != "lpips_unavailable"} for m, r in _metrics(None, reason).items()}
    assert "re-run its evaluate stage" in markdown_table(results_table("cls", old, "top1"), "top1", "x")
