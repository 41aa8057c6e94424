"""One training loop for every method: ``fit`` = ``train_one_epoch`` + ``evaluate``, epoch by epoch.

Methods differ only in their step function (``STEPS``) and in which networks train; tasks differ only
behind ``Task``. Nothing here imports a tracker: progress leaves through ``Callback.on_epoch_end``.
"""

from __future__ import annotations

import contextlib
import logging
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

from src import checkpoint as ckpt
from src import distributed
from src.checkpoint import Checkpointing
from src.config import OptimConfig, Params
from src.cqmix import cqmix
from src.data.dataset import Batch
from src.losses import tdp_loss
from src.methods import Method
from src.metrics import LPIPS, PSNR
from src.models.official import load_official_sr
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
    # Speed settings of the SR4IR step (``alternate_step``); apply the model-side ones with ``prepare_for_speed``.
    tdp_batched: bool = False  # SR and HR TDP features in one forward when exact (opt-in: see _tdp_features)
    amp_dtype: torch.dtype | None = None  # e.g. torch.bfloat16: autocast the forwards (opt-in; not exact)
    channels_last: bool = False  # NHWC networks and inputs (same math, float-level differences)
    compile: bool = False  # torch.compile the SR network and the recogniser's trunk (opt-in)


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


def _update(optimizers: Sequence[torch.optim.Optimizer], loss: torch.Tensor, what: str,
            terms: Mapping[str, torch.Tensor] | None = None) -> None:
    """One optimiser step on ``loss``; a NaN or inf loss stops before it reaches the weights, naming the
    offending terms.

    Under torchrun the gradients are averaged over the processes before the step: DDP's math (sum over
    ranks / world size) in DDP's buckets (``distributed.GradientAverager``), on GPUs each all-reduced while
    the backward pass goes on. A non-finite loss on any rank is all-reduced with them and stops
    every rank before any weight changes."""
    finite = bool(torch.isfinite(loss))
    world = distributed.world_size()
    if not finite and world == 1:
        raise _non_finite(loss, what, terms)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    if world == 1:
        loss.backward()
    else:
        params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
        averager = distributed.GradientAverager(params)
        if finite:
            with averager:  # on GPUs the buckets are all-reduced while the backward goes on
                loss.backward()
        n_bad = averager.finish(bad=not finite)
        if not finite:
            raise _non_finite(loss, what, terms)
        if n_bad:
            raise FloatingPointError(f"non-finite {what} in {n_bad} of {world} processes")
    for opt in optimizers:
        opt.step()


def _non_finite(loss: torch.Tensor, what: str, terms: Mapping[str, torch.Tensor] | None) -> FloatingPointError:
    bad = [f"{k}={float(v.detach())}" for k, v in (terms or {}).items() if not torch.isfinite(v)]
    return FloatingPointError(f"non-finite {what} ({loss.detach().item()}; terms: {', '.join(bad) or 'n/a'})")


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
    _update([s.opt_sr], s.loss_cfg.pix_weight * pix + s.loss_cfg.task_weight * task, "T2S loss", {"loss_pix": pix, "loss_task": task})
    return {"loss_pix": pix, "loss_task": task}


def joint_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """S+T: both networks in train mode, one backward through L1 + task loss, both optimisers step."""
    sr_out = s.sr(batch.lr)
    pix = F.l1_loss(sr_out, batch.hr)
    task = _task_loss(s, sr_out, batch.target)
    _update([s.opt_sr, s.opt_rec], s.loss_cfg.pix_weight * pix + s.loss_cfg.task_weight * task, "S+T loss",
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


def _tdp_features(s: Setup, sr_out: torch.Tensor, hr: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """TDP features of SR (with a graph back to SR) and of HR (a target: no graph), inside ``task.frozen``.

    With a batch-independent critic (eval-mode BN, ``Task.frozen``) one forward over ``cat([SR, HR])`` gives
    the same features as two forwards (up to float rounding of the larger batch); otherwise two forwards.
    The batched forward's backward also runs through the (detached) HR half: one launch sequence fewer, but
    more backward FLOPs (+4% per cls step) and the activations of both halves kept for backward (+24% peak
    memory for cls on CUDA). Measured (``python -m src.bench``): ~15% slower on a 2-core CPU, within noise on
    an H200; hence opt-in (``Setup.tdp_batched``).
    """
    if s.tdp_batched and _batch_independent(s.rec):
        b = sr_out.shape[0]
        both = s.task.features(s.rec, torch.cat([sr_out.float(), hr]))
        return {k: v[:b] for k, v in both.items()}, {k: v[b:].detach() for k, v in both.items()}
    with torch.no_grad():  # the HR features are a target: no graph needed
        f_hr = s.task.features(s.rec, hr)
    return s.task.features(s.rec, sr_out), f_hr


def alternate_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    """SR4IR: phase 1 updates SR against a frozen critic; phase 2 updates the recogniser on SR, HR, CQMix.

    ``src.reference.reference_alternate_step`` is the same math written the way the official code runs it;
    this one builds no autograd graph where no gradient is needed (phase-2 SR, HR features) and can batch
    the TDP forwards (``Setup.tdp_batched``). ``Setup.amp_dtype``/``channels_last`` are opt-in speed-ups.
    """
    cfg = s.loss_cfg
    lr, hr = _memory_format(s, batch.lr), _memory_format(s, batch.hr)
    # Phase 1: SR step. L1, plus TDP after the warm-up; the recogniser is a fixed critic (eval, no grads).
    with _autocast(s, lr):
        sr_out = s.sr(lr)  # (B, 3, sH, sW), unclamped
        terms = {"loss_pix": F.l1_loss(sr_out.float(), hr)}
        phase1 = cfg.pix_weight * terms["loss_pix"]
        if tdp_on:
            with s.task.frozen(s.rec):
                f_sr, f_hr = _tdp_features(s, sr_out, hr)
            terms["loss_tdp"] = tdp_loss({k: v.float() for k, v in f_sr.items()}, {k: v.float() for k, v in f_hr.items()}, s.tdp_layers)
            phase1 = phase1 + cfg.tdp_weight * terms["loss_tdp"]
    _update([s.opt_sr], phase1, "SR4IR phase-1 loss", terms)

    # Phase 2: recogniser step on SR (recomputed with the updated SR, no graph), HR and their patch mix.
    with _autocast(s, lr):
        if cfg.recompute_sr_phase2:
            with torch.no_grad():
                sr_out = s.sr(lr)
        sr_out = sr_out.detach().float()
        mixed = _memory_format(s, cqmix(sr_out, hr, s.cqmix_grid, cfg.cqmix_p, s.mix_generator))
        if cfg.phase2_batched:  # an approximation: one forward, BatchNorm sees SR, HR and CQMix as one batch
            terms["loss_task_batched"] = _task_loss(s, torch.cat([sr_out, hr, mixed]), _repeat(batch.target, 3))
            phase2 = 3 * cfg.sr_weight * terms["loss_task_batched"]  # mean over the three = (L_sr + L_hr + L_mix) / 3
        else:
            terms["loss_task_sr"] = _task_loss(s, sr_out, batch.target)
            terms["loss_task_hr"] = _task_loss(s, hr, batch.target)
            terms["loss_task_cqmix"] = _task_loss(s, mixed, batch.target)
            phase2 = cfg.sr_weight * terms["loss_task_sr"] + cfg.hr_weight * terms["loss_task_hr"] + cfg.cqmix_weight * terms["loss_task_cqmix"]
    _update([s.opt_rec], phase2, "SR4IR phase-2 loss", terms)
    return terms


def _repeat(target: Any, k: int) -> Any:
    """A batch's targets for the batch repeated ``k`` times (a tensor, or a list of per-image targets)."""
    return torch.cat([target] * k) if isinstance(target, torch.Tensor) else list(target) * k


def prepare_for_speed(s: Setup) -> Setup:
    """Apply the model-side speed settings of ``s`` in place (call once, after ``build_setup``).

    ``channels_last``: SR and recogniser weights in NHWC (the same Parameter objects, so the optimisers
    keep working). ``compile``: ``torch.compile`` in place (state-dict keys unchanged) of the SR network and
    of the recogniser's conv trunk: its ``net.backbone`` where it has one (a detector's RPN and box heads have
    data-dependent shapes and stay eager), else the whole recogniser (its ``forward``, i.e. the phase-2 losses).
    """
    nets = [n for n in (s.sr, s.rec) if n is not None]
    if s.channels_last:
        for net in nets:
            net.to(memory_format=torch.channels_last)
    if s.compile:
        if s.sr is not None:
            s.sr.compile(dynamic=False)
        if s.rec is not None:
            trunk = getattr(getattr(s.rec, "net", None), "backbone", None)
            (trunk if isinstance(trunk, nn.Module) else s.rec).compile(dynamic=False)
    return s


STEPS: dict[str, Callable[[Setup, Batch, bool], dict[str, torch.Tensor]]] = {
    "pixel": pixel_step,
    "recogniser": recogniser_step,
    "critic": critic_step,
    "joint": joint_step,
    "alternate": alternate_step,
}


# ---------------------------------------------------------------------------------------------------
# Epochs


def _trained_nets(s: Setup) -> list[nn.Module]:
    return [net for net, trains in ((s.sr, s.method.trains_sr), (s.rec, s.method.trains_rec)) if net is not None and trains]


def _set_modes(s: Setup) -> None:
    if s.sr is not None:
        s.sr.train(s.method.trains_sr)
    if s.rec is not None:
        s.rec.train(s.method.trains_rec)


@dataclass
class EpochProgress:
    """Where an epoch stands: batches done and the running loss sums (what a mid-epoch checkpoint keeps)."""

    step: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    n: int = 0


def train_one_epoch(
    s: Setup,
    loader: Any,
    device: torch.device,
    schedulers: Sequence[Any],
    tdp_on: bool,
    desc: str,
    progress_in: EpochProgress | None = None,
    on_step: Callable[[EpochProgress], None] | None = None,
    total: int | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss term. ``progress_in`` continues an epoch
    (its batches must already be skipped in ``loader``; ``total`` is then the whole epoch's, for the
    progress bar); ``on_step`` sees the progress after every step."""
    _set_modes(s)
    step = STEPS[s.method.step]
    prog = progress_in or EpochProgress()
    if total is None and hasattr(loader, "__len__"):
        total = len(loader)
    for batch in progress(loader, desc=desc, total=total, initial=prog.step):
        batch = to_device(batch, device)
        try:
            terms = step(s, batch, tdp_on)
        except FloatingPointError as err:
            raise FloatingPointError(f"{err}, at step {prog.step + 1} of {desc}") from None
        distributed.broadcast_buffers(_trained_nets(s))  # BN running stats of rank 0 everywhere (as DDP); 1 process: no-op
        for sched in schedulers:
            sched.step()  # per iteration, like the official schedules
        b = batch.hr.shape[0]
        # Loss sums over every rank's samples (one process: these same numbers), so the epoch mean is global.
        *sums, n = distributed.sum_floats([float(v.detach()) * b for v in terms.values()] + [b])
        for k, v in zip(terms, sums, strict=True):
            prog.sums[k] += v
        prog.n += int(n)
        prog.step += 1
        if on_step is not None:
            on_step(prog)
    return {f"train/{k}": v / max(prog.n, 1) for k, v in prog.sums.items()}


@torch.inference_mode()
def evaluate(s: Setup, loader: DataLoader, device: torch.device, psnr_crop: int,
             lpips_net: nn.Module | None = None) -> dict[str, float]:
    """Task metric of the recogniser on its view, and PSNR of that view against HR (not for H2T); with
    ``lpips_net`` (``src.metrics.lpips_network``) also LPIPS of the same pair, with the same crop."""
    if s.sr is not None:
        s.sr.eval()
    if s.rec is not None:
        s.rec.eval()
    metric = s.task.new_metric() if s.method.uses_rec else None
    psnr = PSNR(psnr_crop) if s.method.view != "hr" else None
    lpips = LPIPS(psnr_crop, lpips_net) if lpips_net is not None and psnr is not None else None
    for batch in progress(loader, desc="evaluate"):
        batch = to_device(batch, device)
        images = view_images(s, batch)
        if metric is not None:
            metric.update(s.task.predict(s.rec, images), batch.target)
        if psnr is not None:
            psnr.update(images, batch.hr)
        if lpips is not None:
            lpips.update(images, batch.hr)
    out: dict[str, float] = {}
    if metric is not None:
        out.update(metric.compute())
    if psnr is not None:
        out.update(psnr.compute())
    if lpips is not None:
        out.update(lpips.compute())
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

    return {"lr": u8(lr), "view": u8(view), "hr": u8(hr), "pred": s.task.to_numpy(preds), "target": s.task.to_numpy(target)}


def fit(
    s: Setup,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    epochs: int,
    device: torch.device,
    warmup_epochs: int = 0,
    psnr_crop: int = 4,
    callbacks: Sequence[Callback] = (),
    checkpoint: Checkpointing | None = None,
) -> list[dict[str, float]]:
    """Train for ``epochs``; evaluate after each epoch; return one record per epoch.

    The cosine schedule restarts when TDP switches on (periods [W, E - W], derived here in one place).
    With ``checkpoint``, the full training state is saved after every epoch (and every
    ``checkpoint.every_steps`` steps, and on SIGTERM), and a run started again with the same params resumes
    from it and ends with the same weights as an uninterrupted run. A non-finite loss stops training with
    the step named and the last good state saved.

    Under torchrun (``src.distributed``) every rank runs this on its share of each batch with the same
    weights; rank 0 alone scores the val split (the others receive its record) and writes checkpoints.
    """
    iters = len(train_loader)
    periods = [warmup_epochs * iters, (epochs - warmup_epochs) * iters] if warmup_epochs else [epochs * iters]
    schedulers = []
    if s.opt_sr is not None:
        schedulers.append(cosine_restart(s.opt_sr, periods, s.sr_eta_min))
    if s.opt_rec is not None:
        schedulers.append(cosine_restart(s.opt_rec, periods, s.rec_eta_min))
    sampler = getattr(train_loader, "sampler", None)
    set_epoch = getattr(sampler, "set_epoch", None)  # EpochSampler: the data order is a function of the epoch
    history: list[dict[str, float]] = []
    start, resumed = 1, None
    if checkpoint is not None and (resumed := ckpt.load(checkpoint)) is not None:
        _restore(s, schedulers, resumed)
        history, start = list(resumed["history"]), int(resumed["epoch"])
        logging.getLogger(__name__).info("resuming %s from %s: epoch %d, step %d", s.method.name, checkpoint.path, start, resumed["step"])
    distributed.broadcast_state([s.sr, s.rec])  # under torchrun: rank 0's weights everywhere (as DDP starts)

    def snapshot(epoch: int, prog: EpochProgress) -> None:
        # Under torchrun every rank calls this at the same step; rank 0 writes every rank's random streams.
        streams = distributed.all_gather_object(
            {"rng": ckpt.rng_state(), "mix_rng": s.mix_generator.get_state() if s.mix_generator is not None else None}
        ) if distributed.world_size() > 1 else None
        ckpt.save(checkpoint, {
            **({"rng_ranks": streams} if streams is not None else {}),
            "epoch": epoch, "step": prog.step, "sums": dict(prog.sums), "n": prog.n, "history": history,
            "sr": _state(s.sr), "rec": _state(s.rec), "opt_sr": _state(s.opt_sr), "opt_rec": _state(s.opt_rec),
            "schedulers": [sched.state_dict() for sched in schedulers],
            "rng": ckpt.rng_state(), "mix_rng": s.mix_generator.get_state() if s.mix_generator is not None else None,
        })

    with ckpt.stop_on_sigterm(checkpoint):
        for epoch in range(start, epochs + 1):
            t0 = time.perf_counter()
            tdp_on = epoch > warmup_epochs and s.method.step == "alternate"
            if set_epoch is not None:
                set_epoch(epoch)
            batches: Any = train_loader
            prog = None
            if resumed is not None and epoch == start:
                prog = EpochProgress(int(resumed["step"]), defaultdict(float, resumed["sums"]), int(resumed["n"]))
                batches = _resume_batches(train_loader, prog.step, resumed, s)

            def on_step(p: EpochProgress, epoch: int = epoch) -> None:
                if checkpoint is None:
                    return
                if distributed.any_rank(checkpoint.stop_requested):  # a collective decision: every rank stops here
                    checkpoint.stop_requested = True
                if checkpoint.stop_requested or (checkpoint.every_steps and p.step % checkpoint.every_steps == 0 and p.step < iters):
                    snapshot(epoch, p)
                if checkpoint.stop_requested:
                    raise ckpt.Interrupted(f"stopped by SIGTERM at epoch {epoch}, step {p.step}; checkpoint {checkpoint.path} "
                                           "saved: run the stage again to resume")

            record: dict[str, float] = {"epoch": epoch}
            try:
                record.update(train_one_epoch(s, batches, device, schedulers, tdp_on, desc=f"{s.method.name} epoch {epoch}/{epochs}",
                                              progress_in=prog, on_step=on_step, total=iters))
            except FloatingPointError as err:
                if checkpoint is not None:  # the weights are the last good ones: the failing update never ran
                    snapshot(epoch, EpochProgress())
                    raise FloatingPointError(f"{err}; last good state saved to {checkpoint.path}") from None
                raise
            record["time/train_s"] = time.perf_counter() - t0
            if val_loader is not None:  # under torchrun rank 0 scores, the others wait for its numbers
                val = evaluate(s, val_loader, device, psnr_crop) if distributed.is_main() else None
                record.update({f"val/{k}": v for k, v in distributed.broadcast_object(val).items()})
            record["time/epoch_s"] = time.perf_counter() - t0
            history.append(record)
            for cb in callbacks:
                cb.on_epoch_end(epoch, record)
            if checkpoint is not None:
                snapshot(epoch + 1, EpochProgress())
    return history


def _state(obj: Any) -> dict[str, Any] | None:
    return None if obj is None else obj.state_dict()


def _restore(s: Setup, schedulers: Sequence[Any], state: Mapping[str, Any]) -> None:
    for obj, key in ((s.sr, "sr"), (s.rec, "rec"), (s.opt_sr, "opt_sr"), (s.opt_rec, "opt_rec")):
        if obj is not None:
            obj.load_state_dict(state[key])
    for sched, sched_state in zip(schedulers, state["schedulers"], strict=True):
        sched.load_state_dict(sched_state)


def _resume_batches(loader: DataLoader, skip: int, state: Mapping[str, Any], s: Setup) -> Any:
    """The epoch's batches after the first ``skip`` (the sampler already gives this epoch's order), with every
    random stream set as it was when the checkpoint was written."""
    it = iter(loader)
    for _ in range(skip):
        next(it)
    ranks = state.get("rng_ranks") or []
    streams = ranks[distributed.rank()] if len(ranks) == distributed.world_size() > 1 else state  # this rank's own
    ckpt.set_rng_state(streams["rng"])
    if s.mix_generator is not None and streams["mix_rng"] is not None:
        s.mix_generator.set_state(streams["mix_rng"])
    return it


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
    sr_init_release: bool = False,
) -> Setup:
    """Networks (loaded where the method says), frozen where they do not train, with optimisers.

    ``sr_optim`` overrides ``params.train.sr_optim`` (SR pre-training has its own). ``sr_init_release``:
    ``sr_init`` is released weights (EDSR-PyTorch, BasicSR, SwinIR, SR4IR layouts), not one of ours.
    """
    sr = rec = opt_sr = opt_rec = None
    sr_optim = sr_optim or params.train.sr_optim
    if method.view == "sr":
        sr = build_sr(params.sr, params.degrade.scale)
        if sr_init is not None:
            if sr_init_release:
                load_official_sr(sr, sr_init)
            else:
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
        if method.trains_rec and params.train.sync_bn:
            rec = distributed.sync_batchnorm(rec, device)
        if method.trains_rec:
            opt_rec = build_optimizer([p for p in rec.parameters() if p.requires_grad], task_cfg.optim)
        else:
            freeze(rec)
    setup = Setup(
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
        tdp_batched=params.train.tdp_batched,
        amp_dtype=torch.bfloat16 if params.train.amp == "bf16" else None,
        channels_last=params.train.channels_last,
        compile=params.train.compile,
    )
    return prepare_for_speed(setup)
