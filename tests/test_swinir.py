"""SwinIR (official state-dict layout) and loading of released SR weights (src.models.official)."""

from __future__ import annotations

import pytest
import torch

from src.models.official import load_official_sr, official_state_dict
from src.models.sr import EDSR
from src.models.swinir import DropPath, SwinIR, build_swinir, build_swinir_m, shifted_window_mask


def tiny_swinir(scale: int = 4, img_size: int = 16, **kw) -> SwinIR:
    """A small SwinIR with the same structure (2 RSTBs x 2 blocks, window 4) for fast tests."""
    args = dict(embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, img_size=img_size)
    args.update(kw)
    return build_swinir(scale, **args)


def n_params(net: torch.nn.Module, skip: str | None = None) -> int:
    return sum(p.numel() for n, p in net.named_parameters() if skip is None or skip not in n)


@pytest.fixture(scope="module")
def light_x4() -> SwinIR:
    torch.manual_seed(0)
    return build_swinir(4).eval()


# ------------------------------------------------------------------------------------------ SwinIR


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_light_swinir_output_shape_any_input_size(scale):
    torch.manual_seed(0)
    net = build_swinir(scale).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16 * scale, 16 * scale)
        assert net(torch.rand(1, 3, 11, 13)).shape == (1, 3, 11 * scale, 13 * scale)  # not a multiple of 8


def test_light_swinir_x4_parameter_count_matches_the_paper():
    net = build_swinir(4)
    # The SwinIR paper's 897K for lightweight x4 leaves out the 24 relative-position bias tables
    # (24 x 15^2 x 6 = 32,400); counting them, the official network_swinir.py model has 929,628.
    assert n_params(net, skip="relative_position_bias_table") == pytest.approx(897_000, rel=0.01)
    assert n_params(net) == n_params(net, skip="relative_position_bias_table") + 24 * 225 * 6
    assert n_params(net) == pytest.approx(0.93e6, rel=0.02)


def test_swinir_m_classical_parameter_count():
    # SR4IR's configs use SwinIR-M classical: the SwinIR paper reports 11.8M (again without bias tables).
    net = build_swinir_m(4)
    assert n_params(net, skip="relative_position_bias_table") == pytest.approx(11.8e6, rel=0.01)
    assert {"conv_before_upsample.0.weight", "upsample.0.weight", "upsample.2.weight", "conv_last.weight"} <= set(
        net.state_dict()
    )


def test_state_dict_uses_the_official_names(light_x4):
    sd = light_x4.state_dict()
    for k in (
        "conv_first.weight", "conv_first.bias", "patch_embed.norm.weight", "patch_embed.norm.bias",
        "layers.0.residual_group.blocks.0.norm1.weight",
        "layers.0.residual_group.blocks.0.attn.relative_position_bias_table",
        "layers.0.residual_group.blocks.0.attn.relative_position_index",
        "layers.0.residual_group.blocks.0.attn.qkv.weight", "layers.0.residual_group.blocks.0.attn.qkv.bias",
        "layers.0.residual_group.blocks.0.attn.proj.weight", "layers.0.residual_group.blocks.0.norm2.bias",
        "layers.0.residual_group.blocks.0.mlp.fc1.weight", "layers.0.residual_group.blocks.0.mlp.fc2.bias",
        "layers.0.residual_group.blocks.1.attn_mask", "layers.3.residual_group.blocks.5.attn.qkv.weight",
        "layers.0.conv.weight", "layers.3.conv.bias", "norm.weight", "norm.bias",
        "conv_after_body.weight", "upsample.0.weight", "upsample.0.bias",
    ):
        assert k in sd, k
    assert "layers.0.residual_group.blocks.0.attn_mask" not in sd  # unshifted blocks have no mask
    assert "mean" not in sd  # the official mean is not in the state dict either
    assert sd["layers.0.residual_group.blocks.1.attn_mask"].shape == (64, 64, 64)  # (64/8)^2 windows
    assert sd["layers.0.residual_group.blocks.0.attn.relative_position_index"].shape == (64, 64)
    assert sd["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"].shape == (225, 6)
    assert sd["upsample.0.weight"].shape == (3 * 16, 60, 3, 3)  # pixelshuffledirect: one conv + PixelShuffle(4)
    assert len([k for k in sd if k.endswith("attn_mask")]) == 12


def test_padding_is_reflect_and_output_is_cropped():
    torch.manual_seed(0)
    net = tiny_swinir(2).eval()
    x = torch.rand(1, 3, 6, 7)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 2), mode="reflect")
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[:, :, :12, :14], atol=1e-6)


def test_mask_recomputed_for_other_sizes_equals_stored_one():
    net = tiny_swinir(2, img_size=16)
    blk = net.layers[0].residual_group.blocks[1]
    assert blk.shift_size == 2 and torch.equal(blk.attn_mask, shifted_window_mask(16, 16, 4, 2))
    assert torch.equal(blk._mask_for((16, 16), blk.attn_mask), blk.attn_mask)
    assert blk._mask_for((8, 12), blk.attn_mask).shape == (6, 16, 16)


def test_gradients_flow_to_input_and_parameters():
    torch.manual_seed(0)
    net = tiny_swinir(4).train()
    x = torch.rand(2, 3, 6, 9, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name in ("conv_first.weight", "layers.1.residual_group.blocks.1.attn.relative_position_bias_table",
                 "upsample.0.weight"):
        g = dict(net.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_drop_path_only_in_train_mode():
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(256, 4)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0} and 0.3 < (y[:, 0] == 0).float().mean() < 0.7
    assert build_swinir(4).layers[3].residual_group.blocks[5].drop_path.drop_prob == pytest.approx(0.1)


# ---------------------------------------------------------------------------- load_official_sr


def test_round_trip_params_ema_with_module_prefix(tmp_path, light_x4):
    sd = light_x4.state_dict()
    decoy = {k: torch.zeros_like(v) for k, v in sd.items()}
    path = tmp_path / "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth"
    torch.save({"params": decoy, "params_ema": {"module." + k: v for k, v in sd.items()}}, path)
    torch.manual_seed(1)
    other = build_swinir(4).eval()
    load_official_sr(other, path)
    x = torch.rand(1, 3, 11, 13)
    with torch.no_grad():
        assert torch.equal(other(x), light_x4(x))


def test_loads_bare_and_sr4ir_checkpoint_layouts():
    torch.manual_seed(0)
    src = tiny_swinir(4).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        ref = src(x)
    ckpt = {"epoch": 3, "net_sr": src.state_dict(), "net_seg": {"w": torch.ones(1)},
            "optimizer_sr": {"state": {}, "param_groups": []}, "schedulers": []}
    for obj in (src.state_dict(), ckpt, {"nets": {"net_sr": src.state_dict(), "net_cls": {"w": torch.ones(1)}}}):
        torch.manual_seed(5)
        dst = tiny_swinir(4).eval()
        load_official_sr(dst, obj)
        with torch.no_grad():
            assert torch.equal(dst(x), ref)


def test_attn_mask_of_another_img_size_or_absent_is_ignored():
    torch.manual_seed(0)
    src = tiny_swinir(2, img_size=8).eval()  # trained at another size: masks (4, 16, 16)
    sd = src.state_dict()
    x = torch.rand(1, 3, 16, 16)  # = the destination's img_size: it uses its stored mask
    with torch.no_grad():
        ref = src(x)
    for state in (sd, {k: v for k, v in sd.items() if not k.endswith("attn_mask")}):
        dst = tiny_swinir(2, img_size=16).eval()
        load_official_sr(dst, state)
        assert dst.layers[0].residual_group.blocks[1].attn_mask.shape == (16, 16, 16)
        with torch.no_grad():
            assert torch.equal(dst(x), ref)


def test_wrong_scale_raises_naming_shape_mismatch(tmp_path):
    path = tmp_path / "swinir_x4.pth"
    torch.save({"params": tiny_swinir(4).state_dict()}, path)
    with pytest.raises(ValueError, match="wrong architecture or scale") as e:
        load_official_sr(tiny_swinir(8), path)
    assert str(path) in str(e.value) and "upsample.0.weight" in str(e.value) and "shape" in str(e.value)


def test_wrong_architecture_raises_naming_keys():
    with pytest.raises(ValueError, match="wrong architecture or scale") as e:
        load_official_sr(tiny_swinir(4), EDSR(4, n_blocks=2, n_feats=8).state_dict())
    msg = str(e.value)
    assert "missing keys" in msg and "conv_first.weight" in msg
    assert "unexpected keys" in msg and "head.0.weight" in msg


def test_edsr_wrong_scale_raises():
    with pytest.raises(ValueError, match=r"wrong architecture or scale\?.*tail\.0\.4\.weight"):
        load_official_sr(EDSR(8, n_blocks=2, n_feats=8), EDSR(4, n_blocks=2, n_feats=8).state_dict())


def _edsr_pytorch_keys(n_blocks: int, scale: int) -> list[str]:
    """Key names of EDSR-PyTorch's model/edsr.py (sthalles/EDSR-PyTorch release layout), written out."""
    names = ["sub_mean", "add_mean", "head.0"]
    names += [f"body.{i}.body.{j}" for i in range(n_blocks) for j in (0, 2)] + [f"body.{n_blocks}"]
    names += [f"tail.0.{2 * i}" for i in range({2: 1, 4: 2, 8: 3}[scale])] + ["tail.1"]
    return [f"{n}.{p}" for n in names for p in ("weight", "bias")]


def _basicsr_edsr_keys(n_blocks: int, scale: int) -> list[str]:
    names = ["conv_first"] + [f"body.{i}.conv{j}" for i in range(n_blocks) for j in (1, 2)] + ["conv_after_body"]
    names += [f"upsample.{2 * i}" for i in range({2: 1, 4: 2, 8: 3}[scale])] + ["conv_last"]
    return [f"{n}.{p}" for n in names for p in ("weight", "bias")]


@pytest.mark.parametrize("scale", [4, 8])
def test_edsr_official_key_names_load_into_our_edsr(tmp_path, scale):
    torch.manual_seed(0)
    ours = EDSR(scale, n_blocks=3, n_feats=8).eval()
    sd = ours.state_dict()
    official = _edsr_pytorch_keys(3, scale)
    assert sorted(official) == sorted(sd)
    # A release file (bare OrderedDict, the EDSR-PyTorch way) built from the written-out names.
    path = tmp_path / f"edsr_baseline_x{scale}.pt"
    torch.save({k: sd[k].clone() for k in official}, path)
    # BasicSR's EDSR layout of the same weights: other names, no mean-shift weights.
    ours_to_basicsr = dict(zip([k for k in _edsr_pytorch_keys(3, scale) if "mean" not in k],
                               _basicsr_edsr_keys(3, scale)))
    basicsr = {"params": {ours_to_basicsr[k]: v.clone() for k, v in sd.items() if "mean" not in k}}
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        ref = ours(x)
    for src in (path, basicsr):
        torch.manual_seed(1)
        net = EDSR(scale, n_blocks=3, n_feats=8).eval()
        load_official_sr(net, src)
        with torch.no_grad():
            assert torch.equal(net(x), ref)


def test_unreadable_or_ambiguous_sources_raise(tmp_path):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not_a_checkpoint.pth"):
        load_official_sr(tiny_swinir(4), bad)
    sd = tiny_swinir(4).state_dict()
    with pytest.raises(ValueError, match="which entry"):
        official_state_dict(tiny_swinir(4), {"a": sd, "b": sd})
