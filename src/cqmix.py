"""Cross-quality patch mix (CQMix): SR and HR grid cells mixed by a random binary mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cqmix_mask(batch: int, height: int, width: int, grid: int, p: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 1, H, W) mask in {0, 1}: a ``grid`` x ``grid`` Bernoulli(p) draw per sample, nearest-resized to H x W.

    1 takes the SR pixel, 0 the HR pixel. Resizing to the real size (instead of the official fixed
    factor) works for any crop; cells are equal when H and W are multiples of ``grid``.
    """
    cells = (torch.rand(batch, 1, grid, grid, generator=generator) < p).float()
    return F.interpolate(cells, size=(height, width), mode="nearest").to(device)


def cqmix(sr: torch.Tensor, hr: torch.Tensor, grid: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """M * SR + (1 - M) * HR with one mask per sample, broadcast over channels; labels stay unchanged."""
    b, _, h, w = hr.shape
    mask = cqmix_mask(b, h, w, grid, p, generator, hr.device)
    return mask * sr + (1.0 - mask) * hr
