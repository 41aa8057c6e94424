"""The update rules: one function per way the paper's methods train, each one optimiser iteration.

Six methods (``src.methods``) share five rules; a method names its rule in ``Method.step``:

==========  ==========================  =========================================================
rule        methods                     what one iteration does
==========  ==========================  =========================================================
pixel       SR pre-training             L1(SR(LR), HR); SR steps
recogniser  H2T, L2T, S→T               task loss of the recogniser on its view (HR, up(LR), SR(LR))
sr_via_task T→S                         L1 + task loss through a frozen recogniser; SR steps
joint       S+T                         L1 + task loss, one backward; SR and recogniser step
alternate   SR4IR                       phase 1: SR on L1 (+ TDP); phase 2: recogniser on SR, HR, CQMix
==========  ==========================  =========================================================

Each rule returns its named loss terms (unweighted) for logging. The loop (``src.loop``) calls them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from src import distributed
from src.config import PixelAndTask, RecogniserOnly, SR4IRConfig
from src.cqmix import cqmix
from src.data.dataset import Batch
from src.losses import tdp_loss
from src.methods import Method
from src.models.sr import bilinear_up
from src.optim import optimizer_step
from src.tasks.base import Task, weighted_sum

# A method's loss weights: its section of params.train (None for SR pre-training).
MethodLoss = RecogniserOnly | PixelAndTask | SR4IRConfig


@dataclass
class Setup:
    """Everything a step needs: the networks, their optimisers, and the method's loss settings."""

    method: Method
    task: Task | None
    sr: nn.Module | None
    rec: nn.Module | None
    opt_sr: torch.optim.Optimizer | None
    opt_rec: torch.optim.Optimizer | None
    loss: MethodLoss | None  # the method's loss weights (params.train.<method>); None for SR pre-training
    task_loss_weights: Mapping[str, float] = field(default_factory=dict)
    tdp_layers: Mapping[str, float] = field(default_factory=dict)
    cqmix_grid: int = 4
    scale: int = 4
    align_corners: bool = True
    mix_generator: torch.Generator | None = None  # CQMix masks: their own stream, so data order is unaffected
    sr_eta_min: float = 0.0  # floors of the cosine schedules, from the optimiser configs that built opt_sr/opt_rec
    rec_eta_min: float = 0.0
    # Speed settings of the SR4IR step (``alternate_step``); ``src.experiment.prepare_for_speed`` applies the
    # model-side ones.
    tdp_batched: bool = False  # SR and HR TDP features in one forward when exact (opt-in: see _tdp_features)
    amp_dtype: torch.dtype | None = None  # e.g. torch.bfloat16: autocast the forwards (opt-in; not exact)
    channels_last: bool = False  # NHWC networks and inputs (same math, float-level differences)
    compile: bool = False  # torch.compile the SR network and the recogniser's trunk (opt-in)
    # Under torchrun, the DDP wrappers of the trained networks (``src.distributed.ddp``; None in one process and
    # for a frozen network): they run the forwards whose gradients are averaged. ``sr``/``rec`` stay the bare
    # networks (their ``.module``), which everything else uses: frozen critics, features, evaluation, saving.
    sr_ddp: nn.Module | None = None
    rec_ddp: nn.Module | None = None


def _trained_sr(s: Setup) -> nn.Module:
    """The SR network for a forward whose gradients train it: its DDP wrapper under torchrun."""
    return s.sr if s.sr_ddp is None else s.sr_ddp


def _trained_rec(s: Setup) -> nn.Module:
    """The recogniser for a forward whose gradients train it: its DDP wrapper under torchrun (a frozen one has
    none: the bare network)."""
    return s.rec if s.rec_ddp is None else s.rec_ddp


def view_images(s: Setup, batch: Batch) -> torch.Tensor:
    """The image the recogniser sees for this method: HR, upsampled LR or SR(LR) (unclamped)."""
    if s.method.view == "hr":
        return batch.hr
    if s.method.view == "lr_up":
        return bilinear_up(batch.lr, s.scale, s.align_corners)
    return s.sr(batch.lr)


def per_image(x: torch.Tensor, sizes: list[tuple[int, int]] | None) -> torch.Tensor | list[torch.Tensor]:
    """What the recogniser takes of a batch of images on a canvas (``Batch.sizes``): ``x`` itself when no
    image was padded, else each image cut back to its own size: stacked when they share one (an evaluation
    batch of one), else a list (a detector takes lists). The SR network and the pixel loss see the canvas."""
    if sizes is None:
        return x
    crops = [x[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]
    if all(c.shape == crops[0].shape for c in crops):
        return torch.stack(crops)
    return crops


def task_loss(s: Setup, images: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The weighted task loss of the recogniser on ``images`` (a canvas batch like ``batch.hr``), through its DDP
    wrapper when it trains under torchrun."""
    return weighted_sum(s.task.losses(_trained_rec(s), per_image(images, batch.sizes), batch.target), s.task_loss_weights)


# ---------------------------------------------------------------------------------------------------
# One step per update rule. Each returns its named loss terms (unweighted) for logging.


def pixel_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """SR pre-training: L1 between SR(LR) and HR."""
    loss = F.l1_loss(_trained_sr(s)(batch.lr), batch.hr)
    optimizer_step([s.opt_sr], loss, "loss_pix")
    return {"loss_pix": loss}


def recogniser_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """H2T, L2T, S2T: the recogniser alone on its view (a frozen SR makes the S2T view)."""
    with torch.no_grad():
        images = view_images(s, batch)
    loss = task_loss(s, images, batch)
    optimizer_step([s.opt_rec], s.loss.task_weight * loss, "loss_task")
    return {"loss_task": loss}


def sr_via_task_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """T2S: SR trained with L1 plus the task loss of a frozen, eval-mode recogniser."""
    sr_out = _trained_sr(s)(batch.lr)
    pix = F.l1_loss(sr_out, batch.hr)
    with s.task.frozen(s.rec):
        task = task_loss(s, sr_out, batch)
    optimizer_step([s.opt_sr], s.loss.pix_weight * pix + s.loss.task_weight * task, "T2S loss", {"loss_pix": pix, "loss_task": task})
    return {"loss_pix": pix, "loss_task": task}


def joint_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """S+T: both networks in train mode, one backward through L1 + task loss, both optimisers step."""
    sr_out = _trained_sr(s)(batch.lr)
    pix = F.l1_loss(sr_out, batch.hr)
    task = task_loss(s, sr_out, batch)
    optimizer_step([s.opt_sr, s.opt_rec], s.loss.pix_weight * pix + s.loss.task_weight * task, "S+T loss",
                   {"loss_pix": pix, "loss_task": task})
    return {"loss_pix": pix, "loss_task": task}


# Batch-dependent layers: in train mode their output for one sample depends on the rest of the batch (or on
# RNG draws whose order depends on the batch size), so features of a concatenated batch would differ.
_BATCH_COUPLED = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.modules.instancenorm._InstanceNorm)


def _batch_independent(net: nn.Module) -> bool:
    """True when every layer maps each sample on its own (BN in eval mode, no active dropout)."""
    return not any(m.training for m in net.modules() if isinstance(m, _BATCH_COUPLED))


def _autocast(s: Setup, x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    if s.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=s.amp_dtype)


def _memory_format(s: Setup, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if s.channels_last and x.dim() == 4 else x


def _tdp_features(s: Setup, sr_out: torch.Tensor, hr: torch.Tensor,
                  sizes: list[tuple[int, int]] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """TDP features of SR (with a graph back to SR) and of HR (a target: no graph), inside ``task.frozen``.

    With a batch-independent critic (eval-mode BN, ``Task.frozen``) one forward over ``cat([SR, HR])`` gives
    the same features as two forwards (up to float rounding of the larger batch); otherwise two forwards.
    The batched forward's backward also runs through the (detached) HR half: one launch sequence fewer, but
    more backward FLOPs (+4% per cls step) and the activations of both halves kept for backward (+24% peak
    memory for cls on CUDA). Measured (``python -m src.bench``): ~15% slower on a 2-core CPU, within noise on
    an H200; hence opt-in (``Setup.tdp_batched``).
    """
    if s.tdp_batched and _batch_independent(s.rec) and sizes is None:
        b = sr_out.shape[0]
        both = s.task.features(s.rec, torch.cat([sr_out.float(), hr]))
        return {k: v[:b] for k, v in both.items()}, {k: v[b:].detach() for k, v in both.items()}
    with torch.no_grad():  # the HR features are a target: no graph needed
        f_hr = s.task.features(s.rec, per_image(hr, sizes))
    return s.task.features(s.rec, per_image(sr_out, sizes)), f_hr


def alternate_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """SR4IR: phase 1 updates SR against a frozen critic; phase 2 updates the recogniser on SR, HR, CQMix.

    ``src.reference.reference_alternate_step`` is the same math written the way the official code runs it;
    this one builds no autograd graph where no gradient is needed (phase-2 SR, HR features) and can batch
    the TDP forwards (``Setup.tdp_batched``). ``Setup.amp_dtype``/``channels_last`` are opt-in speed-ups.
    """
    cfg = s.loss
    lr_img, hr_img = _memory_format(s, batch.lr), _memory_format(s, batch.hr)
    # Phase 1: SR step. L1, plus TDP after the warm-up; the recogniser is a fixed critic (eval, no grads).
    with _autocast(s, lr_img):
        sr_out = _trained_sr(s)(lr_img)  # (B, 3, sH, sW), unclamped
        terms = {"loss_pix": F.l1_loss(sr_out.float(), hr_img)}
        phase1 = cfg.pix_weight * terms["loss_pix"]
        if tdp_on:
            distributed.sync_buffers(s.rec)  # the bare critic: rank 0's running statistics, as a DDP forward starts
            with s.task.frozen(s.rec):
                f_sr, f_hr = _tdp_features(s, sr_out, hr_img, batch.sizes)
            terms["loss_tdp"] = tdp_loss({k: v.float() for k, v in f_sr.items()}, {k: v.float() for k, v in f_hr.items()}, s.tdp_layers)
            phase1 = phase1 + cfg.tdp_weight * terms["loss_tdp"]
    optimizer_step([s.opt_sr], phase1, "SR4IR phase-1 loss", terms)

    # Phase 2: recogniser step on SR (recomputed with the updated SR, no graph), HR and their patch mix.
    with _autocast(s, lr_img):
        if cfg.recompute_sr_phase2:
            with torch.no_grad():
                sr_out = s.sr(lr_img)
        sr_out = sr_out.detach().float()
        # The mask covers the whole canvas (the official det rule; cls/seg crops fill theirs), then each image is cut back.
        mixed = _memory_format(s, cqmix(sr_out, hr_img, s.cqmix_grid, cfg.cqmix_p, s.mix_generator))
        if cfg.phase2_batched:  # an approximation: one forward, BatchNorm sees SR, HR and CQMix as one batch
            tripled = Batch(lr=batch.lr, hr=hr_img, target=_repeat(batch.target, 3),
                            sizes=None if batch.sizes is None else batch.sizes * 3)
            terms["loss_task_batched"] = task_loss(s, torch.cat([sr_out, hr_img, mixed]), tripled)
            phase2 = 3 * cfg.sr_weight * terms["loss_task_batched"]  # mean over the three = (L_sr + L_hr + L_mix) / 3
        else:
            terms["loss_task_sr"] = task_loss(s, sr_out, batch)
            terms["loss_task_hr"] = task_loss(s, hr_img, batch)
            terms["loss_task_cqmix"] = task_loss(s, mixed, batch)
            phase2 = cfg.sr_weight * terms["loss_task_sr"] + cfg.hr_weight * terms["loss_task_hr"] + cfg.cqmix_weight * terms["loss_task_cqmix"]
    optimizer_step([s.opt_rec], phase2, "SR4IR phase-2 loss", terms)
    return terms


def _repeat(target: Any, k: int) -> Any:
    """A batch's targets for the batch repeated ``k`` times (a tensor, or a list of per-image targets)."""
    return torch.cat([target] * k) if isinstance(target, torch.Tensor) else list(target) * k


STEPS: dict[str, Callable[[Setup, Batch, bool], dict[str, torch.Tensor]]] = {
    "pixel": pixel_step,
    "recogniser": recogniser_step,
    "sr_via_task": sr_via_task_step,
    "joint": joint_step,
    "alternate": alternate_step,
}
