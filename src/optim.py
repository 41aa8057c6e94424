"""Optimisers, their cosine schedules, and the one optimiser step every update rule takes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from src import distributed
from src.config import OptimConfig


def build_optimizer(params: Sequence[nn.Parameter] | Sequence[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimiser over ``params``: parameters, or groups (``Task.param_groups``) whose ``lr_mult``
    scales ``cfg.lr`` for that group."""
    groups = list(params)
    if groups and isinstance(groups[0], dict):
        groups = [{"params": g["params"], **({"lr": cfg.lr * g["lr_mult"]} if "lr_mult" in g else {})} for g in groups]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_restart(optimizer: torch.optim.Optimizer, periods: Sequence[int], eta_min: float,
                   warmup_iters: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """BasicSR's ``CosineAnnealingRestartLR`` (unit restart weights), iteration for iteration, in steps.

    At iteration t of the cosine schedule, cycle i is the first whose cumulative end C_i has t <= C_i (BasicSR's
    ``iteration <= period``), and lr = eta_min + 0.5 (base_lr - eta_min) (1 + cos(pi (t - C_{i-1}) / P_i)): the
    last iteration of a cycle runs at eta_min and the next one at just under base_lr. Each param group anneals
    from its own lr (the seg aux head's 10x group included) to ``eta_min``. Steps past the last period stay at
    ``eta_min`` instead of crashing as BasicSR does.

    ``warmup_iters`` N > 0: the official detection warm-up first: iteration k < N runs at
    base_lr (1/N + (1 - 1/N) k / N) (torch's ``LinearLR(start_factor=1/N, total_iters=N)``) while the cosine is
    held at its start; iteration N + t then runs at the cosine's iteration t.
    """
    ends = [sum(periods[: i + 1]) for i in range(len(periods))]

    def factor_for(base_lr: float) -> Callable[[int], float]:
        floor = eta_min / base_lr

        def cosine(t: int) -> float:
            i = next((j for j, end in enumerate(ends) if t <= end), None)
            if i is None:
                return floor
            start = ends[i - 1] if i else 0
            pos = (t - start) / max(periods[i], 1)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * pos))

        def factor(t: int) -> float:
            if t < warmup_iters:
                return 1.0 / warmup_iters + (1.0 - 1.0 / warmup_iters) * t / warmup_iters
            return cosine(t - warmup_iters)

        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(g["lr"]) for g in optimizer.param_groups])


def schedule_periods(epochs: int, iters: int, restart_epoch: int = 0, linear_warmup: bool = False) -> list[int]:
    """The cosine periods (in steps) of a run of ``epochs`` epochs of ``iters`` steps, as the official configs set them.

    ``restart_epoch`` W > 0 (SR4IR: TDP starts after epoch W): two cycles, [W, E - W] epochs. With the
    detection warm-up (``linear_warmup``: epoch 1 is the linear ramp and the cosine is not stepped), SR4IR's
    cycles are [W - 1, E - W] epochs (the det configs' [2, 27] for W = 3, E = 30) and a single cycle keeps
    its E epochs (the configs' [30]: stepped for 29 epochs, it ends short of eta_min, as the official runs do).
    """
    if not restart_epoch:
        return [epochs * iters]
    first = restart_epoch - 1 if linear_warmup else restart_epoch
    return [p * iters for p in (first, epochs - restart_epoch) if p > 0]


def optimizer_step(optimizers: Sequence[torch.optim.Optimizer], loss: torch.Tensor, what: str,
                   terms: Mapping[str, torch.Tensor] | None = None) -> None:
    """Backward ``loss`` and step ``optimizers``; a NaN or inf loss stops before it reaches the weights,
    naming the offending ``terms``.

    Under torchrun the loss came from the forward of the networks' DDP wrappers (``Setup.sr_ddp``,
    ``Setup.rec_ddp``): their backward averages the gradients over the processes (DDP's buckets, overlapped
    with the backward). Before it, whether the loss is finite is all-reduced: a non-finite loss on any rank
    stops every rank before any backward or weight change."""
    finite = bool(torch.isfinite(loss))
    world = distributed.world_size()
    if not finite and world == 1:
        raise _non_finite(loss, what, terms)
    if world > 1:
        n_bad = round(distributed.sum_floats([float(not finite)])[0])
        if not finite:
            raise _non_finite(loss, what, terms)
        if n_bad:
            raise FloatingPointError(f"non-finite {what} in {n_bad} of {world} processes")
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()


def _non_finite(loss: torch.Tensor, what: str, terms: Mapping[str, torch.Tensor] | None) -> FloatingPointError:
    bad = [f"{k}={float(v.detach())}" for k, v in (terms or {}).items() if not torch.isfinite(v)]
    return FloatingPointError(f"non-finite {what} ({loss.detach().item()}; terms: {', '.join(bad) or 'n/a'})")
