"""One training loop for every method: ``fit`` = ``train_one_epoch`` + ``evaluate``, epoch by epoch.

Methods differ only in their step function (``STEPS``) and in which networks train; tasks differ only
behind ``Task``. Nothing here imports a tracker: progress leaves through ``Callback.on_epoch_end``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from src.config import OptimConfig, Params
from src.cqmix import cqmix
from src.data.dataset import Batch
from src.losses import tdp_loss
from src.methods import Method
from src.metrics import PSNR
from src.models.sr import bilinear_up, build_sr
from src.tasks.base import Task, weighted_sum
from src.utils import progress, to_device


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None: ...


@dataclass
class Setup:
    """Everything a step needs: the networks, their optimisers, and the method's loss settings."""

    method: Method
    task: Task | None
    sr: nn.Module | None
    rec: nn.Module | None
    opt_sr: torch.optim.Optimizer | None
    opt_rec: torch.optim.Optimizer | None
    loss_cfg: Any  # the method's section of params.train (weights), None for SR pre-training
    task_loss_weights: Mapping[str, float] = field(default_factory=dict)
    tdp_layers: Mapping[str, float] = field(default_factory=dict)
    cqmix_grid: int = 4
    scale: int = 4
    align_corners: bool = True
    mix_generator: torch.Generator | None = None  # CQMix masks: their own stream, so data order is unaffected
    sr_eta_min: float = 0.0  # floors of the cosine schedules, from the optimiser configs that built opt_sr/opt_rec
    rec_eta_min: float = 0.0


# ---------------------------------------------------------------------------------------------------
# Building blocks


def build_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_restart(optimizer: torch.optim.Optimizer, periods: Sequence[int], eta_min: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing from each group's lr to ``eta_min`` over each period (in steps), restarting at
    every period boundary (BasicSR's CosineAnnealingRestartLR with unit restart weights). Steps past the
    last period stay at ``eta_min`` instead of crashing."""
    starts = [sum(periods[:i]) for i in range(len(periods))]

    def factor_for(base_lr: float) -> Callable[[int], float]:
        floor = eta_min / base_lr

        def factor(t: int) -> float:
            i = max(j for j, s in enumerate(starts) if t >= s)
            pos = min((t - starts[i]) / max(periods[i], 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * pos))

        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(g["lr"]) for g in optimizer.param_groups])


def freeze(net: nn.Module) -> None:
    """A network that does not train: eval mode and no gradients at all (not just left out of the optimiser)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)


def _update(optimizers: Sequence[torch.optim.Optimizer], loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite {what} ({loss.item()}); stopping before it reaches the weights")
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()


def view_images(s: Setup, batch: Batch) -> torch.Tensor:
    """The image the recogniser sees for this method: HR, upsampled LR or SR(LR) (unclamped)."""
    if s.method.view == "hr":
        return batch.hr
    if s.method.view == "lr_up":
        return bilinear_up(batch.lr, s.scale, s.align_corners)
    return s.sr(batch.lr)


def _task_loss(s: Setup, images: torch.Tensor, target: Any) -> torch.Tensor:
    return weighted_sum(s.task.losses(s.rec, images, target), s.task_loss_weights)


# ---------------------------------------------------------------------------------------------------
# One step per update rule. Each returns its named loss terms (unweighted) for logging.


def pixel_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """SR pre-training: L1 between SR(LR) and HR."""
    loss = F.l1_loss(s.sr(batch.lr), batch.hr)
    _update([s.opt_sr], loss, "loss_pix")
    return {"loss_pix": loss}


def recogniser_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """H2T, L2T, S2T: the recogniser alone on its view (a frozen SR makes the S2T view)."""
    with torch.no_grad():
        images = view_images(s, batch)
    loss = _task_loss(s, images, batch.target)
    _update([s.opt_rec], s.loss_cfg.task_weight * loss, "loss_task")
    return {"loss_task": loss}


def critic_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """T2S: SR trained with L1 plus the task loss of a frozen, eval-mode recogniser."""
    sr_out = s.sr(batch.lr)
    pix = F.l1_loss(sr_out, batch.hr)
    with s.task.frozen(s.rec):
        task = _task_loss(s, sr_out, batch.target)
    _update([s.opt_sr], s.loss_cfg.pix_weight * pix + s.loss_cfg.task_weight * task, "T2S loss")
    return {"loss_pix": pix, "loss_task": task}


def joint_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """S+T: both networks in train mode, one backward through L1 + task loss, both optimisers step."""
    sr_out = s.sr(batch.lr)
    pix = F.l1_loss(sr_out, batch.hr)
    task = _task_loss(s, sr_out, batch.target)
    _update([s.opt_sr, s.opt_rec], s.loss_cfg.pix_weight * pix + s.loss_cfg.task_weight * task, "S+T loss")
    return {"loss_pix": pix, "loss_task": task}


def alternate_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """SR4IR: phase 1 updates SR against a frozen critic; phase 2 updates the recogniser on SR, HR, CQMix."""
    cfg = s.loss_cfg
    # Phase 1: SR step. L1, plus TDP after the warm-up; the recogniser is a fixed critic (eval, no grads).
    sr_out = s.sr(batch.lr)  # (B, 3, sH, sW), unclamped
    terms = {"loss_pix": F.l1_loss(sr_out, batch.hr)}
    phase1 = cfg.pix_weight * terms["loss_pix"]
    if tdp_on:
        with s.task.frozen(s.rec):
            with torch.no_grad():  # the HR features are a target: no graph needed
                f_hr = s.task.features(s.rec, batch.hr)
            f_sr = s.task.features(s.rec, sr_out)
            terms["loss_tdp"] = tdp_loss(f_sr, f_hr, s.tdp_layers)
        phase1 = phase1 + cfg.tdp_weight * terms["loss_tdp"]
    _update([s.opt_sr], phase1, "SR4IR phase-1 loss")

    # Phase 2: recogniser step on SR (recomputed with the updated SR, no graph), HR and their patch mix.
    if cfg.recompute_sr_phase2:
        with torch.no_grad():
            sr_out = s.sr(batch.lr)
    sr_out = sr_out.detach()
    mixed = cqmix(sr_out, batch.hr, s.cqmix_grid, cfg.cqmix_p, s.mix_generator)
    terms["loss_task_sr"] = _task_loss(s, sr_out, batch.target)
    terms["loss_task_hr"] = _task_loss(s, batch.hr, batch.target)
    terms["loss_task_cqmix"] = _task_loss(s, mixed, batch.target)
    phase2 = cfg.sr_weight * terms["loss_task_sr"] + cfg.hr_weight * terms["loss_task_hr"] + cfg.cqmix_weight * terms["loss_task_cqmix"]
    _update([s.opt_rec], phase2, "SR4IR phase-2 loss")
    return terms


STEPS: dict[str, Callable[[Setup, Batch, bool], dict[str, torch.Tensor]]] = {
    "pixel": pixel_step,
    "recogniser": recogniser_step,
    "critic": critic_step,
    "joint": joint_step,
    "alternate": alternate_step,
}


# ---------------------------------------------------------------------------------------------------
# Epochs


def _set_modes(s: Setup) -> None:
    if s.sr is not None:
        s.sr.train(s.method.trains_sr)
    if s.rec is not None:
        s.rec.train(s.method.trains_rec)


def train_one_epoch(s: Setup, loader: DataLoader, device: torch.device, schedulers: Sequence[Any], tdp_on: bool, desc: str) -> dict[str, float]:
    _set_modes(s)
    step = STEPS[s.method.step]
    sums: dict[str, float] = defaultdict(float)
    n = 0
    for batch in progress(loader, desc=desc):
        batch = to_device(batch, device)
        terms = step(s, batch, tdp_on)
        for sched in schedulers:
            sched.step()  # per iteration, like the official schedules
        b = batch.hr.shape[0]
        for k, v in terms.items():
            sums[k] += float(v.detach()) * b
        n += b
    return {f"train/{k}": v / n for k, v in sums.items()}


@torch.inference_mode()
def evaluate(s: Setup, loader: DataLoader, device: torch.device, psnr_crop: int) -> dict[str, float]:
    """Task metric of the recogniser on its view, and PSNR of that view against HR (not for H2T)."""
    if s.sr is not None:
        s.sr.eval()
    if s.rec is not None:
        s.rec.eval()
    metric = s.task.new_metric() if s.method.uses_rec else None
    psnr = PSNR(psnr_crop) if s.method.view != "hr" else None
    for batch in progress(loader, desc="evaluate"):
        batch = to_device(batch, device)
        images = view_images(s, batch)
        if metric is not None:
            metric.update(s.task.predict(s.rec, images), batch.target)
        if psnr is not None:
            psnr.update(images, batch.hr)
    out: dict[str, float] = {}
    if metric is not None:
        out.update(metric.compute())
    if psnr is not None:
        out.update(psnr.compute())
    return out


@torch.inference_mode()
def collect_samples(s: Setup, loader: DataLoader, device: torch.device, n: int) -> dict[str, Any]:
    """The first ``n`` val images as uint8 arrays (LR, the recogniser's view, HR) with predictions and targets,
    for qualitative figures."""
    if s.sr is not None:
        s.sr.eval()
    s.rec.eval()
    batch = to_device(next(iter(loader)), device)
    lr, hr, target = batch.lr[:n], batch.hr[:n], batch.target[:n]
    view = view_images(s, Batch(lr=lr, hr=hr, target=target))
    preds = s.task.predict(s.rec, view)

    def u8(x: torch.Tensor) -> Any:
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)

    return {"lr": u8(lr), "view": u8(view), "hr": u8(hr), "pred": preds.cpu().numpy(), "target": target.cpu().numpy()}


def fit(
    s: Setup,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    epochs: int,
    device: torch.device,
    warmup_epochs: int = 0,
    psnr_crop: int = 4,
    callbacks: Sequence[Callback] = (),
) -> list[dict[str, float]]:
    """Train for ``epochs``; evaluate after each epoch; return one record per epoch.

    The cosine schedule restarts when TDP switches on (periods [W, E - W], derived here in one place).
    """
    iters = len(train_loader)
    periods = [warmup_epochs * iters, (epochs - warmup_epochs) * iters] if warmup_epochs else [epochs * iters]
    schedulers = []
    if s.opt_sr is not None:
        schedulers.append(cosine_restart(s.opt_sr, periods, s.sr_eta_min))
    if s.opt_rec is not None:
        schedulers.append(cosine_restart(s.opt_rec, periods, s.rec_eta_min))
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        tdp_on = epoch > warmup_epochs and s.method.step == "alternate"
        record: dict[str, float] = {"epoch": epoch}
        record.update(train_one_epoch(s, train_loader, device, schedulers, tdp_on, desc=f"{s.method.name} epoch {epoch}/{epochs}"))
        record["time/train_s"] = time.perf_counter() - t0
        if val_loader is not None:
            record.update({f"val/{k}": v for k, v in evaluate(s, val_loader, device, psnr_crop).items()})
        record["time/epoch_s"] = time.perf_counter() - t0
        history.append(record)
        for cb in callbacks:
            cb.on_epoch_end(epoch, record)
    return history


# ---------------------------------------------------------------------------------------------------
# Assembling a run from params


def load_state(net: nn.Module, path: Path, what: str) -> None:
    """Load a state dict saved by this pipeline; name the missing or unexpected keys when it does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} weights missing (has the stage that writes them run?)") from None
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        raise ValueError(f"{path}: {what} weights do not fit the configured network: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: {what} weights do not fit the configured network: "
            f"missing keys {result.missing_keys[:8]}, unexpected keys {result.unexpected_keys[:8]} "
            "(different architecture or scale in params.yaml?)"
        )


def build_setup(
    method: Method,
    params: Params,
    task: Task | None,
    sr_init: Path | None = None,
    rec_init: Path | None = None,
    device: torch.device = torch.device("cpu"),
    mix_seed: int = 0,
    sr_optim: OptimConfig | None = None,
) -> Setup:
    """Networks (loaded where the method says), frozen where they do not train, with optimisers.

    ``sr_optim`` overrides ``params.train.sr_optim`` (SR pre-training has its own).
    """
    sr = rec = opt_sr = opt_rec = None
    sr_optim = sr_optim or params.train.sr_optim
    if method.view == "sr":
        sr = build_sr(params.sr, params.degrade.scale)
        if sr_init is not None:
            load_state(sr, sr_init, "SR")
        sr = sr.to(device)
        if method.trains_sr:
            opt_sr = build_optimizer([p for p in sr.parameters() if p.requires_grad], sr_optim)
        else:
            freeze(sr)
    task_cfg = None
    if method.uses_rec:
        task_cfg = params.task_config(task.name)
        rec = task.build_model()
        if rec_init is not None:
            load_state(rec, rec_init, "recogniser")
        rec = rec.to(device)
        if method.trains_rec:
            opt_rec = build_optimizer([p for p in rec.parameters() if p.requires_grad], task_cfg.optim)
        else:
            freeze(rec)
    return Setup(
        method=method,
        task=task,
        sr=sr,
        rec=rec,
        opt_sr=opt_sr,
        opt_rec=opt_rec,
        loss_cfg=getattr(params.train, method.name, None),
        task_loss_weights=task_cfg.loss_weights if task_cfg else {},
        tdp_layers=task_cfg.tdp_layers if task_cfg else {},
        cqmix_grid=task_cfg.cqmix_grid if task_cfg else 4,
        scale=params.degrade.scale,
        align_corners=params.train.l2t.align_corners,
        mix_generator=torch.Generator().manual_seed(mix_seed),
        sr_eta_min=sr_optim.eta_min,
        rec_eta_min=task_cfg.optim.eta_min if task_cfg else 0.0,
    )
