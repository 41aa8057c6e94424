"""Per-sample geometry: the crop and flip of each sample, and the padding that puts images on a canvas.

The paper's protocol (``shared/SR4IR_METHOD.md`` sections 8, 9), as torchvision's references do it:

* a **random crop** (training): pad right/bottom when the image is smaller (image 0, mask 255), then a
  window drawn as ``RandomCrop.get_params`` draws it; a **centre crop** (evaluation) rounds as
  ``CenterCrop`` does;
* a **horizontal flip** with probability 0.5, after the crop;
* a **canvas**: a batch of images whose sides are not multiples of the scale, or not all equal, is padded
  right/bottom to the batch's largest height and width, each rounded up to a multiple of the scale, and the
  LR is the degradation of that canvas (the official ``list_to_batch``). ``replicate`` pads by repeating the
  last row/column (the official seg rule); ``reflect`` mirrors where the padding is smaller than the image
  in both directions and replicates otherwise (the official det rule).

The LR of a crop or a flipped image is always the degradation of that exact HR (never a crop or flip of
another image's LR): bicubic downscaling does not commute with either at the float level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAD_MODES = ("replicate", "reflect")


def round_up(n: int, scale: int) -> int:
    return -(-n // scale) * scale


def pad_to(img: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """``img`` (..., C, H, W) padded right/bottom to ``height`` x ``width`` by ``mode`` (see the module doc)."""
    h, w = img.shape[-2:]
    ph, pw = height - h, width - w
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad a {w}x{h} image to {width}x{height}")
    if not ph and not pw:
        return img
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r} is not one of {list(PAD_MODES)}")
    how = "reflect" if mode == "reflect" and ph < h and pw < w else "replicate"
    x = img if img.dim() == 4 else img[None]
    out = F.pad(x, (0, pw, 0, ph), mode=how)
    return out if img.dim() == 4 else out[0]


def pad_fill(img: torch.Tensor, height: int, width: int, fill: float) -> torch.Tensor:
    """``img`` (..., H, W) padded right/bottom with the constant ``fill`` to at least ``height`` x ``width``."""
    h, w = img.shape[-2:]
    ph, pw = max(height - h, 0), max(width - w, 0)
    if not ph and not pw:
        return img
    return F.pad(img, (0, pw, 0, ph), mode="constant", value=fill)


@dataclass(frozen=True)
class Window:
    """Rows ``top:top+height`` and columns ``left:left+width`` of an image padded (0 / 255) to contain them."""

    top: int
    left: int
    height: int
    width: int


def random_window(height: int, width: int, size: int) -> Window:
    """torchvision's ``RandomCrop.get_params`` on an image padded to at least ``size`` (global torch RNG: the
    DataLoader seeds it per worker)."""
    h, w = max(height, size), max(width, size)
    top = int(torch.randint(0, h - size + 1, size=(1,)).item())
    left = int(torch.randint(0, w - size + 1, size=(1,)).item())
    return Window(top, left, size, size)


def centre_window(height: int, width: int, size: int) -> Window:
    """torchvision's ``CenterCrop`` rounding (an image smaller than ``size`` is padded first)."""
    h, w = max(height, size), max(width, size)
    return Window(int(round((h - size) / 2.0)), int(round((w - size) / 2.0)), size, size)


def crop(img: torch.Tensor, win: Window, fill: float = 0.0) -> torch.Tensor:
    """The window of ``img`` (..., H, W), padding right/bottom with ``fill`` where the image is smaller."""
    img = pad_fill(img, win.top + win.height, win.left + win.width, fill)
    return img[..., win.top:win.top + win.height, win.left:win.left + win.width]


@dataclass(frozen=True)
class SampleView:
    """What a split's loader does to each sample: ``crop`` (side; 0 none) at a random or the centre position,
    a random horizontal flip, and how a canvas is padded (``pad``)."""

    crop: int = 0
    random_crop: bool = False
    hflip: bool = False
    pad: str = "replicate"

    def window(self, height: int, width: int) -> Window | None:
        if not self.crop:
            return None
        return (random_window if self.random_crop else centre_window)(height, width, self.crop)


def canvas_size(sizes: list[tuple[int, int]], scale: int) -> tuple[int, int]:
    """The (H, W) canvas of a batch: its largest height and width, each rounded up to a multiple of ``scale``."""
    return round_up(max(h for h, _ in sizes), scale), round_up(max(w for _, w in sizes), scale)


def split_views(data) -> dict[str, SampleView]:
    """The view of each split under ``data`` (``params.data``): training samples get ``data.train_crop`` at a
    random position and ``data.hflip``; evaluation samples ``data.eval_crop`` at the centre, never flipped."""
    return {
        "train": SampleView(crop=data.train_crop, random_crop=True, hflip=data.hflip, pad=data.pad),
        "val": SampleView(crop=data.eval_crop, random_crop=False, hflip=False, pad=data.pad),
    }


def eval_view_lr_input(hr: torch.Tensor, view: SampleView, scale: int) -> torch.Tensor:
    """The HR image (C, H, W) whose degradation is the LR a split's loader reads from disk: the view's centre
    crop (if any), padded right/bottom to a multiple of ``scale`` by ``view.pad`` (a batch of one's canvas)."""
    win = view.window(*hr.shape[-2:])
    if win is not None:
        if view.random_crop:
            raise ValueError("a random crop has no LR to precompute")
        hr = crop(hr, win, fill=0.0)
    h, w = hr.shape[-2:]
    return pad_to(hr, round_up(h, scale), round_up(w, scale), view.pad)
