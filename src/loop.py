"""One training loop for every method: ``fit`` = ``train_one_epoch`` + ``evaluate``, epoch by epoch.

Methods differ only in their update rule (``src.steps.STEPS``, named by ``Method.step``) and in which
networks train; tasks differ only behind ``Task``. Nothing here imports a tracker: progress leaves through
``Callback.on_epoch_end``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from src import checkpoint as ckpt
from src import distributed
from src.checkpoint import Checkpointing
from src.errors import Interrupted
from src.metrics import LPIPS, PSNR
from src.optim import cosine_restart, schedule_periods
from src.steps import STEPS, Setup, per_image, view_images
from src.utils import progress, to_device


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None: ...


@dataclass
class EpochProgress:
    """Where an epoch stands: batches done and the running loss sums (what a mid-epoch checkpoint keeps)."""

    step: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    n: int = 0


def _set_modes(s: Setup) -> None:
    if s.sr is not None:
        s.sr.train(s.method.trains_sr)
    if s.rec is not None:
        s.rec.train(s.method.trains_rec)


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


def evaluate(s: Setup, loader: DataLoader, device: torch.device, psnr_crop: int,
             lpips_net: nn.Module | None = None, psnr_on: str = "image") -> dict[str, float]:
    """Task metric of the recogniser on its view, and PSNR of that view against HR (not for H2T); with
    ``lpips_net`` (``src.metrics.lpips_network``) also LPIPS of the same pair, with the same crop.

    A batch on a padded canvas (``Batch.sizes``) is scored per image, padding cut off (``psnr_on: image``),
    or over the canvas (``canvas``, the official det rule); the recogniser always sees each image cut back."""
    return evaluate_scored(s, loader, device, psnr_crop, lpips_net, psnr_on)[0]


@torch.inference_mode()
def evaluate_scored(s: Setup, loader: DataLoader, device: torch.device, psnr_crop: int,
                    lpips_net: nn.Module | None = None, psnr_on: str = "image") -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``evaluate``'s metrics and, from the same pass, the task metric's per-image scores
    (``Metric.per_image``; {} without a recogniser)."""
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
            metric.update(s.task.predict(s.rec, per_image(images, batch.sizes)), batch.target)
        pairs = [(images, batch.hr)]
        if batch.sizes is not None and psnr_on == "image":
            pairs = [(v[None], h[None]) for v, h in zip(_cut(images, batch.sizes), _cut(batch.hr, batch.sizes))]
        for view, hr in pairs:
            if psnr is not None:
                psnr.update(view, hr)
            if lpips is not None:
                lpips.update(view, hr)
    out: dict[str, float] = {}
    for scorer in (metric, psnr, lpips):
        if scorer is not None:
            out.update(scorer.compute())
    return out, metric.per_image() if metric is not None else {}


def _cut(x: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    return [x[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]


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
    linear_warmup: bool = False,
    psnr_on: str = "image",
) -> list[dict[str, float]]:
    """Train for ``epochs``; evaluate after each epoch; return one record per epoch.

    A method with TDP (``Method.tdp``) trains its first ``warmup_epochs`` without it; the cosine schedules
    restart when it switches on (periods [W, E - W], derived in ``src.optim.schedule_periods``). With
    ``linear_warmup`` (``train.linear_warmup``, the official detection recipe) every optimiser ramps linearly
    over epoch 1 and the cosine starts with epoch 2.
    With ``checkpoint``, the full training state is saved after every epoch (and every
    ``checkpoint.every_steps`` steps, and on SIGTERM), and a run started again with the same params resumes
    from it and ends with the same weights as an uninterrupted run. A non-finite loss stops training with
    the step named and the last good state saved.

    Under torchrun (``src.distributed``) every rank runs this on its share of each batch with the same
    weights; rank 0 alone scores the val split (the others receive its record) and writes checkpoints.
    """
    iters = len(train_loader)
    periods = schedule_periods(epochs, iters, warmup_epochs, linear_warmup)
    ramp = iters if linear_warmup else 0
    schedulers = []
    if s.opt_sr is not None:
        schedulers.append(cosine_restart(s.opt_sr, periods, s.sr_eta_min, ramp))
    if s.opt_rec is not None:
        schedulers.append(cosine_restart(s.opt_rec, periods, s.rec_eta_min, ramp))
    # EpochSampler (or the GroupedBatchSampler around it): the data order is a function of the epoch
    set_epoch = getattr(getattr(train_loader, "batch_sampler", None), "set_epoch", None) or \
        getattr(getattr(train_loader, "sampler", None), "set_epoch", None)
    history: list[dict[str, float]] = []
    start, resumed = 1, None
    if checkpoint is not None and (resumed := ckpt.load(checkpoint)) is not None:
        ckpt.restore(s, schedulers, resumed)
        history, start = list(resumed["history"]), int(resumed["epoch"])
        logging.getLogger(__name__).info("resuming %s from %s: epoch %d, step %d", s.method.name, checkpoint.path, start, resumed["step"])
    # Under torchrun every rank holds rank 0's weights: DDP broadcast them when ``build_setup`` wrapped the
    # networks, and a resumed run loads rank 0's checkpoint on every rank.

    def snapshot(epoch: int, prog: EpochProgress) -> None:
        ckpt.save(checkpoint, ckpt.training_state(s, schedulers, epoch, prog.step, prog.sums, prog.n, history))

    with ckpt.stop_on_sigterm(checkpoint):
        for epoch in range(start, epochs + 1):
            t0 = time.perf_counter()
            tdp_on = s.method.tdp and epoch > warmup_epochs
            if set_epoch is not None:
                set_epoch(epoch)
            batches: Any = train_loader
            prog = None
            if resumed is not None and epoch == start:
                prog = EpochProgress(int(resumed["step"]), defaultdict(float, resumed["sums"]), int(resumed["n"]))
                batches = ckpt.resume_batches(train_loader, prog.step, resumed, s)

            def on_step(p: EpochProgress, epoch: int = epoch) -> None:
                if checkpoint is None:
                    return
                if distributed.any_rank(checkpoint.stop_requested):  # a collective decision: every rank stops here
                    checkpoint.stop_requested = True
                if checkpoint.stop_requested or (checkpoint.every_steps and p.step % checkpoint.every_steps == 0 and p.step < iters):
                    snapshot(epoch, p)
                if checkpoint.stop_requested:
                    raise Interrupted(f"stopped by SIGTERM at epoch {epoch}, step {p.step}; checkpoint {checkpoint.path} "
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
                val = evaluate(s, val_loader, device, psnr_crop, psnr_on=psnr_on) if distributed.is_main() else None
                record.update({f"val/{k}": v for k, v in distributed.broadcast_object(val).items()})
            record["time/epoch_s"] = time.perf_counter() - t0
            history.append(record)
            for cb in callbacks:
                cb.on_epoch_end(epoch, record)
            if checkpoint is not None:
                snapshot(epoch + 1, EpochProgress())
    return history
