"""Image-quality metric: PSNR as the official code computes it (RGB, 0-255, border crop, per-image mean)."""

from __future__ import annotations

import torch

from src.data.degrade import quantize


class PSNR:
    """Mean over images of 10*log10(255^2 / MSE) on quantised RGB, ``crop`` pixels cut from each side.

    Images with MSE = 0 are left out (their PSNR is infinite), as in the official code.
    """

    def __init__(self, crop: int):
        self.crop = crop
        self.total = 0.0
        self.count = 0

    def update(self, img: torch.Tensor, hr: torch.Tensor) -> None:
        c = self.crop
        a, b = quantize(img) * 255.0, hr * 255.0
        if c:
            a, b = a[..., c:-c, c:-c], b[..., c:-c, c:-c]
        mse = ((a.double() - b.double()) ** 2).flatten(1).mean(dim=1)
        mse = mse[mse > 0]
        self.total += float((10.0 * torch.log10(255.0**2 / mse)).sum())
        self.count += int(mse.numel())

    def compute(self) -> dict[str, float]:
        return {"psnr": self.total / self.count if self.count else float("nan")}
