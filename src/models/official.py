"""Load released SR weights (EDSR-PyTorch, BasicSR, SwinIR, SR4IR) into our networks, strictly.

Accepted containers (unwrapped recursively, at most a few levels):

* a bare state dict (EDSR-PyTorch ``edsr_baseline_x4-6b446fab.pt``; SR4IR ``models/net_sr_*.pth``);
* BasicSR / SwinIR releases: ``{'params': sd}`` or ``{'params_ema': sd}`` (``params_ema`` preferred);
* SR4IR training checkpoints (``checkpoints/checkpoint_*.pth``: ``{'epoch', 'net_sr', 'net_<task>',
  'optimizer_*', 'schedulers'}``): the ``net_sr`` entry;
* generic ``{'state_dict': sd}`` / ``{'model': sd}``, or any dict of dicts with one SR-named entry.

Key handling: ``module.`` (DDP/DataParallel) and ``_orig_mod.`` (torch.compile) prefixes are stripped;
BasicSR's EDSR names (``conv_first``, ``body.N.conv1/2``, ``conv_after_body``, ``upsample.*``,
``conv_last``; no mean-shift weights) are mapped to the EDSR-PyTorch names our EDSR uses. Our EDSR's
names already equal EDSR-PyTorch's, and the EDSR-PyTorch releases *do* contain ``sub_mean``/``add_mean``
(fixed 1x1 convs, identity weight, +-255*DIV2K-mean bias), which load as they are. Fixed, geometry- or
constant-derived tensors a checkpoint may lack (``sub_mean``/``add_mean``, SwinIR's
``relative_position_index``) are taken from the network; SwinIR's ``attn_mask`` buffers are ignored
whatever their shape (the network keeps the mask for its own ``img_size``).

Anything else that does not fit (missing or unexpected keys, shape mismatches) raises ``ValueError``
naming the source and the offending keys ("wrong architecture or scale?").
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.errors import DataError

# Preferred container keys, in order (params_ema before params, as BasicSR's own loader recommends).
_CONTAINER_KEYS = ("params_ema", "params", "net_sr", "network_sr", "state_dict", "model", "net", "network")
_STRIP_PREFIXES = ("module.", "_orig_mod.")
# Keys a checkpoint may lack whose values are fixed by the architecture: filled from the network.
_DERIVABLE = re.compile(r"(^|\.)(sub_mean|add_mean)\.(weight|bias)$|(^|\.)relative_position_index$")
_IGNORED = re.compile(r"(^|\.)attn_mask$")  # SwinIR: recomputed for the network's own img_size
_SHOW = 8


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    trail: list[str] = []
    for _ in range(5):
        if _is_state_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            raise ValueError(f"{source}: expected a state dict or a dict holding one, got {type(obj).__name__}"
                             + (f" under {'/'.join(trail)}" if trail else ""))
        key = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            nested = [k for k, v in obj.items() if isinstance(v, Mapping) and v
                      and not re.search(r"optim|sched", str(k).lower())]
            sr_named = [k for k in nested if isinstance(k, str) and re.search(r"(^|_)sr($|_)|ema", k.lower())]
            if len(sr_named) == 1:
                key = sr_named[0]
            elif len(nested) == 1:
                key = nested[0]
            else:
                raise ValueError(f"{source}: cannot tell which entry holds the SR network; "
                                 f"keys {sorted(map(str, obj))[:_SHOW]}")
        trail.append(str(key))
        obj = obj[key]
    raise ValueError(f"{source}: no state dict found (looked under {'/'.join(trail)})")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _basicsr_edsr_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BasicSR EDSR names -> EDSR-PyTorch names (ours)."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.conv[12]\.", k))}
    n_blocks = max(blocks) + 1 if blocks else 0
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if m := re.match(r"body\.(\d+)\.conv([12])\.(.+)$", k):
            k = f"body.{m.group(1)}.body.{0 if m.group(2) == '1' else 2}.{m.group(3)}"
        elif k.startswith("conv_first."):
            k = "head.0." + k[len("conv_first."):]
        elif k.startswith("conv_after_body."):
            k = f"body.{n_blocks}." + k[len("conv_after_body."):]
        elif k.startswith("upsample."):
            k = "tail.0." + k[len("upsample."):]
        elif k.startswith("conv_last."):
            k = "tail.1." + k[len("conv_last."):]
        out[k] = v
    return out


def _bare(net: nn.Module) -> nn.Module:
    while True:
        if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            net = net.module
        elif hasattr(net, "_orig_mod") and isinstance(net._orig_mod, nn.Module):  # torch.compile
            net = net._orig_mod
        else:
            return net


def read_weights(path: Path | str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)``; a file torch cannot read (truncated, corrupt, not a weights file,
    or pickling code) is a one-line ``DataError`` naming it and ``fix``. Torch's own message is not passed on:
    it advises ``weights_only=False``, which would run whatever code the file holds."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError,
            IndexError, KeyError, ImportError) as err:
        raise DataError(f"{path}: cannot be read as weights ({type(err).__name__}: the file is truncated, corrupt "
                        f"or not a weights-only torch file); {fix}") from None


def _read(path_or_state: Any) -> tuple[Any, str]:
    if isinstance(path_or_state, (str, PathLike)):
        path = Path(path_or_state)
        return read_weights(path, "delete it (a known release is then downloaded again) or replace it with the "
                                  "release file"), str(path)
    if isinstance(path_or_state, Mapping):
        return path_or_state, "<state dict>"
    raise TypeError(f"expected a path or a state dict, got {type(path_or_state).__name__}")


def _fmt(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - _SHOW})" if len(keys) > _SHOW else ""
    return "[" + ", ".join(keys[:_SHOW]) + more + "]"


def official_state_dict(net: nn.Module, path_or_state: Any) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, unwrapped and renamed to ``net``'s layout, checked to fit ``net``.

    Raises ``ValueError`` (naming the source and the offending keys) when it does not fit.
    """
    obj, source = _read(path_or_state)
    sd = {_strip(str(k)): v for k, v in _unwrap(obj, source).items()}
    net = _bare(net)
    own = net.state_dict()

    if "head.0.weight" in own and "conv_first.weight" in sd and any(".conv1." in k for k in sd):
        sd = _basicsr_edsr_to_ours(sd)
    for k, v in own.items():  # architecture-fixed tensors the checkpoint may not carry
        if k not in sd and _DERIVABLE.search(k):
            sd[k] = v.detach().clone()

    missing = [k for k in own if k not in sd and not _IGNORED.search(k)]  # model order
    unexpected = [k for k in sd if k not in own and not _IGNORED.search(k)]  # checkpoint order
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and not _IGNORED.search(k) and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {_fmt(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {_fmt(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches {_fmt(shapes)}")
        raise ValueError(f"{source}: does not fit {type(net).__name__} (wrong architecture or scale?): "
                         + "; ".join(parts))
    return sd


def load_official_sr(net: nn.Module, path_or_state: Any) -> None:
    """Load released/official SR weights (a file path or a (wrapped) state dict) into ``net``, strictly."""
    sd = official_state_dict(net, path_or_state)
    _bare(net).load_state_dict(sd, strict=True)


# Released DIV2K-trained SR weights the paper's SR networks start from (shared/SR4IR_METHOD.md section 2),
# by file name: ``sr.init`` naming one of these downloads it when it is not there yet.
RELEASES = {
    "edsr_baseline_x2-1bc95232.pt": "https://cv.snu.ac.kr/research/EDSR/models/edsr_baseline_x2-1bc95232.pt",
    "edsr_baseline_x4-6b446fab.pt": "https://cv.snu.ac.kr/research/EDSR/models/edsr_baseline_x4-6b446fab.pt",
    **{f"001_classicalSR_DIV2K_s48w8_SwinIR-M_x{s}.pth":
       f"https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/001_classicalSR_DIV2K_s48w8_SwinIR-M_x{s}.pth"
       for s in (2, 4, 8)},
    **{f"002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{s}.pth":
       f"https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{s}.pth"
       for s in (2, 4)},
}
# Released elsewhere, by hand only.
MANUAL = {"edsr_baseline_x8.pt": "the SR4IR authors' Google Drive link in assets/docs/Training.md of the SR4IR repository "
                                 "(it is not an EDSR-PyTorch release)"}
_HUB_HASH = re.compile(r"-([0-9a-f]{8,})\.pth?$")  # torch.hub convention: name-<sha256 prefix>.pt


def fetch_release(path: Path | str, releases: Mapping[str, str] = RELEASES) -> Path:
    """``path`` when it exists; otherwise download the release of that file name to it (verified when its
    name carries a torch.hub hash prefix). A file only published by hand raises ``FileNotFoundError``
    saying where to get it."""
    from src.data.fetch import ChecksumError, download, sha256sum

    path = Path(path)
    if path.is_file():
        return path
    url = releases.get(path.name)
    if url is None:
        where = MANUAL.get(path.name, "its authors' release page")
        raise FileNotFoundError(f"{path}: SR initial weights (sr.init) missing; download {path.name} from {where} "
                                f"and place it at {path}")
    download(url, path, manual_hint=f"download {url} by hand and place it at {path}")
    if (m := _HUB_HASH.search(path.name)) and not sha256sum(path).startswith(m.group(1)):
        bad = path.with_name(path.name + ".bad")
        path.replace(bad)
        raise ChecksumError(f"{url}: sha256 does not start with {m.group(1)} as its name says; moved to {bad}")
    return path

