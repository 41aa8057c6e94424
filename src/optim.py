"""Optimisers, their cosine schedules, and the one optimiser step every update rule takes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from src import distributed
from src.config import OptimConfig


def build_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_restart(optimizer: torch.optim.Optimizer, periods: Sequence[int], eta_min: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing from each group's learning rate to ``eta_min`` over each period (in steps), restarting
    at every period boundary (BasicSR's CosineAnnealingRestartLR with unit restart weights). Steps past the
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


def optimizer_step(optimizers: Sequence[torch.optim.Optimizer], loss: torch.Tensor, what: str,
                   terms: Mapping[str, torch.Tensor] | None = None) -> None:
    """Backward ``loss`` and step ``optimizers``; a NaN or inf loss stops before it reaches the weights,
    naming the offending ``terms``.

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
