"""Semantic segmentation: torchvision DeepLabV3-MobileNetV3-Large with its auxiliary head; TDP on the
backbone's last features (C5); mIoU from a confusion matrix over the val split, ignoring 255."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from src.config import SegConfig
from src.tasks.base import Normalize, frozen_critic

IGNORE = 255


class Segmenter(nn.Module):
    """ImageNet normalisation + a torchvision DeepLabV3; ``forward_features`` exposes the backbone levels."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.normalize = Normalize()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.net.backbone(self.normalize(x))
        # C5: (B, 960, H/16, W/16), the dilated backbone's last 1x1 conv; C2: (B, 40, H/8, W/8), the aux input.
        return {"C5": feats["out"], "C2": feats["aux"]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(self.normalize(x))  # {"out": (B, K, H, W), "aux": (B, K, H, W)}


class SegmentationTask:
    name = "seg"
    primary_metric = "miou"

    def __init__(self, cfg: SegConfig, num_classes: int):
        self.cfg = cfg
        self.num_classes = num_classes + 1  # + background (mask value 0)
        for layer in cfg.tdp_layers:
            if layer not in ("C5", "C2"):
                raise ValueError(f"seg.tdp_layers: unknown layer {layer!r}; choose from ['C2', 'C5']")

    def build_model(self) -> nn.Module:
        weights_backbone = "DEFAULT" if self.cfg.pretrained_backbone else None
        try:
            net = torchvision.models.get_model(self.cfg.arch, weights=None, weights_backbone=weights_backbone,
                                               num_classes=self.num_classes, aux_loss=True)
        except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
            raise RuntimeError(f"seg.pretrained_backbone: could not load ImageNet weights ({err}); "
                               "set seg.pretrained_backbone: false") from err
        return Segmenter(net)

    def load_targets(self, split_dir: Path, names: Sequence[str]) -> list[Path]:
        paths = [split_dir / "masks" / f"{n}.png" for n in names]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: segmentation mask missing")
        return paths  # read lazily, one per sample

    def read_target(self, target: Any) -> torch.Tensor:
        if isinstance(target, Path):
            with Image.open(target) as im:
                mask = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).long()
            bad = ((mask >= self.num_classes) & (mask != IGNORE)).nonzero()
            if len(bad):
                raise ValueError(f"{target}: class id {int(mask[tuple(bad[0])])} outside [0, {self.num_classes}) and not {IGNORE}")
            return mask
        return target

    def collate_targets(self, targets: list[Any]) -> torch.Tensor:
        return torch.stack([self.read_target(t) for t in targets])  # (B, H, W) long

    def hflip_target(self, target: Any, width: int) -> torch.Tensor:
        return self.read_target(target).flip(-1)

    def losses(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images)
        return {"loss_ce": F.cross_entropy(out["out"], target, ignore_index=IGNORE),
                "loss_aux": F.cross_entropy(out["aux"], target, ignore_index=IGNORE)}

    def features(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = model.forward_features(images)
        return {k: feats[k] for k in self.cfg.tdp_layers}

    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(images)["out"].argmax(dim=1)  # the aux head is not used at test time

    def new_metric(self) -> "ConfusionIoU":
        return ConfusionIoU(self.num_classes)

    def frozen(self, model: nn.Module):
        return frozen_critic(model)

    def draw(self, ax: Any, image: Any, pred: Any, target: Any, class_names: Sequence[str]) -> None:
        import matplotlib.pyplot as plt

        h, w = pred.shape  # the prediction is at the recogniser's input size; an LR image is stretched to it
        ax.imshow(image, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        colours = plt.get_cmap("tab10")(np.arange(self.num_classes) % 10)[:, :3]
        overlay = np.zeros((*pred.shape, 4))
        overlay[..., :3] = colours[pred]
        overlay[..., 3] = np.where(pred > 0, 0.45, 0.0)
        ax.imshow(overlay, interpolation="nearest")
        valid = target != IGNORE
        acc = 100.0 * float((pred[valid] == target[valid]).mean()) if valid.any() else float("nan")
        ax.set_title(f"pixel acc {acc:.0f}%", fontsize=7)
        ax.set_axis_off()


class ConfusionIoU:
    """mIoU (%) from a confusion matrix accumulated over all pixels whose target is not 255.

    IoU_c = TP / (TP + FP + FN); the mean is over classes that occur in the target or the prediction
    (a class absent from both has no defined IoU).
    """

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.long)  # rows: target, cols: prediction

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        t, p = target.flatten().cpu(), preds.flatten().cpu()
        keep = (t >= 0) & (t < self.k)
        self.mat += torch.bincount(self.k * t[keep] + p[keep], minlength=self.k**2).reshape(self.k, self.k)

    def compute(self) -> dict[str, float]:
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = tp[union > 0] / union[union > 0]
        return {"miou": 100.0 * float(iou.mean()) if len(iou) else float("nan"),
                "pixel_acc": 100.0 * float(tp.sum() / m.sum().clamp(min=1))}
