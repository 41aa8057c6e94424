"""Semantic segmentation: torchvision LR-ASPP or DeepLabV3 (the paper's, with its auxiliary head) over a
dilated MobileNetV3-Large; TDP on the backbone's last features (C5); mIoU from a confusion matrix over the
val split, ignoring 255."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from src.config import SegConfig
from src.data.targets import IGNORE  # the mask format's "not scored" value (src/report.py imports it from here)
from src.tasks.base import Normalize, frozen_critic, imagenet_weights_error, set_bn_momentum, trainable_groups


class Segmenter(nn.Module):
    """ImageNet normalisation + a torchvision segmenter; ``forward_features`` exposes the backbone levels."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.normalize = Normalize()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.net.backbone(self.normalize(x))
        # C5: (B, 960, H/16, W/16), the dilated backbone's last 1x1 conv; C2: (B, 40, H/8, W/8), features[4]
        # (DeepLabV3 names them out/aux, LR-ASPP high/low: the same two layers).
        if "out" in feats:
            return {"C5": feats["out"], "C2": feats["aux"]}
        return {"C5": feats["high"], "C2": feats["low"]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(self.normalize(x))  # {"out": (B, K, H, W)} (+ "aux" for DeepLabV3)


class ConfusionIoU:
    """mIoU (%) from a confusion matrix accumulated over all pixels whose target is not 255.

    IoU_c = TP / (TP + FP + FN); the mean is over classes that occur in the target or the prediction
    (a class absent from both has no defined IoU). Per image: its own confusion matrix (they sum to the
    split's, so a resample's mIoU is that of its summed matrices).
    """

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.long)  # rows: target, cols: prediction
        self._per_image: list[np.ndarray] = []

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]  # the images of a batch share one size
        for t, p in zip(target.cpu().reshape(n, -1), preds.cpu().reshape(n, -1), strict=True):
            keep = (t >= 0) & (t < self.k)
            mat = torch.bincount(self.k * t[keep] + p[keep], minlength=self.k**2).reshape(self.k, self.k)
            self.mat += mat  # integer counts: the same total as one bincount over the batch
            self._per_image.append(mat.numpy())

    def compute(self) -> dict[str, float]:
        return _scores(self.mat)

    def per_image(self) -> dict[str, np.ndarray]:
        """``confusion``: (N, K, K) int64, image i's pixel counts (rows: target, cols: prediction; 255 left out)."""
        if not self._per_image:
            return {"confusion": np.zeros((0, self.k, self.k), np.int64)}
        return {"confusion": np.stack(self._per_image).astype(np.int64)}

    @staticmethod
    def num_images(scores: Mapping[str, np.ndarray]) -> int:
        return len(scores["confusion"])

    @staticmethod
    def scorer(scores: Mapping[str, np.ndarray]) -> Callable[[np.ndarray], float]:
        mats = np.asarray(scores["confusion"], dtype=np.int64)
        flat = mats.reshape(len(mats), -1)

        def miou(index: np.ndarray) -> float:
            counts = np.bincount(index, minlength=len(mats))  # a repeated image counts its pixels again
            mat = (counts @ flat).reshape(mats.shape[1:])  # exact: integer sums
            return _scores(torch.from_numpy(mat))["miou"]

        return miou


def _scores(mat: torch.Tensor) -> dict[str, float]:
    """mIoU and pixel accuracy (%) of a (K, K) confusion matrix (``ConfusionIoU``'s rule)."""
    m = mat.double()
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return {"miou": 100.0 * float(iou.mean()) if len(iou) else float("nan"),
            "pixel_acc": 100.0 * float(tp.sum() / m.sum().clamp(min=1))}


class SegmentationTask:
    name = "seg"
    primary_metric = "miou"
    target_kind = "mask"
    metric_class = ConfusionIoU

    def __init__(self, cfg: SegConfig, num_classes: int):
        self.cfg = cfg
        self.num_classes = num_classes + 1  # + background (mask value 0); layer names: checked by SegConfig

    def build_model(self) -> nn.Module:
        weights_backbone = "DEFAULT" if self.cfg.pretrained_backbone else None
        try:
            aux = {"aux_loss": True} if self.cfg.arch.startswith("deeplabv3") else {}
            net = torchvision.models.get_model(self.cfg.arch, weights=None, weights_backbone=weights_backbone,
                                               num_classes=self.num_classes, **aux)
        except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
            raise imagenet_weights_error("seg.pretrained_backbone", err) from err
        set_bn_momentum(net, self.cfg.bn_momentum)
        return Segmenter(net)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """DeepLabV3's auxiliary head at ``aux_lr_mult`` x the lr (the official seg models' 10x group)."""
        has_aux = getattr(model.net, "aux_classifier", None) is not None
        return trainable_groups(model, {"net.aux_classifier": self.cfg.aux_lr_mult} if has_aux else None)

    def losses(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images)
        terms = {"loss_ce": F.cross_entropy(out["out"], target, ignore_index=IGNORE)}
        if "aux" in out:
            terms["loss_aux"] = F.cross_entropy(out["aux"], target, ignore_index=IGNORE)
        return terms

    def features(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = model.forward_features(images)
        return {k: feats[k] for k in self.cfg.tdp_layers}

    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(images)["out"].argmax(dim=1)  # the aux head is not used at test time

    def to_numpy(self, values: torch.Tensor) -> np.ndarray:
        return values.cpu().numpy()  # (N, H, W) class maps

    def new_metric(self) -> "ConfusionIoU":
        return ConfusionIoU(self.num_classes)

    def frozen(self, model: nn.Module):
        return frozen_critic(model)
