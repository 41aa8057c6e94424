"""The task interface: the network side of what differs between classification, segmentation and detection.

The training loop, the TDP loss, CQMix, evaluation and the report see only this interface; none of
them branches on the task's name. Images given to a task are (B, 3, H, W) floats in [0, 1] (HR, an
upsampled LR or an SR output, unclamped); each task normalises inside. The data side of targets (reading
a split's annotations, flipping one with its image, collating a batch) lives in ``src.data.targets``,
chosen by ``Task.target_kind``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Metric(Protocol):
    """A task metric accumulated over batches, which can also hand back what it saw image by image.

    ``per_image()`` is a dict of arrays from which the task's primary metric can be recomputed on any
    multiset of the images seen (a bootstrap resample, ``src.bootstrap``): ``scorer(scores)`` prepares
    that once and returns ``f(index) -> float``, ``index`` an int array of image positions (in the order
    ``update`` saw them; repeats allowed, a repeated image counting as a distinct one), and
    ``f(np.arange(num_images(scores)))`` is exactly ``compute()[Task.primary_metric]``.
    """

    def update(self, preds: Any, target: Any) -> None: ...
    def compute(self) -> dict[str, float]: ...
    def per_image(self) -> dict[str, np.ndarray]: ...
    @staticmethod
    def num_images(scores: Mapping[str, np.ndarray]) -> int: ...
    @staticmethod
    def scorer(scores: Mapping[str, np.ndarray]) -> Callable[[np.ndarray], float]: ...


class Task(Protocol):
    name: str
    primary_metric: str  # key of Metric.compute() that the report and tuning rank by
    # What a target is, as ``to_numpy`` saves it: "label" (N,) class ids, "mask" (N, H, W) class maps or
    # "boxes" (N, M, 6) box rows; the report draws a sample by it (src/report.py, DRAW).
    target_kind: str
    # The network's class count (seg's includes the background); src.data.targets checks the annotations against it.
    num_classes: int
    # The class ``new_metric()`` returns: its static ``num_images`` and ``scorer`` read saved ``per_image()`` arrays.
    metric_class: type[Metric]

    def build_model(self) -> nn.Module: ...
    def param_groups(self, model: nn.Module) -> list[dict]:
        """The optimiser's parameter groups of ``model``'s trainable parameters: ``{"params": [...]}``, with
        ``"lr_mult"`` where a group trains at a multiple of the task's ``optim.lr``."""
        ...
    def losses(self, model: nn.Module, images: torch.Tensor, target: Any) -> dict[str, torch.Tensor]:
        """Named, unweighted loss terms; weights from params are applied once by the caller."""
        ...
    def features(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The intermediate features the TDP loss compares, by layer name."""
        ...
    def predict(self, model: nn.Module, images: torch.Tensor) -> Any: ...
    def new_metric(self) -> Metric: ...
    def frozen(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        """Use ``model`` as a fixed critic whose ``losses`` and ``features`` still work (no parameter gradients)."""
        ...
    def to_numpy(self, values: Any) -> np.ndarray:
        """A batch of predictions or targets as one array (saved with the qualitative samples)."""
        ...


class Normalize(nn.Module):
    """ImageNet normalisation as a module, so every task network takes [0, 1] images."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@contextlib.contextmanager
def frozen_critic(model: nn.Module) -> Iterator[None]:
    """Use ``model`` as a fixed critic: eval mode (BN running statistics), no parameter gradients.

    Each parameter's own ``requires_grad`` flag and the module's mode are restored afterwards (the
    official code re-enables every parameter, un-freezing layers that were frozen on purpose).
    """
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def trainable_groups(model: nn.Module, mults: Mapping[str, float] | None = None) -> list[dict]:
    """One group of every trainable parameter, except those under a submodule prefix of ``mults`` (e.g.
    ``{"net.aux_classifier": 10.0}``), which get a group of their own with that ``lr_mult``."""
    mults = dict(mults or {})
    groups: dict[str, list[nn.Parameter]] = {"": []} | {k: [] for k in mults}
    for name, p in model.named_parameters():
        if p.requires_grad:
            prefix = next((k for k in mults if name.startswith(k + ".")), "")
            groups[prefix].append(p)
    out = [{"params": groups[""]}]
    out += [{"params": groups[k], "lr_mult": m} for k, m in mults.items() if groups[k]]
    return out


def weighted_sum(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Sum of ``weights[k] * terms[k]``; a term without a weight, or a weight without a term, is an error."""
    missing, unused = set(terms) - set(weights), set(weights) - set(terms)
    if missing or unused:
        raise KeyError(f"loss terms {sorted(terms)} do not match loss weights {sorted(weights)}")
    return sum(weights[k] * v for k, v in terms.items())


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm layer.

    torchvision's MobileNetV3 uses 0.01, tuned for hundreds of ImageNet epochs: trained from scratch for a
    few hundred steps, its running statistics barely leave their initial values and eval-mode outputs
    collapse (a detector then scores every box ~1e-11). Seg and det take ``bn_momentum`` from params.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def imagenet_weights_error(key: str, err: Exception) -> Exception:
    """What a task raises when torchvision cannot fetch the ImageNet weights ``key`` asks for: a
    ``DownloadError`` (the stages print it as one line and exit 2) naming the switch and the cache folder."""
    from src.errors import DownloadError

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return DownloadError(f"{key}: could not load ImageNet weights ({err}); set {key}: false, or place torchvision's "
                         f"weights file in {cache}")

