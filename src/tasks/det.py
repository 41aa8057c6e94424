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
from collections.abc import Iterator, Mapping

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


# COCOeval's bbox defaults (pycocotools.cocoeval.Params), for the primary number: AP@[.5:.95], all areas, 100 detections
IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS = 100
AREA_ALL = (0 ** 2, 1e5 ** 2)


class CocoMAP:
    """COCO-style box AP with pycocotools' COCOeval over every image seen.

    The ground truth is rebuilt from the targets (boxes, category ids, areas, crowd flags and image ids as
    read from the split's COCO JSON), so the numbers are the ones COCOeval gives on that JSON. Per image:
    the detections and ground truth as flat arrays with an image column (``per_image``), from which
    ``scorer`` recomputes the mAP of any resample of the images without pycocotools (``CocoResampler``).
    """

    def __init__(self) -> None:
        self.images: list[int] = []
        self.gt: list[dict] = []
        self.dt: list[dict] = []
        self.categories: list[int] = []
        self._gt_pos: list[int] = []  # position in ``images`` of each gt / dt entry
        self._dt_pos: list[int] = []

    def update(self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]) -> None:
        for p, t in zip(preds, target, strict=True):
            image_id = int(t["image_id"])
            cats = t["category_ids"].tolist()
            self.categories = self.categories or cats
            pos = len(self.images)
            self.images.append(image_id)
            for box, label, area, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(), t["area"].tolist(), t["iscrowd"].tolist()):
                x0, y0, x1, y1 = box
                self.gt.append({"id": len(self.gt) + 1, "image_id": image_id, "category_id": cats[label - 1],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": crowd})
                self._gt_pos.append(pos)
            for box, label, score in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist()):
                x0, y0, x1, y1 = box
                self.dt.append({"image_id": image_id, "category_id": cats[label - 1],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
                self._dt_pos.append(pos)

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

    def per_image(self) -> dict[str, np.ndarray]:
        """What COCOeval saw, as arrays: ``image_id`` (N,) the images' COCO ids in the order seen,
        ``categories`` (C,) the category ids; per detection ``dt_image`` (D,) the image's position in that
        order, ``dt_bbox`` (D, 4) COCO [x, y, w, h] (float64, the values COCOeval got), ``dt_category``,
        ``dt_score``; per ground-truth box ``gt_image``, ``gt_bbox``, ``gt_category``, ``gt_area``, ``gt_crowd``."""
        def column(rows: list[dict], key: str, dtype) -> np.ndarray:
            return np.array([r[key] for r in rows], dtype=dtype)

        return {
            "image_id": np.array(self.images, dtype=np.int64),
            "categories": np.array(self.categories, dtype=np.int64),
            "dt_image": np.array(self._dt_pos, dtype=np.int64),
            "dt_bbox": column(self.dt, "bbox", np.float64).reshape(-1, 4),
            "dt_category": column(self.dt, "category_id", np.int64),
            "dt_score": column(self.dt, "score", np.float64),
            "gt_image": np.array(self._gt_pos, dtype=np.int64),
            "gt_bbox": column(self.gt, "bbox", np.float64).reshape(-1, 4),
            "gt_category": column(self.gt, "category_id", np.int64),
            "gt_area": column(self.gt, "area", np.float64),
            "gt_crowd": column(self.gt, "iscrowd", np.int64),
        }

    @staticmethod
    def num_images(scores: Mapping[str, np.ndarray]) -> int:
        return len(scores["image_id"])

    @staticmethod
    def scorer(scores: Mapping[str, np.ndarray]) -> "CocoResampler":
        return CocoResampler(scores)


class CocoResampler:
    """COCOeval's AP@[.5:.95] (all areas, 100 detections per image and category) of resamples of the
    images in ``CocoMAP.per_image`` arrays, in numpy.

    A resample is scored as COCOeval would score a dataset rebuilt from it, each repeat of an image a new
    image (its own id, ranked after the earlier copies and before the next image id). Matching detections
    to ground truth happens within an image and category, so it is done once here (COCOeval's greedy rule,
    its IoU arithmetic); a resample only re-runs the accumulation (COCOeval.accumulate: detections ranked
    by score, ties in image-id order, precision interpolated at 101 recall points). On ``np.arange(n)``
    the result is exactly ``CocoMAP.compute()["map"]`` (tests/test_bootstrap.py checks it on ties and crowds).
    """

    def __init__(self, scores: Mapping[str, np.ndarray]):
        image_id = np.asarray(scores["image_id"], dtype=np.int64)
        self.n = n = len(image_id)
        cats = np.unique(np.asarray(scores["categories"], dtype=np.int64))
        self.k = k = len(cats)
        d_img, d_cat = np.asarray(scores["dt_image"], np.int64), np.asarray(scores["dt_category"], np.int64)
        g_img, g_cat = np.asarray(scores["gt_image"], np.int64), np.asarray(scores["gt_category"], np.int64)
        self.n_dt = np.bincount(d_img, minlength=n)  # every detection and box counts for "none at all" (compute())
        self.n_gt = np.bincount(g_img, minlength=n)

        def category_index(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # COCOeval skips unknown categories
            i = np.minimum(np.searchsorted(cats, c), max(k - 1, 0))
            return i, (cats[i] == c) if k else np.zeros(len(c), bool)

        # ground truth of each (image, category) group: non-ignored first (stable), as evaluateImg sorts it
        gk, gin = category_index(g_cat)
        g_box = np.asarray(scores["gt_bbox"], np.float64).reshape(-1, 4)[gin]
        g_area = np.asarray(scores["gt_area"], np.float64)[gin]
        g_crowd = np.asarray(scores["gt_crowd"], np.int64)[gin] != 0
        g_group = (g_img[gin] * k + gk[gin])
        g_ignore = g_crowd | (g_area < AREA_ALL[0]) | (g_area > AREA_ALL[1])
        self.npig = np.bincount(g_group[~g_ignore], minlength=n * k).reshape(n, k)  # non-ignored gt per group
        order = np.lexsort((g_ignore, g_group))
        g_group, g_box, g_crowd, g_ignore = g_group[order], g_box[order], g_crowd[order], g_ignore[order]
        groups, first, per_group = np.unique(g_group, return_index=True, return_counts=True)
        width = int(per_group.max()) if len(groups) else 0
        row = np.searchsorted(groups, g_group)
        col = np.arange(len(g_group)) - first[row]
        t_box = np.zeros((len(groups), width, 4))
        t_valid = np.zeros((len(groups), width), bool)
        t_crowd, t_ignore = t_valid.copy(), t_valid.copy()
        t_box[row, col], t_valid[row, col], t_crowd[row, col], t_ignore[row, col] = g_box, True, g_crowd, g_ignore

        # detections of each group: by score (stable), the first MAX_DETS kept
        dk, din = category_index(d_cat)
        keep = np.flatnonzero(din)
        d_group = d_img[keep] * k + dk[keep]
        d_score = np.asarray(scores["dt_score"], np.float64)[keep]
        order = np.lexsort((-d_score, d_group))
        keep, d_group, d_score = keep[order], d_group[order], d_score[order]
        _, start = np.unique(d_group, return_index=True)
        rank = np.arange(len(d_group)) - np.repeat(start, np.diff(np.append(start, len(d_group))))
        top = rank < MAX_DETS
        keep, d_group, d_score, rank = keep[top], d_group[top], d_score[top], rank[top]
        d_box = np.asarray(scores["dt_bbox"], np.float64).reshape(-1, 4)[keep]
        d_area = d_box[:, 2] * d_box[:, 3]  # loadRes: w * h
        d_out = (d_area < AREA_ALL[0]) | (d_area > AREA_ALL[1])
        tp, matched = _match(d_box, d_group, rank, groups, t_box, t_valid, t_crowd, t_ignore)
        fp = ~matched & ~d_out[None]

        # accumulation order: category, score (descending), image id, rank in the image (COCOeval's stable sorts)
        d_pos, d_k = d_group // max(k, 1), d_group % max(k, 1)
        image_rank = np.empty(n, np.int64)
        image_rank[np.lexsort((np.arange(n), image_id))] = np.arange(n)
        order = np.lexsort((rank, image_rank[d_pos], -d_score, d_k))
        tp, seen = tp[:, order], tp[:, order] | fp[:, order]  # (T, D); seen: not ignored (crowd match, area)
        d_pos, d_k, d_score = d_pos[order], d_k[order], d_score[order]
        # Runs of detections of one image, category and score: a resample repeats each run once per copy
        # (the copies' ties ranked copy by copy).
        new = np.ones(len(order), bool)
        new[1:] = (d_pos[1:] != d_pos[:-1]) | (d_k[1:] != d_k[:-1]) | (d_score[1:] != d_score[:-1])
        run_start = np.flatnonzero(new)
        n_runs = len(run_start)
        self.run_image, self.run_len = d_pos[run_start], np.diff(np.append(run_start, len(order)))
        run_cat = d_k[run_start]
        elem_run = np.repeat(np.arange(n_runs), self.run_len)
        first_run = np.searchsorted(run_cat, np.arange(k))  # runs are grouped by category
        # Counted (not ignored) detections: of each run, and of its run up to each detection; one row per threshold.
        cum = np.cumsum(seen, axis=1)
        before = np.concatenate([np.zeros((len(IOU_THRS), 1), np.int64), cum], axis=1)[:, run_start]
        run_seen = np.diff(np.concatenate([before, cum[:, -1:]], axis=1), axis=1) if len(order) else before
        inrun = cum - before[:, elem_run]
        # The (rare) runs with ignored detections, by threshold and run: (key t * runs + run, count).
        ign_t, ign_run = np.nonzero(run_seen < self.run_len)
        self.ign_key = ign_t * n_runs + ign_run
        self.ign_run, self.ign_n = ign_run, (self.run_len - run_seen)[ign_t, ign_run]
        # True positives, by threshold and rank, with what places them; groups of one threshold and one run.
        t_idx, e_idx = np.nonzero(tp)
        self.tp_run = elem_run[e_idx]
        self.tp_run_seen, self.tp_inrun = run_seen[t_idx, self.tp_run], inrun[t_idx, e_idx]
        self.tp_first = first_run[run_cat[self.tp_run]]  # the first run of its category
        self.tp_key, self.tp_first_key = t_idx * n_runs + self.tp_run, t_idx * n_runs + self.tp_first
        key = self.tp_key
        first = np.flatnonzero(np.append(True, key[1:] != key[:-1])) if len(key) else np.zeros(0, np.int64)
        self.g_start, self.g_len = first, np.diff(np.append(first, len(key)))
        self.g_run = self.tp_run[first]
        self.g_seg = t_idx[first] * k + run_cat[self.g_run]  # row (threshold, category)

    def __call__(self, index: np.ndarray) -> float:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"image index outside [0, {self.n})")
        counts = np.bincount(index, minlength=self.n)
        if counts @ self.n_dt == 0 or counts @ self.n_gt == 0:
            return 0.0  # as CocoMAP.compute
        npig = counts @ self.npig  # (K,) non-ignored ground truth per category
        t_n = len(IOU_THRS)
        copies = counts[self.run_image]
        # detections ranked before each run (all runs, copies included; less the categories before)
        dets = self.run_len * copies
        ahead = np.cumsum(dets) - dets
        # Every copy of every true positive, in rank order within (threshold, category); precision there
        # is tp / (tp + fp): its number among them over the counted detections up to it. Elsewhere precision
        # only falls (a false positive) or stays (an ignored one), so these points decide COCOeval's curve.
        occ = self.g_len * copies[self.g_run]
        group = np.repeat(np.arange(len(occ)), occ)
        local = np.arange(len(group)) - (np.cumsum(occ) - occ)[group]
        size = self.g_len[group]
        tp_i = self.g_start[group] + local % size
        seen_to = ahead[self.tp_run[tp_i]] - ahead[self.tp_first[tp_i]]  # the category's, ranked before the run
        if len(self.ign_key):  # less the ignored ones among them
            ign = np.concatenate([[0], np.cumsum(self.ign_n * copies[self.ign_run])])
            at_run, at_first = (np.searchsorted(self.ign_key, key[tp_i]) for key in (self.tp_key, self.tp_first_key))
            seen_to -= ign[at_run] - ign[at_first]
        seen_to += (local // size) * self.tp_run_seen[tp_i] + self.tp_inrun[tp_i]  # earlier copies, then its own run
        per_row = np.bincount(self.g_seg, weights=occ, minlength=t_n * self.k).astype(np.int64)
        nth = np.arange(len(group)) - (np.cumsum(per_row) - per_row)[self.g_seg[group]]  # true positives before
        width = max(int(per_row.max(initial=0)), 1)
        pr = np.zeros((t_n * self.k, width))
        pr[self.g_seg[group], nth] = (nth + 1) / (seen_to + np.spacing(1))  # COCOeval: tp / (fp + tp + eps)
        best = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1].reshape(t_n, self.k, width)  # from the right
        # COCOeval reads it at the first rank whose recall tp / npig reaches each recall point r: the tp of
        # the least integer need with need / npig >= r (division rounds monotonically); not found: 0.
        has = npig > 0
        safe = np.where(has, npig, 1)[:, None]
        need = np.ceil(REC_THRS[None] * safe).astype(np.int64)
        for _ in range(3):  # the float product is off by at most one either way
            need -= (need > 0) & ((need - 1) / safe >= REC_THRS[None])
            need += need / safe < REC_THRS[None]
        at = np.minimum(np.maximum(need, 1) - 1, width - 1)  # need 0 (r = 0): the maximum over all
        q = np.where(need[None] <= per_row.reshape(t_n, self.k, 1), best[:, np.arange(self.k)[:, None], at], 0.0)
        precision = np.where(has[None, :, None], q, -1.0).transpose(0, 2, 1)  # (T, R, K), COCOeval's layout
        s = precision[precision > -1]
        return 100.0 * max(float(np.mean(s)) if len(s) else -1.0, 0.0)


def _match(d_box: np.ndarray, d_group: np.ndarray, rank: np.ndarray, groups: np.ndarray, t_box: np.ndarray,
           t_valid: np.ndarray, t_crowd: np.ndarray, t_ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.evaluateImg's greedy matching at every IoU threshold, all groups at once, detection rank by
    rank. Returns (T, D) bools: true positive (matched to a non-ignored box) and matched at all."""
    t_n, d_n = len(IOU_THRS), len(d_box)
    tp = np.zeros((t_n, d_n), bool)
    matched = np.zeros((t_n, d_n), bool)
    if not len(groups) or not d_n:
        return tp, matched
    row = np.minimum(np.searchsorted(groups, d_group), len(groups) - 1)
    has_gt = groups[row] == d_group
    if not has_gt.any():
        return tp, matched
    iou = _bbox_iou(d_box[has_gt], t_box[row[has_gt]], t_crowd[row[has_gt]])  # (D', G)
    sel_all, row_all, rank_all = np.flatnonzero(has_gt), row[has_gt], rank[has_gt]
    thr = np.minimum(IOU_THRS, 1 - 1e-10)[:, None, None]
    taken = np.zeros((t_n,) + t_valid.shape, bool)  # gtm > 0
    width = t_valid.shape[1]
    for r in range(int(rank_all.max()) + 1):
        at = np.flatnonzero(rank_all == r)  # at most one detection per group
        rows, v = row_all[at], iou[at][None]
        ok = t_valid[rows][None] & (~taken[:, rows] | t_crowd[rows][None]) & (v >= thr)  # (T, S, G)
        ign = t_ignore[rows][None]
        regular = ok & ~ign
        ok = np.where(regular.any(-1, keepdims=True), regular, ok & ign)  # a regular box first, else an ignored one
        vals = np.where(ok, v, -np.inf)
        best = ok & (vals == vals.max(-1, keepdims=True))
        m = width - 1 - np.argmax(best[..., ::-1], axis=-1)  # the last of the best (COCOeval: `<` moves on)
        hit = ok.any(-1)
        ti, si = np.nonzero(hit)
        gi = m[ti, si]
        taken[ti, rows[si], gi] = True
        matched[ti, sel_all[at[si]]] = True
        tp[ti, sel_all[at[si]]] = ~t_ignore[rows[si], gi]
    return tp, matched


def _bbox_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' bbIou (maskApi.c) on [x, y, w, h] boxes, the same double arithmetic: (D, 4) against
    (D, G, 4); for a crowd box the union is the detection's area."""
    d = d[:, None, :]
    da, ga = d[..., 2] * d[..., 3], g[..., 2] * g[..., 3]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    i = w * h
    u = np.where(crowd, da, da + ga - i)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), i / u, 0.0)


class DetectionTask:
    name = "det"
    primary_metric = "map"
    target_kind = "boxes"
    metric_class = CocoMAP

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
