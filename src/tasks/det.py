"""Object detection: torchvision Faster R-CNN over a MobileNetV3-Large FPN; TDP on FPN levels; COCO mAP.

Detection fits behind the same ``Task`` interface as the other tasks: targets are a list of per-image
dicts (read by ``src.data.targets.BoxTargets``), the network takes the batch tensor and splits it into the list torchvision expects, its loss
dict is the task's named loss terms, and the metric is pycocotools' COCOeval. Two things differ from
torchvision's defaults, on purpose:

* the detector's transform never resizes (unless ``det.min_size`` asks for it): the SR output reaches
  the detector at the size it was produced; the TDP features come from the same transformed batch the
  heads see (with ``min_size`` 800: the resized one, as the official code);
* as a frozen critic (T2S, SR4IR phase 1) the backbone runs in eval mode (BN running statistics) while
  the RPN and box heads still compute their training losses, which torchvision only does in train mode.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from src.config import DetConfig
from src.tasks.base import IMAGENET_MEAN, IMAGENET_STD, frozen_critic, imagenet_weights_error, set_bn_momentum, trainable_groups

ROI_SIZE = 7  # torchvision's box RoIAlign output
FROZEN_BEFORE = 7  # with ImageNet weights, features[:7] stay frozen (torchvision's trainable_layers=3)


class KeepSizeTransform(GeneralizedRCNNTransform):
    """Normalise and pad to a multiple of 32, never resize: the detector sees exactly the image it is given."""

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        return image, target


class Detector(nn.Module):
    """A torchvision Faster R-CNN that takes a (B, 3, H, W) batch in [0, 1], or a list of (3, H, W) images."""

    def __init__(self, net: FasterRCNN):
        super().__init__()
        self.net = net

    def forward_features(self, images: torch.Tensor | list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """FPN levels {'0', '1', ..., 'pool'} of the batch the detector's own transform makes of ``images``
        (resized when ``det.min_size`` > 0, normalised, padded to a multiple of 32): the features its
        forward computes, as the official TDP loss takes them. The heads are not run."""
        batch, _ = self.net.transform(list(images))
        return dict(self.net.backbone(batch.tensors))

    def forward(self, images: torch.Tensor | list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        # Train mode: the loss dict; eval mode: one {boxes, labels, scores} dict per image.
        return self.net(list(images), targets)


def build_detector(cfg: DetConfig, num_classes: int) -> Detector:
    """Faster R-CNN with ``num_classes`` object classes (+ background), sized by ``cfg``."""
    weights = None
    if cfg.pretrained_backbone:
        weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    try:
        # torchvision's detection builder: FrozenBatchNorm2d with ImageNet weights, else BatchNorm2d (eps 1e-5
        # both, not the classifier's 1e-3), as the official det models
        mnet = torchvision.models.mobilenet_v3_large(weights=weights, norm_layer=FrozenBatchNorm2d if weights else nn.BatchNorm2d)
    except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
        raise imagenet_weights_error("det.pretrained_backbone", err) from err
    features = mnet.features
    set_bn_momentum(features, cfg.bn_momentum)  # FrozenBatchNorm2d (ImageNet weights) has no running update
    if weights is not None:
        for p in features[:FROZEN_BEFORE].parameters():
            p.requires_grad_(False)
    levels = [str(i) for i in range(len(cfg.fpn_stages))]
    backbone = BackboneWithFPN(
        features,
        return_layers={str(idx): name for idx, name in zip(cfg.fpn_stages, levels)},
        in_channels_list=[features[idx].out_channels for idx in cfg.fpn_stages],
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(tuple(tuple(s) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * len(cfg.anchor_sizes))
    net = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size or 800,
        max_size=1333,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=2 * cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=2 * cfg.rpn_post_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_score_thresh=0.05,
        box_roi_pool=MultiScaleRoIAlign(levels, ROI_SIZE, sampling_ratio=cfg.roi_sampling_ratio),
        box_head=TwoMLPHead(cfg.fpn_channels * ROI_SIZE**2, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, num_classes + 1),
        box_batch_size_per_image=cfg.box_batch_size_per_image,
    )
    if not cfg.min_size:
        net.transform = KeepSizeTransform(1, 1, list(IMAGENET_MEAN), list(IMAGENET_STD))
    return Detector(net)


class DetectionTask:
    name = "det"
    primary_metric = "map"
    target_kind = "boxes"

    def __init__(self, cfg: DetConfig, num_classes: int):
        self.cfg, self.num_classes = cfg, num_classes

    def build_model(self) -> nn.Module:
        return build_detector(self.cfg, self.num_classes)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return trainable_groups(model)

    # -- network ------------------------------------------------------------------------------------

    def losses(self, model: nn.Module, images: torch.Tensor, target: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        # torchvision's four terms: loss_classifier, loss_box_reg, loss_objectness, loss_rpn_box_reg.
        return model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in target])

    def features(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = model.forward_features(images)
        return {k: feats[k] for k in self.cfg.tdp_layers}

    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return model(images)

    @contextlib.contextmanager
    def frozen(self, model: nn.Module) -> Iterator[None]:
        """A fixed critic whose heads still return training losses: backbone in eval mode (BN running
        statistics), RPN and box heads in train mode (they hold no BatchNorm or dropout), no gradients."""
        with frozen_critic(model):
            model.net.training = True  # GeneralizedRCNN returns losses only when its own flag is set
            model.net.rpn.train()
            model.net.roi_heads.train()
            yield

    def new_metric(self) -> "CocoMAP":
        return CocoMAP()

    # -- report -------------------------------------------------------------------------------------

    def to_numpy(self, values: list[dict[str, torch.Tensor]]) -> np.ndarray:
        """(N, M, 6) rows [x0, y0, x1, y1, label, score], padded with label -1 (targets get score 1)."""
        m = max([len(v["boxes"]) for v in values] + [1])
        out = np.full((len(values), m, 6), -1.0, dtype=np.float32)
        for i, v in enumerate(values):
            k = len(v["boxes"])
            out[i, :k, :4] = v["boxes"].detach().cpu().numpy()
            out[i, :k, 4] = v["labels"].cpu().numpy()
            out[i, :k, 5] = v["scores"].detach().cpu().numpy() if "scores" in v else 1.0
        return out


class CocoMAP:
    """COCO-style box AP with pycocotools' COCOeval over every image seen.

    The ground truth is rebuilt from the targets (boxes, category ids, areas, crowd flags and image ids as
    read from the split's COCO JSON), so the numbers are the ones COCOeval gives on that JSON.
    """

    def __init__(self) -> None:
        self.images: list[int] = []
        self.gt: list[dict] = []
        self.dt: list[dict] = []
        self.categories: list[int] = []

    def update(self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]) -> None:
        for p, t in zip(preds, target, strict=True):
            image_id = int(t["image_id"])
            cats = t["category_ids"].tolist()
            self.categories = self.categories or cats
            self.images.append(image_id)
            for box, label, area, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(), t["area"].tolist(), t["iscrowd"].tolist()):
                x0, y0, x1, y1 = box
                self.gt.append({"id": len(self.gt) + 1, "image_id": image_id, "category_id": cats[label - 1],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": crowd})
            for box, label, score in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist()):
                x0, y0, x1, y1 = box
                self.dt.append({"image_id": image_id, "category_id": cats[label - 1],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})

    def compute(self) -> dict[str, float]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self.dt or not self.gt:
            return {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in self.images], "annotations": self.gt,
                      "categories": [{"id": c} for c in self.categories]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            gt.createIndex()
            dt = gt.loadRes(self.dt)
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ap, ap50, ap75 = (max(float(x), 0.0) for x in ev.stats[:3])  # -1 means "no ground truth"
        return {"map": 100.0 * ap, "ap50": 100.0 * ap50, "ap75": 100.0 * ap75}
