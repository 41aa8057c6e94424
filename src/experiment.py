"""Stage-level library functions: what each DVC stage computes, given params and paths.

The stage scripts in ``pipeline/`` own the paths and the writing; these functions own the work and
return plain results (state dicts, per-epoch histories, metric dicts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src import distributed
from src.config import ConfigError, Params
from src.data.dataset import PairedDataset, make_loader
from src.checkpoint import Checkpointing
from src.engine import Callback, build_setup, collect_samples, evaluate, fit, load_state
from src.metrics import lpips_network
from src.methods import METHODS
from src.models.official import fetch_release
from src.tasks import build_task
from src.utils import resolve_device, seed_everything


@dataclass
class TrainResult:
    states: dict[str, dict[str, torch.Tensor]]  # "sr" and/or "rec" -> state dict (on the CPU)
    history: list[dict[str, float]]
    seconds: float


def _loaders(params: Params, task, raw: Path, lr: Path, batch_size: int, train_fraction: float = 1.0,
             val_fraction: float = 1.0, batch_key: str = "train.batch_size"):
    """Train and val loaders; ``batch_size`` is the global batch, shared out among the processes."""
    data = params.data
    world = distributed.world_size()
    if batch_size % world:  # params validation checks it against train.nproc; this catches a hand-made torchrun
        raise ConfigError(f"params.yaml: {batch_key} ({batch_size}) must be divisible by the number of processes ({world})")
    train_ds = PairedDataset(raw, lr, "train", task, hflip=data.hflip, fraction=train_fraction)
    val_ds = PairedDataset(raw, lr, "val", task, fraction=val_fraction)
    return (
        make_loader(train_ds, batch_size, True, data.num_workers, seed=params.seed, rank=distributed.rank(), world=world),
        make_loader(val_ds, params.eval.batch_size, False, data.num_workers),
    )


def _per_rank_seeds(params: Params, setup, mix_seed: int) -> None:
    """Every rank built the same networks from ``params.seed``; from here each rank draws its own
    augmentation (global RNGs) and CQMix masks (``seed + rank``). One process: nothing changes."""
    if distributed.world_size() > 1:
        seed_everything(params.seed + distributed.rank())
        if setup.mix_generator is not None:
            setup.mix_generator.manual_seed(mix_seed + distributed.rank())


def _main_first(fn, *args):
    """``fn(*args)`` on rank 0 first (a download, say), then on the others, which then find its result."""
    if not distributed.is_main():
        distributed.barrier()
    out = fn(*args)
    if distributed.is_main():
        distributed.barrier()
    return out


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def pretrain_sr(params: Params, raw: Path, lr: Path, callbacks: Sequence[Callback] = (),
                checkpoint: Checkpointing | None = None) -> TrainResult:
    """SR alone with L1 on HR/LR pairs; the task network is not involved."""
    device = resolve_device(params.device)
    seed_everything(params.seed)
    train_loader, val_loader = _loaders(params, None, raw, lr, params.pretrain_sr.batch_size,
                                        val_fraction=params.train.monitor_fraction, batch_key="pretrain_sr.batch_size")
    method = METHODS["sr_pretrain"]
    init = _main_first(fetch_release, params.sr.init) if params.sr.init else None  # the paper's 0s0 starts from DIV2K weights
    setup = build_setup(method, params, None, sr_init=init, device=device, sr_optim=params.pretrain_sr.optim,
                        sr_init_release=True)
    _per_rank_seeds(params, setup, 0)
    t0 = time.perf_counter()
    history = fit(setup, train_loader, val_loader, params.pretrain_sr.epochs, device,
                  psnr_crop=params.eval.psnr_crop_border, callbacks=callbacks, checkpoint=checkpoint)
    return TrainResult({"sr": _cpu_state(setup.sr)}, history, time.perf_counter() - t0)


def train_method(
    params: Params,
    task_name: str,
    method_name: str,
    raw: Path,
    lr: Path,
    sr_init: Path | None = None,
    rec_init: Path | None = None,
    callbacks: Sequence[Callback] = (),
    train_fraction: float = 1.0,
    checkpoint: Checkpointing | None = None,
    monitor_fraction: float | None = None,
) -> TrainResult:
    """Train one method of Table 1 for one task (on the first ``train_fraction`` of the train split).

    After every epoch the first ``monitor_fraction`` of the val split is scored (default
    ``train.monitor_fraction``; tuning passes 1.0, its objective is the last epoch's score)."""
    method = METHODS[method_name]
    if method.sr_from_pretrained and sr_init is None:
        raise ValueError(f"method {method_name} starts from the pretrained SR network: pass its path")
    if method.rec_from is not None and rec_init is None:
        raise ValueError(f"method {method_name} starts from the {method.rec_from} recogniser: pass its path")
    device = resolve_device(params.device)
    seed_everything(params.seed)
    task = build_task(task_name, params, raw)
    val_fraction = params.train.monitor_fraction if monitor_fraction is None else monitor_fraction
    train_loader, val_loader = _loaders(params, task, raw, lr, params.train.batch_size, train_fraction, val_fraction)
    from_release = method.sr_from_div2k and bool(params.sr.init)
    if from_release:  # as the paper: T->S, S+T and SR4IR start from the DIV2K weights, S->T from pretrain_sr
        sr_init = _main_first(fetch_release, params.sr.init)
    setup = build_setup(method, params, task, sr_init, rec_init, device, mix_seed=params.seed + 1,
                        sr_init_release=from_release)
    _per_rank_seeds(params, setup, params.seed + 1)
    warmup = params.train.sr4ir.warmup_epochs if method.step == "alternate" else 0
    t0 = time.perf_counter()
    history = fit(setup, train_loader, val_loader, params.train.epochs, device, warmup_epochs=warmup,
                  psnr_crop=params.eval.psnr_crop_border, callbacks=callbacks, checkpoint=checkpoint)
    states = {}
    if setup.sr is not None:
        states["sr"] = _cpu_state(setup.sr)
    if setup.rec is not None:
        states["rec"] = _cpu_state(setup.rec)
    return TrainResult(states, history, time.perf_counter() - t0)


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # the val split's task metric, PSNR, LPIPS (or why not), n_val
    samples: dict[str, np.ndarray]  # the first n_samples val images with predictions; {} when none asked
    seconds: float  # the evaluation loop alone (no data or network set-up)


def evaluate_method(params: Params, task_name: str, method_name: str, raw: Path, lr: Path, model_dir: Path,
                    n_samples: int = 0) -> EvalResult:
    """Task metric, PSNR and LPIPS of a trained method on the val split (the split the paper reports on), and
    the first ``n_samples`` val images with predictions (for the report's qualitative figure).

    LPIPS (not for H2T, which sees HR) follows ``eval.lpips``; where it is unavailable the metrics hold no
    ``lpips`` number but ``lpips_unavailable``, the reason (``src.metrics.lpips_network``)."""
    method = METHODS[method_name]
    device = resolve_device(params.device)
    seed_everything(params.seed)
    task = build_task(task_name, params, raw)
    setup = build_setup(method, params, task, device=device)
    if setup.sr is not None:
        load_state(setup.sr, model_dir / "sr.pt", "SR")
    load_state(setup.rec, model_dir / "rec.pt", "recogniser")
    val_ds = PairedDataset(raw, lr, "val", task)
    loader = make_loader(val_ds, params.eval.batch_size, False, params.data.num_workers)
    lpips_net, lpips_reason = None, None
    if method.view != "hr":  # H2T sees HR: no LPIPS by definition
        hr_size = tuple(val_ds[0][1].shape[-2:])
        lpips_net, lpips_reason = lpips_network(params.eval.lpips, device, hr_size, params.eval.psnr_crop_border)
    t0 = time.perf_counter()
    metrics = evaluate(setup, loader, device, params.eval.psnr_crop_border, lpips_net)
    seconds = time.perf_counter() - t0
    if lpips_reason is not None:
        metrics["lpips_unavailable"] = lpips_reason
    metrics["n_val"] = len(val_ds)  # no wall time here: it would make `dvc metrics diff` noisy (MLflow has it)
    samples = collect_samples(setup, loader, device, n_samples) if n_samples else {}
    if samples:
        samples["class_names"] = np.array(json.loads((raw / "classes.json").read_text()))
    return EvalResult(metrics, samples, seconds)
