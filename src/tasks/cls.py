"""Image classification: a torchvision ResNet; TDP on ``layer4``; top-1 accuracy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from src.config import ClsConfig
from src.tasks.base import Normalize, frozen_critic, imagenet_weights_error, trainable_groups

_STAGES = ("layer1", "layer2", "layer3", "layer4")


class Classifier(nn.Module):
    """ImageNet normalisation + a torchvision ResNet, with its stage outputs exposed for the TDP loss."""

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        self.normalize = Normalize()
        self.net = net

    def forward_features(self, x: torch.Tensor, upto: str = "fc") -> dict[str, torch.Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(self.normalize(x)))))
        feats: dict[str, torch.Tensor] = {}
        for name in _STAGES:
            x = getattr(net, name)(x)  # layer4: (B, 512, H/32, W/32) for ResNet-18
            feats[name] = x
            if name == upto:
                return feats
        feats["fc"] = net.fc(torch.flatten(net.avgpool(x), 1))  # (B, num_classes)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["fc"]


def _resnet(arch: str, weights: Any) -> torchvision.models.ResNet:
    """torchvision's ResNet by name; ``resnet10`` (not a torchvision builder) is its ResNet class with one
    BasicBlock per stage, as ResNet-18 is with two."""
    if arch == "resnet10":
        return torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    return torchvision.models.get_model(arch, weights=weights)


class Top1:
    """Top-1 accuracy in percent over everything seen; per image: whether its prediction was right."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0
        self._flags: list[np.ndarray] = []

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        hit = preds.cpu() == target.cpu()
        self.correct += int(hit.sum())
        self.total += int(target.numel())
        self._flags.append(hit.reshape(-1).numpy())

    def compute(self) -> dict[str, Any]:
        return {"top1": 100.0 * self.correct / max(self.total, 1)}

    def per_image(self) -> dict[str, np.ndarray]:
        """``correct``: (N,) bool, image i's prediction equals its label."""
        return {"correct": np.concatenate(self._flags) if self._flags else np.zeros(0, bool)}

    @staticmethod
    def num_images(scores: Mapping[str, np.ndarray]) -> int:
        return len(scores["correct"])

    @staticmethod
    def scorer(scores: Mapping[str, np.ndarray]) -> Callable[[np.ndarray], float]:
        correct = np.asarray(scores["correct"], dtype=bool)

        def top1(index: np.ndarray) -> float:  # the same arithmetic as compute()
            return 100.0 * int(correct[index].sum()) / max(len(index), 1)

        return top1


class ClassificationTask:
    name = "cls"
    primary_metric = "top1"
    target_kind = "label"
    metric_class = Top1

    def __init__(self, cfg: ClsConfig, num_classes: int):
        self.cfg, self.num_classes = cfg, num_classes  # layer and loss-term names: checked by ClsConfig

    def param_groups(self, model: nn.Module) -> list[dict]:
        return trainable_groups(model)

    def build_model(self) -> nn.Module:
        weights = None
        if self.cfg.pretrained:
            weights = torchvision.models.get_model_weights(self.cfg.arch).DEFAULT
        try:
            net = _resnet(self.cfg.arch, weights)
        except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
            raise imagenet_weights_error("cls.pretrained", err) from err
        net.fc = nn.Linear(net.fc.in_features, self.num_classes)  # the 1000-way head is never reused
        return Classifier(net)

    def losses(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_ce": F.cross_entropy(model(images), target)}

    def features(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        deepest = max(self.cfg.tdp_layers, key=_STAGES.index)
        feats = model.forward_features(images, upto=deepest)
        return {k: feats[k] for k in self.cfg.tdp_layers}

    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(images).argmax(dim=1)

    def to_numpy(self, values: torch.Tensor) -> np.ndarray:
        return values.cpu().numpy()  # (N,) class ids

    def new_metric(self) -> "Top1":
        return Top1()

    def frozen(self, model: nn.Module):
        return frozen_critic(model)
