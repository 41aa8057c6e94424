"""EDSR (Lim et al. 2017) with the EDSR-PyTorch state-dict layout, the SR builder (EDSR or SwinIR), and the
bilinear L2T upsampler."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.config import SRConfig
from src.models.swinir import build_swinir, build_swinir_m

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """Fixed 1x1 conv adding ``sign * 255 * mean`` (EDSR works in the 0-255 range)."""

    def __init__(self, sign: int):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * 255.0 * torch.tensor(DIV2K_MEAN)
        for p in self.parameters():
            p.requires_grad_(False)


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(n_feats, n_feats, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """(B, 3, h, w) in [0, 1] -> (B, 3, s*h, s*w), not clamped (the recogniser sees the raw output)."""

    def __init__(self, scale: int, n_blocks: int = 16, n_feats: int = 64, res_scale: float = 1.0):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"EDSR scale must be 2, 4 or 8, got {scale}")
        self.scale = scale
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(+1)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_blocks)], nn.Conv2d(n_feats, n_feats, 3, padding=1))
        up: list[nn.Module] = []
        for _ in range(int(math.log2(scale))):  # x2 per stage: conv to 4C, then PixelShuffle(2)
            up += [nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1), nn.PixelShuffle(2)]
        self.tail = nn.Sequential(nn.Sequential(*up), nn.Conv2d(n_feats, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sub_mean(x * 255.0)
        x = self.head(x)
        x = x + self.body(x)  # global residual
        x = self.tail(x)
        return self.add_mean(x) / 255.0


def build_sr(cfg: SRConfig, scale: int) -> nn.Module:
    """The SR network ``sr.arch`` names; every one maps (B, 3, h, w) in [0, 1] to (B, 3, s*h, s*w), unclamped."""
    if cfg.arch == "edsr":
        return EDSR(scale, cfg.n_blocks, cfg.n_feats, cfg.res_scale)
    if cfg.arch == "swinir_light":
        return build_swinir(scale)
    if cfg.arch == "swinir_m":
        return build_swinir_m(scale)
    raise KeyError(f"sr.arch: unknown architecture {cfg.arch!r}")


def bilinear_up(lr: torch.Tensor, scale: int, align_corners: bool = True) -> torch.Tensor:
    """The L2T 'SR': bilinear upsampling (align_corners=True, like the official UpsamplingBilinear2d)."""
    return F.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=align_corners)
