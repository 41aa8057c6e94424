"""LR degradation: bicubic downscale, then 8-bit quantisation (the official SR4IR recipe)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from src.config import DegradeConfig
from src.data.images import decode_rgb
from src.data.transforms import SampleView, eval_view_lr_input
from src.utils import atomic_path, progress

log = logging.getLogger(__name__)


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Round a [0, 1] image to 8-bit levels (also clamps bicubic overshoot)."""
    return (img * 255.0).round().clamp(0, 255) / 255.0


def degrade(hr: torch.Tensor, cfg: DegradeConfig) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, H/s, W/s): PyTorch bicubic (no antialias by default), then quantise."""
    if hr.shape[-1] % cfg.scale or hr.shape[-2] % cfg.scale:
        raise ValueError(f"image size {tuple(hr.shape[-2:])} is not divisible by degrade.scale={cfg.scale}")
    lr = F.interpolate(hr, scale_factor=1.0 / cfg.scale, mode="bicubic", align_corners=False, antialias=cfg.antialias)
    return quantize(lr) if cfg.quantize else lr.clamp(0, 1)


def read_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; a clear error (an ``ImageError``, a ``ValueError``) naming the file when it
    cannot be decoded. The decoding policy (modes, 16 bit, alpha) is ``src/data/images.py``'s."""
    arr = decode_rgb(path)
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def write_rgb(img: torch.Tensor, path: Path) -> None:
    """(3, H, W) in [0, 1] -> 8-bit PNG."""
    arr = (img.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path, format="PNG")


def degrade_folder(raw: Path, out: Path, cfg: DegradeConfig, splits: tuple[str, ...] = ("train", "val"),
                   strict: bool = False, views: dict[str, SampleView] | None = None) -> int:
    """Write ``out/<split>/<id>.png`` for every ``raw/<split>/images/<id>.png``; return the image count.

    The LR is that of the image as the split's loader shows it (``views``, ``src.data.transforms.split_views``):
    its centre crop if the view has one, padded right/bottom to a multiple of the scale (a batch of one's
    canvas), then degraded. An HR image that cannot be decoded or degraded gets no LR twin and one warning
    line (``strict``: an error naming it instead); the dataset then reports or skips it, as
    ``data.on_bad_sample`` says.
    """
    count = 0
    bad: list[str] = []
    views = views or {}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for split in splits:
            src_dir = raw / split / "images"
            files = sorted(src_dir.glob("*.png"))
            if not files:
                raise FileNotFoundError(f"{src_dir}: no PNG images (run the download stage first)")
            (tmp / split).mkdir(parents=True)
            view = views.get(split)
            for f in progress(files, desc=f"degrade {split}"):
                try:
                    hr = read_rgb(f)
                    if view is not None:
                        hr = eval_view_lr_input(hr, view, cfg.scale)
                    lr = degrade(hr[None], cfg)[0]
                except ValueError as err:
                    msg = str(err) if str(err).startswith(str(f)) else f"{f}: {err}"
                    if strict:
                        raise ValueError(msg) from None
                    bad.append(msg)
                    continue
                write_rgb(lr, tmp / split / f.name)
                count += 1
    if bad:
        log.warning("degrade: %d HR images left without an LR twin: %s%s", len(bad), "; ".join(bad[:5]),
                    f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    return count
