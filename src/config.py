"""Typed, frozen run configuration: the only module that reads ``params.yaml``.

``load_params()`` validates the whole file once, at start-up, so a typo, a wrong type or an
out-of-range value fails before any work with a message naming the key, e.g.
``params.yaml: degrade.scale: Input should be 2, 4 or 8``.
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from src.errors import ConfigError

PARAMS_FILE = Path("params.yaml")

NonNegFloat = Annotated[float, Field(ge=0.0)]
PosFloat = Annotated[float, Field(gt=0.0)]
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _quoted_number(annotation: Any, value: Any) -> str | None:
    """The string in ``value`` that stands where ``annotation`` expects a number (``"4"`` for ``degrade.scale``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _quoted_number(args[0], value)
    if origin in (Union, types.UnionType):
        return None if type(None) in args and value is None else _quoted_number(args[0], value)
    if origin is list and isinstance(value, list):
        return next((q for v in value if (q := _quoted_number(args[0], v)) is not None), None)
    if origin is dict and isinstance(value, dict):
        return next((q for v in value.values() if (q := _quoted_number(args[1], v)) is not None), None)
    numeric = (origin is Literal and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)) or \
        annotation in (int, float)
    return value if numeric and isinstance(value, str) and _is_number(value) else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_quoted_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``scale: "4"`` is a string to DVC and to YAML: say so, rather than "Input should be 2, 4 or 8"."""
        quoted = _quoted_number(cls.model_fields[info.field_name].annotation, value)
        if quoted is not None:
            raise PydanticCustomError("quoted_number", "a string ({quoted}) was given where a number is expected: "
                                      "write the number without quotes", {"quoted": repr(quoted)})
        return value


class SyntheticConfig(Strict):
    """The embedded generator (``src/data/synthetic.py``)."""

    num_train: PosInt = 800
    num_val: PosInt = 400
    image_size: Annotated[int, Field(ge=16)] = 64
    max_objects: PosInt = 3
    period: Annotated[float, Field(ge=2.0)] = 5.0  # grating period in HR pixels


# The tasks each dataset has annotations for; "folder" is whatever its layout holds (checked by the download stage).
DATASET_TASKS: dict[str, frozenset[str]] = {
    "synthetic": frozenset({"cls", "seg", "det"}),
    "voc": frozenset({"seg", "det"}),
    "stanford_cars": frozenset({"cls"}),
    "cub200": frozenset({"cls"}),
}
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"


class DataConfig(Strict):
    """Which dataset the ``download`` stage writes to ``data/raw`` (``src/data/prepare.py``), and how it is read."""

    name: Literal["synthetic", "voc", "stanford_cars", "cub200", "folder"] = "synthetic"
    seed: int = 0
    synthetic: SyntheticConfig = SyntheticConfig()
    # Real datasets (src/data/sources): short side resized to image_size, then (resize: square) the centre
    # square of that side is kept, or (resize: short_side, the paper's protocol) the aspect ratio is kept;
    # image_size 0 with short_side keeps every image at its own size (the paper's detection protocol).
    image_size: Annotated[int, Field(ge=0)] = 256
    resize: Literal["square", "short_side"] = "square"
    # Per-sample views (src/data/transforms.py): a random train_crop x train_crop window per training sample
    # (image padded with 0, mask with 255 where it is smaller: the paper's seg 480 and cls 224), and a centre
    # eval_crop x eval_crop window at evaluation (the paper's cls 224); 0: the whole image.
    train_crop: NonNegInt = 0
    eval_crop: NonNegInt = 0
    # k > 0: training batches drawn from images of similar aspect ratio (torchvision's detection recipe,
    # 2k + 2 groups; the paper's det: 3); 0: plain random batches.
    aspect_groups: NonNegInt = 0
    # An image whose side is not a multiple of degrade.scale, or smaller than its batch's canvas, is padded
    # right/bottom before it is degraded: replicate (the official seg rule) or reflect (the official det rule:
    # reflect where the padding is smaller than the image, else replicate).
    pad: Literal["replicate", "reflect"] = "replicate"
    max_train: NonNegInt = 0  # keep this many train images (a data.seed-shuffled prefix); 0: all
    max_val: NonNegInt = 0
    cache_dir: Annotated[str, Field(min_length=1)] = "data/downloads"  # downloads and hand-placed archives
    folder: str = ""  # with data.name: folder, the dataset root holding train/ and val/
    voc_url: Annotated[str, Field(min_length=1)] = VOC_URL
    voc_md5: Annotated[str, Field(pattern=r"^([0-9a-fA-F]{32})?$")] = VOC_MD5  # empty: not checked
    hflip: bool = False  # off for the synthetic set: a flip turns a 45-degree grating into a 135-degree one
    num_workers: NonNegInt = 0
    on_bad_sample: Literal["error", "skip"] = "error"  # a corrupt image or bad annotation: fail naming it, or drop it
    # Source images of the real datasets (src/data/images.py, checked from each file's header before decoding):
    # width x height above this is refused (a decompression bomb: 12000x12000 in 450 KB); at most Pillow's own
    # bomb limit, which src/data/images.py enforces as a refusal wherever no other limit is given
    max_pixels: Annotated[int, Field(gt=0, le=89_478_485)] = 50_000_000
    max_upscale: Annotated[float, Field(ge=1.0)] = 8.0  # a shorter side upscaled more than this to image_size is refused

    @model_validator(mode="after")
    def _folder_named(self) -> "DataConfig":
        if self.name == "folder" and not self.folder.strip():
            raise ValueError("data.folder must name the dataset folder (with train/ and val/) when data.name is 'folder'")
        return self

    @model_validator(mode="after")
    def _sizes(self) -> "DataConfig":
        if self.name != "synthetic" and self.resize == "square" and self.image_size < 16:
            raise ValueError(f"data.image_size ({self.image_size}) must be at least 16 with data.resize: square "
                             "(0, keep each image's size, needs data.resize: short_side)")
        if 0 < self.image_size < 16:
            raise ValueError(f"data.image_size ({self.image_size}) must be at least 16, or 0 (keep each image's size)")
        return self

    @property
    def variable_size(self) -> bool:
        """True when the stored images of a split may differ in size (the paper's protocol)."""
        return self.name != "synthetic" and self.resize == "short_side"

    @property
    def lr_on_disk(self) -> dict[str, bool]:
        """By split: whether the degrade stage can precompute every LR the split's loader feeds. A random crop,
        or a training batch's canvas of variable-size images, is only known when the batch is drawn."""
        return {"train": not self.train_crop and not self.variable_size, "val": True}

    @property
    def hr_size(self) -> int:
        """Side of every HR image the download stage writes (the short side with resize: short_side)."""
        return self.synthetic.image_size if self.name == "synthetic" else self.image_size

    @property
    def hr_size_key(self) -> str:
        return "data.synthetic.image_size" if self.name == "synthetic" else "data.image_size"


class DegradeConfig(Strict):
    scale: Literal[2, 4, 8] = 4
    antialias: bool = False  # the official code downsamples without antialiasing
    quantize: bool = True  # round the LR image to 8 bit, as a stored PNG would be


class SRConfig(Strict):
    # edsr: EDSR sized by n_blocks/n_feats/res_scale; swinir_light: the paper's light SwinIR (embed 60, 4x6
    # blocks, ~0.9M parameters); swinir_m: SwinIR-M classical (embed 180, 6x6 blocks; the official SwinIR runs)
    arch: Literal["edsr", "swinir_light", "swinir_m"] = "edsr"
    n_blocks: PosInt = 4  # EDSR only; the paper's EDSR-baseline is 16 x 64
    n_feats: PosInt = 32  # EDSR only
    res_scale: PosFloat = 1.0  # EDSR only
    # Released DIV2K weights to start from, as the paper does (e.g. models/official/edsr_baseline_x4-6b446fab.pt;
    # a known release is downloaded to that path when missing). Empty: pretrain_sr starts from scratch and its
    # output stands in for the DIV2K weights.
    init: str = ""


class OptimConfig(Strict):
    name: Literal["sgd", "adam", "adamw"]
    lr: PosFloat
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    weight_decay: NonNegFloat = 0.0
    eta_min: NonNegFloat = 0.0  # floor of the cosine schedule

    @model_validator(mode="after")
    def _eta_below_lr(self) -> "OptimConfig":
        if self.eta_min > self.lr:
            raise ValueError(f"eta_min ({self.eta_min}) must not exceed lr ({self.lr})")
        return self


class PretrainSRConfig(Strict):
    epochs: PosInt = 10
    batch_size: PosInt = 32
    optim: OptimConfig = OptimConfig(name="adamw", lr=5.0e-4, eta_min=1.0e-6)


def _check_terms(weights: dict[str, float], terms: set[str], arch: str) -> None:
    if set(weights) != terms:
        raise ValueError(f"loss_weights {sorted(weights)} must name exactly the loss terms of {arch}: {sorted(terms)}")


def _check_layers(layers: dict[str, float], allowed: tuple[str, ...]) -> None:
    if not layers:
        raise ValueError(f"tdp_layers is empty: name at least one of {list(allowed)}")
    unknown = sorted(set(layers) - set(allowed))
    if unknown:
        raise ValueError(f"tdp_layers {unknown} unknown; choose from {list(allowed)}")


class TaskConfig(Strict):
    """What every task's section has: its own training batch and epochs, when it needs others than train's."""

    batch_size: NonNegInt = 0  # the global training batch of this task's train* stages; 0: train.batch_size
    epochs: NonNegInt = 0  # the epochs of this task's train* stages; 0: train.epochs


class ClsConfig(TaskConfig):
    """Image classification: a torchvision ResNet classifier.

    ``resnet10`` is torchvision's ResNet with one BasicBlock per stage (ResNet-18 has two): the CPU-sized
    default, about half ResNet-18's work a step at 64 px, so the LR-side methods get the epochs they need to
    plateau (docs/choices.md). torchvision publishes no ImageNet weights for it; the paper uses ``resnet18``.
    """

    arch: Literal["resnet10", "resnet18", "resnet34", "resnet50"] = "resnet10"
    pretrained: bool = False  # ImageNet weights (needs a download; never required; not for resnet10)
    epochs: NonNegInt = 8  # ResNet-10's LR-side methods still moved 2-12 points an epoch at 4 (docs/choices.md)
    optim: OptimConfig = OptimConfig(name="adamw", lr=1.0e-3, momentum=0.0, weight_decay=1.0e-4, eta_min=1.0e-6)
    loss_weights: dict[str, NonNegFloat] = {"loss_ce": 1.0}
    tdp_layers: dict[str, NonNegFloat] = {"layer4": 1.0}
    cqmix_grid: PosInt = 4

    @model_validator(mode="after")
    def _names(self) -> "ClsConfig":
        if self.pretrained and self.arch == "resnet10":
            raise ValueError("pretrained: torchvision has no ImageNet weights for resnet10; set cls.arch: resnet18 "
                             "(the paper's) or cls.pretrained: false")
        _check_terms(self.loss_weights, {"loss_ce"}, self.arch)
        _check_layers(self.tdp_layers, ("layer1", "layer2", "layer3", "layer4"))
        return self


class SegConfig(TaskConfig):
    """Semantic segmentation: a torchvision segmenter over a dilated MobileNetV3-Large backbone.

    The default, LR-ASPP, is the CPU-sized one; the paper's network is DeepLabV3 with its auxiliary head
    (``arch: deeplabv3_mobilenet_v3_large`` with ``loss_weights: {loss_ce: 1.0, loss_aux: 0.5}``).
    Both expose the same backbone levels to the TDP loss (C5 at stride 16, C2 at stride 8).
    """

    arch: Literal["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"] = "lraspp_mobilenet_v3_large"
    pretrained_backbone: bool = False  # ImageNet backbone (needs a download; never required)
    bn_momentum: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1  # torchvision's MobileNetV3 uses 0.01 (see set_bn_momentum)
    optim: OptimConfig = OptimConfig(name="adamw", lr=1.2e-2, momentum=0.0, weight_decay=1.0e-4, eta_min=1.0e-6)
    loss_weights: dict[str, NonNegFloat] = {"loss_ce": 1.0}
    tdp_layers: dict[str, NonNegFloat] = {"C5": 1.0}
    cqmix_grid: PosInt = 8
    aux_lr_mult: PosFloat = 10.0  # DeepLabV3's auxiliary head trains at this multiple of optim.lr (the official seg models: 10)

    @model_validator(mode="after")
    def _terms_of_the_arch(self) -> "SegConfig":
        _check_terms(self.loss_weights, {"loss_ce", "loss_aux"} if self.arch.startswith("deeplabv3") else {"loss_ce"}, self.arch)
        _check_layers(self.tdp_layers, ("C2", "C5"))
        return self


class DetConfig(TaskConfig):
    """Object detection: torchvision Faster R-CNN over a MobileNetV3-Large FPN backbone.

    The defaults size the network for a CPU and 64-px images; the paper's detector is
    ``fpn_stages [13, 16]``, ``fpn_channels 256``, ``representation_size 1024``, anchors
    ``[[32, 64, 128, 256, 512]] * 3``, ``rpn_post_nms_top_n_train 2000``, ``rpn_post_nms_top_n_test 1000``,
    ``box_batch_size_per_image 512``, ``roi_sampling_ratio 2``, ``min_size 800``.
    """

    arch: Literal["fasterrcnn_mobilenet_v3_large_fpn"] = "fasterrcnn_mobilenet_v3_large_fpn"
    batch_size: NonNegInt = 8  # 4x the optimiser steps of train.batch_size 32 over the same images (docs/choices.md)
    epochs: NonNegInt = 0  # 0: train.epochs (6: at 4 the detector still climbed 2-3 mAP in its last one, docs/choices.md)
    pretrained_backbone: bool = False  # ImageNet backbone (needs a download; never required)
    bn_momentum: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1  # torchvision's MobileNetV3 uses 0.01 (see set_bn_momentum)
    fpn_stages: list[Annotated[int, Field(ge=1, le=16)]] = [4, 7]  # MobileNetV3 ``features`` indices feeding the FPN
    fpn_channels: PosInt = 64
    representation_size: PosInt = 256  # width of the box head's two fully connected layers
    anchor_sizes: list[list[PosInt]] = [[8, 12], [16, 24], [32, 48]]  # per FPN level, the max-pooled level last
    rpn_post_nms_top_n_train: PosInt = 64  # proposals kept per image in training
    rpn_post_nms_top_n_test: PosInt = 50  # ... at test time (few objects per image here; the paper: 1000)
    box_batch_size_per_image: PosInt = 32  # sampled proposals per image for the box head's loss
    roi_sampling_ratio: PosInt = 1  # RoIAlign samples per bin side (the paper: 2; 1 halves the CPU step here)
    min_size: NonNegInt = 0  # 0: no internal resize (the detector sees the SR output at its own size)
    optim: OptimConfig = OptimConfig(name="adamw", lr=1.0e-3, momentum=0.0, weight_decay=1.0e-4, eta_min=1.0e-6)
    loss_weights: dict[str, NonNegFloat] = {"loss_classifier": 1.0, "loss_box_reg": 1.0, "loss_objectness": 1.0, "loss_rpn_box_reg": 1.0}
    tdp_layers: dict[str, NonNegFloat] = {"0": 0.5, "1": 0.5}  # FPN levels (the paper: '0' and '1', 0.5 each)
    cqmix_grid: PosInt = 8

    @model_validator(mode="after")
    def _levels(self) -> "DetConfig":
        if sorted(set(self.fpn_stages)) != self.fpn_stages or len(self.fpn_stages) < 1:
            raise ValueError(f"fpn_stages {self.fpn_stages} must be distinct and increasing")
        if len(self.anchor_sizes) != len(self.fpn_stages) + 1:
            raise ValueError(
                f"anchor_sizes has {len(self.anchor_sizes)} levels; the FPN has {len(self.fpn_stages) + 1} "
                f"({len(self.fpn_stages)} stages + the max-pooled level)"
            )
        if any(not sizes for sizes in self.anchor_sizes):
            raise ValueError(f"anchor_sizes {self.anchor_sizes}: every FPN level needs at least one anchor size")
        levels = {str(i) for i in range(len(self.fpn_stages))} | {"pool"}
        if set(self.tdp_layers) - levels:
            raise ValueError(f"tdp_layers {sorted(set(self.tdp_layers) - levels)} are not FPN levels; choose from {sorted(levels)}")
        _check_layers(self.tdp_layers, tuple(sorted(levels)))
        _check_terms(self.loss_weights, {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}, self.arch)
        return self


class RecogniserOnly(Strict):
    """H2T / S2T: train the recogniser alone."""

    task_weight: NonNegFloat = 1.0


class L2TConfig(RecogniserOnly):
    align_corners: bool = True  # the official L2T upsampler is UpsamplingBilinear2d (align_corners=True)


class PixelAndTask(Strict):
    """T2S / S+T: pixel L1 plus the task loss through the recogniser."""

    pix_weight: NonNegFloat = 1.0
    task_weight: NonNegFloat = 1.0


class SR4IRConfig(Strict):
    warmup_epochs: NonNegInt = 1  # TDP switches on after this many epochs
    pix_weight: NonNegFloat = 1.0
    tdp_weight: NonNegFloat = 1.0
    sr_weight: NonNegFloat = 0.34  # phase-2 task loss on the SR image
    hr_weight: NonNegFloat = 0.34  # ... on the HR image
    cqmix_weight: NonNegFloat = 0.34  # ... on the CQMix image
    cqmix_p: Probability = 0.5  # probability that a grid cell comes from the SR image
    recompute_sr_phase2: bool = True  # phase 2 re-runs SR with the just-updated weights (official behaviour)
    # Approximation (off = the paper): one recogniser forward over [SR; HR; CQMix] for the three phase-2 terms.
    # BatchNorm then normalises the three as one batch; needs sr_weight == hr_weight == cqmix_weight.
    phase2_batched: bool = False

    @model_validator(mode="after")
    def _batched_needs_equal_weights(self) -> "SR4IRConfig":
        if self.phase2_batched and not self.sr_weight == self.hr_weight == self.cqmix_weight:
            raise ValueError("phase2_batched needs sr_weight == hr_weight == cqmix_weight (one loss over the "
                             f"three images), got {self.sr_weight}, {self.hr_weight}, {self.cqmix_weight}")
        return self


class TrainConfig(Strict):
    epochs: PosInt = 6  # every task's, unless its own <task>.epochs says otherwise (cls: 8)
    batch_size: PosInt = 32  # the global batch: with nproc processes each takes batch_size / nproc
    # Processes per training stage (pretrain_sr, train*): > 1 runs the stage under torchrun, one per GPU
    # (Gloo on a CPU); pretrain_sr.batch_size and batch_size must be divisible by it. See README "Many GPUs".
    nproc: PosInt = 1
    # Machines per training stage: > 1 starts torchrun with c10d rendezvous at rdzv_endpoint (HOST:PORT, a port
    # on node 0) and nproc processes on each; every machine runs the stage, node_rank 0 writes the outputs. The
    # environment variables PET_NODE_RANK and PET_RDZV_ENDPOINT (torchrun's) override node_rank and rdzv_endpoint,
    # so every machine can share one params.yaml. nnodes x nproc processes in all (the math: a dvc.yaml dep).
    nnodes: PosInt = 1
    node_rank: NonNegInt = 0
    rdzv_endpoint: str = ""
    # SyncBatchNorm in a trained recogniser when nproc > 1: BatchNorm statistics over the global batch (the
    # official code's segmentation setting). PyTorch runs it on CUDA only; with one process it changes nothing.
    sync_bn: bool = False
    checkpoint_every_steps: NonNegInt = 0  # resume checkpoints also inside epochs (0: after each epoch only)
    # Share of the val split scored after every epoch for the learning curves (a fixed prefix; the split's
    # order is random). The table's numbers come from the evaluate stage on the whole split.
    monitor_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # Speed switches of the SR4IR step (python -m src.bench measures them). Off: the exact fp32 step.
    amp: Literal["none", "bf16"] = "none"  # bf16 autocast (close to fp32, not equal; GPU)
    compile: bool = False  # torch.compile the SR network and the recogniser's trunk
    channels_last: bool = True  # NHWC memory format (same math, float-level differences)
    tdp_batched: bool = False  # SR and HR TDP features in one forward (exact; slower on CPU, see bench)
    # The official detection warm-up: over epoch 1 every optimiser's lr ramps linearly from 1/iters to 1 with
    # the cosine held, which then runs over epochs 2..E (SR4IR's cycles: [W - 1, E - W] epochs). src/optim.py.
    linear_warmup: bool = False
    sr_optim: OptimConfig = OptimConfig(name="adamw", lr=2.0e-4, eta_min=1.0e-6)
    h2t: RecogniserOnly = RecogniserOnly()
    l2t: L2TConfig = L2TConfig()
    s2t: RecogniserOnly = RecogniserOnly()
    t2s: PixelAndTask = PixelAndTask()
    joint: PixelAndTask = PixelAndTask()
    sr4ir: SR4IRConfig = SR4IRConfig()

    @model_validator(mode="after")
    def _batch_splits(self) -> "TrainConfig":
        if self.batch_size % self.world:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be divisible by {self.world_key} ({self.world}): "
                             "each process takes batch_size / nproc samples of every batch")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"train.node_rank ({self.node_rank}) must be below train.nnodes ({self.nnodes})")
        return self

    @property
    def world(self) -> int:
        """Processes in all: ``nnodes`` x ``nproc``."""
        return self.nnodes * self.nproc

    @property
    def world_key(self) -> str:
        return "train.nproc" if self.nnodes == 1 else "train.nnodes x train.nproc"


class EvalConfig(Strict):
    batch_size: PosInt = 100
    psnr_crop_border: NonNegInt = 4  # pixels cut from each side before PSNR (the paper uses 8 on 224-480 px)
    # PSNR and LPIPS over each image (its padding cut off: the official seg and cls rule) or over the padded
    # canvas the SR network saw (the official det rule); the same when no image is padded.
    psnr_on: Literal["image", "canvas"] = "image"
    n_samples: Annotated[int, Field(ge=1, le=32)] = 4  # val images kept with predictions for the qualitative figure
    # LPIPS (VGG, v0.1) of SR methods and L2T, same crop as PSNR. auto: when torchvision's VGG16 weights are already in
    # the torch hub cache (never downloaded by a stage; otherwise the metrics say why it is missing); off: never.
    lpips: Literal["auto", "off"] = "auto"
    bootstrap: PosInt = 1000  # resamples of the val images for the one-seed report's intervals (src.bootstrap)


class SearchRange(Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "SearchRange":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        return self


class PrunerConfig(Strict):
    name: Literal["median", "none"] = "median"
    n_startup_trials: NonNegInt = 2  # trials that always run to the end before pruning starts
    n_warmup_steps: NonNegInt = 2  # first epoch at which a trial may be pruned (> the TDP warm-up)


class TuneConfig(Strict):
    """``python -m src.tune``: a shortened SR4IR budget per trial and the search space."""

    epochs: PosInt = 3
    warmup_epochs: NonNegInt = 1
    data_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5  # share of the train split each trial sees
    tdp_weight: SearchRange = SearchRange(low=0.01, high=10.0, log=True)
    cqmix_p: SearchRange = SearchRange(low=0.0, high=1.0)
    cqmix_grid: list[PosInt] = []  # e.g. [2, 4, 8] to tune the grid too; empty keeps cls.cqmix_grid
    sampler_seed: int = 0
    pruner: PrunerConfig = PrunerConfig()

    @model_validator(mode="after")
    def _budget(self) -> "TuneConfig":
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        if self.pruner.name != "none" and self.pruner.n_warmup_steps <= self.warmup_epochs:
            raise ValueError(
                f"pruner.n_warmup_steps ({self.pruner.n_warmup_steps}) must exceed warmup_epochs "
                f"({self.warmup_epochs}): epochs count from 1, and a trial is first judged once TDP is on"
            )
        if self.cqmix_p.low < 0 or self.cqmix_p.high > 1:
            raise ValueError("cqmix_p range must lie within [0, 1]")
        if self.tdp_weight.low < 0:
            raise ValueError("tdp_weight range must be non-negative")
        return self


class Params(Strict):
    # The seeds the study trains: every (task, method) is trained and evaluated once per seed, each seed from its
    # own SR pre-training (dvc.yaml's seed axis); the report gives the mean and 95 % interval over them.
    seeds: Annotated[list[int], Field(min_length=1)] = [0, 1, 2]
    # The one seed this process trains with: a stage's --seed (``with_seed``), seeds[0] otherwise (src.tune,
    # scripts). Not a params.yaml key: the file lists ``seeds``.
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _seed_from_seeds(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "seed" in data:
                raise PydanticCustomError("seed_key", "seed is not a key: list the study's seeds as seeds: [{seed}] "
                                          "(every seed is trained and evaluated; the report aggregates them)",
                                          {"seed": data["seed"]})
            seeds = data.get("seeds", [0, 1, 2])
            if isinstance(seeds, list) and seeds and isinstance(seeds[0], int):
                data = {**data, "seed": seeds[0]}
        return data

    def _own_or_train(self, task: str, name: str) -> tuple[int, str]:
        """``<task>.<name>`` when set (non-zero), else ``train.<name>``; with the key it came from (for errors)."""
        own = getattr(self.task_config(task), name)
        return (own, f"{task}.{name}") if own else (getattr(self.train, name), f"train.{name}")

    def train_batch(self, task: str) -> tuple[int, str]:
        """The global training batch of ``task``'s train* stages and the key it comes from."""
        return self._own_or_train(task, "batch_size")

    def train_epochs(self, task: str) -> tuple[int, str]:
        """The epochs of ``task``'s train* stages and the key they come from."""
        return self._own_or_train(task, "epochs")

    def with_seed(self, seed: int) -> "Params":
        """These params for one of ``seeds`` (a stage's --seed)."""
        if seed not in self.seeds:
            raise ConfigError(f"params.yaml: seed {seed} is not one of seeds {self.seeds}")
        return self.model_copy(update={"seed": seed})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tasks: list[Literal["cls", "seg", "det"]] = ["cls", "seg", "det"]
    data: DataConfig = DataConfig()
    degrade: DegradeConfig = DegradeConfig()
    sr: SRConfig = SRConfig()
    pretrain_sr: PretrainSRConfig = PretrainSRConfig()
    cls: ClsConfig = ClsConfig()
    seg: SegConfig = SegConfig()
    det: DetConfig = DetConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        size = self.data.hr_size
        scale = self.degrade.scale
        if size % scale and not self.data.variable_size:
            raise ValueError(
                f"{self.data.hr_size_key} ({size}) must be divisible by degrade.scale ({scale})"
            )
        for key in ("train_crop", "eval_crop"):
            crop = getattr(self.data, key)
            if crop % scale:
                raise ValueError(f"data.{key} ({crop}) must be divisible by degrade.scale ({scale})")
            if crop and not self.data.variable_size and crop > size:
                raise ValueError(f"data.{key} ({crop}) exceeds the {size}-px images ({self.data.hr_size_key})")
        if self.data.variable_size:
            whole = [t for t in self.tasks if t != "det"]  # a detector takes a list of sizes; the others a stacked batch
            if whole and not self.data.train_crop:
                raise ValueError(f"tasks {whole} with data.resize: short_side need data.train_crop > 0: a training "
                                 "batch of images of different sizes stacks only as equal crops (det takes them whole)")
            if whole and not self.data.eval_crop and self.eval.batch_size != 1:
                raise ValueError(f"tasks {whole} with data.resize: short_side and no data.eval_crop evaluate each image "
                                 f"at its own size: eval.batch_size must be 1 (the official protocol), got {self.eval.batch_size}")
        if self.data.aspect_groups and not self.data.variable_size:
            raise ValueError("data.aspect_groups needs data.resize: short_side (images of one size form one group)")
        if self.train.linear_warmup and 0 < self.train.sr4ir.warmup_epochs < 2:
            raise ValueError(f"train.linear_warmup: epoch 1 is the linear ramp, so sr4ir.warmup_epochs "
                             f"({self.train.sr4ir.warmup_epochs}) must be 0 or at least 2 (the paper's det: 3)")
        for epochs, key in map(self.train_epochs, self.tasks):
            if self.train.sr4ir.warmup_epochs >= epochs:
                raise ValueError(f"train.sr4ir.warmup_epochs ({self.train.sr4ir.warmup_epochs}) must be below {key} "
                                 f"({epochs}), or TDP never switches on")
        for batch, key in [*map(self.train_batch, self.tasks), (self.pretrain_sr.batch_size, "pretrain_sr.batch_size")]:
            if batch % self.train.world:
                raise ValueError(f"{key} ({batch}) must be divisible by {self.train.world_key} ({self.train.world}): "
                                 "each process takes batch_size / nproc samples of every batch")
        if self.train.sync_bn and self.train.world > 1 and self.device == "cpu":
            raise ValueError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only), but device is cpu: "
                             "set train.sync_bn: false (each process then normalises with its own share's statistics)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} names a seed twice")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {self.tasks} names a task twice")
        served = DATASET_TASKS.get(self.data.name)
        if served is not None and not set(self.tasks) <= served:
            missing = [t for t in self.tasks if t not in served]
            raise ValueError(
                f"tasks {self.tasks} asks for {missing}, but data.name {self.data.name!r} has annotations for "
                f"{sorted(served)} only: drop {missing} from tasks or choose another data.name"
            )
        side = self.data.eval_crop or size  # 0: each image's own size, known only when it is read
        if side and 2 * self.eval.psnr_crop_border >= side:
            raise ValueError(f"eval.psnr_crop_border ({self.eval.psnr_crop_border}) leaves no pixels of a {side}-px image")
        return self

    def task_config(self, task: str) -> "ClsConfig | SegConfig | DetConfig":
        return getattr(self, task)

    def digest(self) -> str:
        """Short hash of the validated params (for tags and checkpoint checks)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a parameter of this pipeline; check the spelling)"
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def parse_params(raw: object, source: Path | str = PARAMS_FILE) -> Params:
    """Validate an already-loaded mapping (e.g. params.yaml with overrides applied)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(Path(source), err)) from None


def read_params_file(path: Path | str = PARAMS_FILE) -> Any:
    """The parsed file, read as DVC reads it (ruamel.yaml's safe loader, YAML 1.2), so that the stages and DVC
    see the same values: PyYAML (YAML 1.1) reads ``1e9`` as a string, DVC as a number; a key given twice is
    an error to DVC, and so it is here. Missing, empty or malformed: a ``ConfigError`` naming the file."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (run from the repository root; `git checkout {path}` restores it)")
    try:
        raw = YAML(typ="safe").load(path.read_text())
    except YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if raw is None:
        raise ConfigError(f"{path}: empty; it spells out every parameter (the defaults live there, not in code): "
                          f"restore it with `git checkout {path}`")
    return raw


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml`` (once per process)."""
    return parse_params(read_params_file(path), Path(path))


def unset_keys(model: type[BaseModel], section: object, prefix: str = "") -> list[str]:
    """The dotted keys of ``model`` that ``section`` (a parsed params mapping) does not set."""
    if not isinstance(section, dict):
        return [prefix.rstrip(".") or "(top level)"]
    unset = []
    for name, field in model.model_fields.items():
        if model is Params and name == "seed":  # not a file key: derived from seeds (or a stage's --seed)
            continue
        if name not in section:
            unset.append(prefix + name)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            unset += unset_keys(field.annotation, section[name], f"{prefix}{name}.")
    return unset


def check_params_file(path: Path | str = PARAMS_FILE, raw: Any = None) -> Params:
    """What ``python -m pipeline.check`` asks of the params file before DVC runs anything: valid (as
    ``load_params``) and complete, since DVC reads each stage's params from the file itself and the file is
    where the defaults live. ``raw``: the parsed file with overrides applied (``dvc exp run -S``)."""
    path = Path(path)
    raw = read_params_file(path) if raw is None else raw
    params = parse_params(raw, path)
    unset = unset_keys(Params, raw)
    if unset:
        more = f" (and {len(unset) - 1} more)" if len(unset) > 1 else ""
        raise ConfigError(f"{path}: {unset[0]}: missing{more}; the file spells out every parameter and DVC reads them "
                          "from it: copy the key from the repository's params.yaml")
    return params
