"""Image-quality metrics as the official code computes them: PSNR (RGB, 0-255, border crop, per-image mean)
and LPIPS (VGG, v0.1, inputs in [-1, 1], the same border crop, per-image mean).

LPIPS needs torchvision's ImageNet VGG16 weights. Nothing here downloads them: ``lpips_network`` builds the
metric only when the file is already in the torch hub cache, and otherwise returns the reason it is
unavailable (which the evaluate stage records instead of a number).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

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


# ---------------------------------------------------------------------------------------------------
# LPIPS


def vgg16_weights_url() -> str:
    """torchvision's ImageNet VGG16 weights (``VGG16_Weights.IMAGENET1K_V1``): LPIPS' backbone."""
    from torchvision.models import VGG16_Weights

    return VGG16_Weights.IMAGENET1K_V1.url


def vgg16_weights_path() -> Path:
    """Where torchvision keeps the VGG16 weights once downloaded: ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(vgg16_weights_url()).path).name


def lpips_weights_hint() -> str:
    """How to put the backbone weights where LPIPS looks for them (stages never download)."""
    return "get them once with: python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\""


def load_lpips_vgg(weights: Path) -> nn.Module:
    """``lpips.LPIPS(net='vgg', version='0.1')`` with its VGG16 trunk loaded from the local file ``weights``.

    lpips would fetch the trunk through torchvision (``vgg16(pretrained=True)``); it is built untrained
    here (``pnet_rand=True``: no download) and the ``features.*`` tensors of the torchvision state dict are
    loaded into it. The linear calibration layers ship inside the lpips package. Raises ``ValueError``
    naming ``weights`` when the file is unreadable or does not fit VGG16.
    """
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated ``pretrained=`` argument
        warnings.simplefilter("ignore")
        net = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)  # old releases are not zip files: no mmap
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        # torch's message is not passed on: it advises weights_only=False (running the file's code)
        raise ValueError(f"{weights}: cannot read it as torchvision VGG16 weights ({type(err).__name__}: truncated, "
                         "corrupt or not a weights-only torch file); delete it and fetch it again") from None
    if not isinstance(state, dict):
        raise ValueError(f"{weights}: expected a state dict, got {type(state).__name__}")
    trunk = net.net.state_dict()  # keys slice<k>.<i>.weight, where i indexes torchvision's vgg16().features
    by_index = {k.split(".", 1)[1]: k for k in trunk}
    feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    missing = sorted(set(by_index) - set(feats), key=lambda k: (int(k.split(".")[0]), k))
    bad = [f"features.{k}: {tuple(feats[k].shape)} vs {tuple(trunk[by_index[k]].shape)}"
           for k in by_index if k in feats and feats[k].shape != trunk[by_index[k]].shape]
    if missing or bad:
        raise ValueError(f"{weights}: does not fit torchvision's VGG16 "
                         + (f"(missing features.{', features.'.join(missing[:4])})" if missing else f"(shapes: {bad[:4]})"))
    net.net.load_state_dict({by_index[k]: feats[k] for k in by_index}, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


LPIPS_MIN_SIDE = 16  # VGG16's fifth slice follows four 2x2 max-pools: a smaller input pools to nothing


def lpips_network(mode: str, device: torch.device | str = "cpu", image_size: tuple[int, int] | None = None,
                  crop: int = 0) -> tuple[nn.Module | None, str | None]:
    """``eval.lpips``: the LPIPS network, or ``None`` and why it is unavailable (``off``, images too small
    after the crop, no lpips package, no local VGG16 weights, or weights that do not fit).

    ``image_size`` (H, W) of the HR images, with ``crop``, checks that VGG16 can take them."""
    if mode == "off":
        return None, "eval.lpips: off"
    if image_size is not None and min(image_size) - 2 * crop < LPIPS_MIN_SIDE:
        h, w = (n - 2 * crop for n in image_size)
        return None, (f"the images are {h}x{w} px after the {crop}-px border crop; LPIPS' VGG16 needs at least "
                      f"{LPIPS_MIN_SIDE}x{LPIPS_MIN_SIDE}")
    if importlib.util.find_spec("lpips") is None:  # no import yet: it takes seconds, and may not be needed
        return None, "the lpips package is not installed (pip install lpips)"
    path = vgg16_weights_path()
    if not path.is_file():
        return None, f"no VGG16 weights at {path} (never downloaded by a stage; {lpips_weights_hint()})"
    try:
        net = load_lpips_vgg(path)
    except ValueError as err:
        return None, f"{err}; replace it ({lpips_weights_hint()})"
    return net.to(device), None


class LPIPS:
    """Mean over images of LPIPS (``lpips_network``'s network) between quantised ``img`` and ``hr``.

    As the official ``calculate_lpips_batch``: both mapped to [-1, 1], ``crop`` pixels cut from each side,
    images whose LPIPS is exactly 0 (identical to HR) left out. ``chunk`` bounds the VGG batch (memory).
    """

    def __init__(self, crop: int, net: nn.Module, chunk: int = 32):
        self.crop, self.net, self.chunk = crop, net, chunk
        self.total = 0.0
        self.count = 0

    def update(self, img: torch.Tensor, hr: torch.Tensor) -> None:
        c = self.crop
        a, b = quantize(img).float() * 2.0 - 1.0, hr.float() * 2.0 - 1.0
        if c:
            a, b = a[..., c:-c, c:-c], b[..., c:-c, c:-c]
        if min(a.shape[-2:]) < LPIPS_MIN_SIDE:
            raise ValueError(f"LPIPS: images are {a.shape[-2]}x{a.shape[-1]} px after the {c}-px crop; "
                             f"VGG16 needs at least {LPIPS_MIN_SIDE}x{LPIPS_MIN_SIDE}")
        for i in range(0, a.shape[0], self.chunk):
            d = self.net(a[i:i + self.chunk], b[i:i + self.chunk]).flatten().double()
            d = d[d != 0]
            self.total += float(d.sum())
            self.count += int(d.numel())

    def compute(self) -> dict[str, float]:
        return {"lpips": self.total / self.count if self.count else float("nan")}
