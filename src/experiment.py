"""Stage-level library functions: what each DVC stage computes, given params and paths, and the assembly of a
run from params (``build_setup``: networks loaded and frozen as the method says, with their optimisers).

The stage scripts in ``pipeline/`` own the paths and the writing; these functions own the work and
return plain results (state dicts, per-epoch histories, metric dicts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from src import distributed
from src.config import ConfigError, OptimConfig, Params
from src.data.dataset import Batch, PairedDataset, Skipped, make_loader, split_dataset
from src.checkpoint import Checkpointing
from src.loop import Callback, evaluate_scored, fit
from src.metrics import lpips_network
from src.methods import METHODS, Method
from src.models.official import fetch_release, load_official_sr, read_weights
from src.models.sr import build_sr
from src.optim import build_optimizer
from src.steps import Setup, per_image, view_images
from src.tasks import build_task
from src.tasks.base import Task
from src.utils import resolve_device, seed_everything, to_device


@dataclass
class TrainResult:
    states: dict[str, dict[str, torch.Tensor]]  # "sr" and/or "rec" -> state dict (on the CPU)
    history: list[dict[str, float]]
    seconds: float
    skipped: dict[str, Skipped] = field(default_factory=dict)  # by split: the bad samples data.on_bad_sample: skip dropped


def _loaders(params: Params, task, raw_dir: Path, lr_dir: Path, batch_size: int, train_fraction: float = 1.0,
             val_fraction: float = 1.0, batch_key: str = "train.batch_size"):
    """Train and val loaders; ``batch_size`` is the global batch, shared out among the processes."""
    data = params.data
    world = distributed.world_size()
    if batch_size % world:  # params validation checks it against train.nproc; this catches a hand-made torchrun
        raise ConfigError(f"params.yaml: {batch_key} ({batch_size}) must be divisible by the number of processes ({world})")
    train_ds = split_dataset(params, raw_dir, lr_dir, "train", task, train_fraction)
    val_ds = split_dataset(params, raw_dir, lr_dir, "val", task, val_fraction)
    return (
        make_loader(train_ds, batch_size, True, data.num_workers, seed=params.seed, rank=distributed.rank(), world=world,
                    aspect_groups=data.aspect_groups),
        make_loader(val_ds, params.eval.batch_size, False, data.num_workers),
        {"train": train_ds.skipped, "val": val_ds.skipped},
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


def pretrain_sr(params: Params, raw_dir: Path, lr_dir: Path, callbacks: Sequence[Callback] = (),
                checkpoint: Checkpointing | None = None) -> TrainResult:
    """SR alone with L1 on HR/LR pairs; the task network is not involved."""
    device = resolve_device(params.device)
    seed_everything(params.seed)
    train_loader, val_loader, skipped = _loaders(params, None, raw_dir, lr_dir, params.pretrain_sr.batch_size,
                                        val_fraction=params.train.monitor_fraction, batch_key="pretrain_sr.batch_size")
    method = METHODS["sr_pretrain"]
    init = _main_first(fetch_release, params.sr.init) if params.sr.init else None  # the paper's 0s0 starts from DIV2K weights
    setup = build_setup(method, params, None, sr_init=init, device=device, sr_optim=params.pretrain_sr.optim,
                        sr_init_release=True)
    _per_rank_seeds(params, setup, 0)
    t0 = time.perf_counter()
    history = fit(setup, train_loader, val_loader, params.pretrain_sr.epochs, device,
                  psnr_crop=params.eval.psnr_crop_border, callbacks=callbacks, checkpoint=checkpoint,
                  linear_warmup=params.train.linear_warmup, psnr_on=params.eval.psnr_on)
    return TrainResult({"sr": _cpu_state(setup.sr)}, history, time.perf_counter() - t0, skipped)


def train_method(
    params: Params,
    task_name: str,
    method_name: str,
    raw_dir: Path,
    lr_dir: Path,
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
    if method.sr_start != "random" and sr_init is None:
        raise ValueError(f"method {method_name} starts from the pretrained SR network: pass its path")
    if method.rec_from is not None and rec_init is None:
        raise ValueError(f"method {method_name} starts from the {method.rec_from} recogniser: pass its path")
    device = resolve_device(params.device)
    seed_everything(params.seed)
    task = build_task(task_name, params, raw_dir)
    val_fraction = params.train.monitor_fraction if monitor_fraction is None else monitor_fraction
    batch, batch_key = params.train_batch(task_name)
    train_loader, val_loader, skipped = _loaders(params, task, raw_dir, lr_dir, batch, train_fraction, val_fraction,
                                                 batch_key=batch_key)
    from_release = method.sr_start == "div2k" and bool(params.sr.init)
    if from_release:  # as the paper: T->S, S+T and SR4IR start from the DIV2K weights, S->T from pretrain_sr
        sr_init = _main_first(fetch_release, params.sr.init)
    setup = build_setup(method, params, task, sr_init, rec_init, device, mix_seed=params.seed + 1,
                        sr_init_release=from_release)
    _per_rank_seeds(params, setup, params.seed + 1)
    warmup = params.train.sr4ir.warmup_epochs if method.tdp else 0
    epochs, _ = params.train_epochs(task_name)
    t0 = time.perf_counter()
    history = fit(setup, train_loader, val_loader, epochs, device, warmup_epochs=warmup,
                  psnr_crop=params.eval.psnr_crop_border, callbacks=callbacks, checkpoint=checkpoint,
                  linear_warmup=params.train.linear_warmup, psnr_on=params.eval.psnr_on)
    states = {}
    if setup.sr is not None:
        states["sr"] = _cpu_state(setup.sr)
    if setup.rec is not None:
        states["rec"] = _cpu_state(setup.rec)
    return TrainResult(states, history, time.perf_counter() - t0, skipped)


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # the val split's task metric, PSNR, LPIPS (or why not), n_val
    samples: dict[str, np.ndarray]  # the first n_samples val images with predictions; {} when none asked
    seconds: float  # the evaluation loop alone (no data or network set-up)
    skipped: dict[str, Skipped] = field(default_factory=dict)  # {"val": the bad samples data.on_bad_sample: skip dropped}
    # the task metric's per-image scores of the whole val split (Metric.per_image), from the same pass as metrics
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate_method(params: Params, task_name: str, method_name: str, raw_dir: Path, lr_dir: Path, model_dir: Path,
                    n_samples: int = 0) -> EvalResult:
    """Task metric, PSNR and LPIPS of a trained method on the val split (the split the paper reports on), the
    task metric's per-image scores (for the report's bootstrap over val images) and the first ``n_samples``
    val images with predictions (for the report's qualitative figure).

    LPIPS (not for H2T, which sees HR) follows ``eval.lpips``; where it is unavailable the metrics hold no
    ``lpips`` number but ``lpips_unavailable``, the reason (``src.metrics.lpips_network``)."""
    method = METHODS[method_name]
    device = resolve_device(params.device)
    seed_everything(params.seed)
    task = build_task(task_name, params, raw_dir)
    setup = build_setup(method, params, task, device=device)
    if setup.sr is not None:
        load_state(setup.sr, model_dir / "sr.pt", "SR")
    load_state(setup.rec, model_dir / "rec.pt", "recogniser")
    val_ds = split_dataset(params, raw_dir, lr_dir, "val", task)
    loader = make_loader(val_ds, params.eval.batch_size, False, params.data.num_workers)
    metrics, scores, lpips_reason, seconds = score_val_split(params, setup, val_ds, loader, device)
    if lpips_reason is not None:
        metrics["lpips_unavailable"] = lpips_reason
    metrics["n_val"] = len(val_ds)  # no wall time here: it would make `dvc metrics diff` noisy (MLflow has it)
    samples = collect_samples(setup, loader, device, n_samples) if n_samples else {}
    if samples:
        samples["class_names"] = np.array(json.loads((raw_dir / "classes.json").read_text()))
    return EvalResult(metrics, samples, seconds, {"val": val_ds.skipped}, scores)


def score_val_split(params: Params, setup: Setup, val_ds: PairedDataset, loader: DataLoader, device: torch.device
                    ) -> tuple[dict[str, float], dict[str, np.ndarray], str | None, float]:
    """Task metric (when the setup has a recogniser), PSNR and LPIPS of the setup's view on the val split, with
    the crop of ``eval.psnr_crop_border``, and from the same pass the task metric's per-image scores
    (``Metric.per_image``, {} without a recogniser). Returns metrics, scores, why LPIPS is missing (or None)
    and the seconds the loop took. LPIPS follows ``eval.lpips`` and is never computed for H2T, which sees HR."""
    lpips_net, lpips_reason = None, None
    if setup.method.view != "hr":
        sizes = [(val_ds.view.crop,) * 2] if val_ds.view.crop else val_ds.sizes
        hr_size = (min(h for h, _ in sizes), min(w for _, w in sizes))  # VGG16 must take the smallest image
        lpips_net, lpips_reason = lpips_network(params.eval.lpips, device, hr_size, params.eval.psnr_crop_border)
    t0 = time.perf_counter()
    metrics, scores = evaluate_scored(setup, loader, device, params.eval.psnr_crop_border, lpips_net, params.eval.psnr_on)
    return metrics, scores, lpips_reason, time.perf_counter() - t0


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
    sizes = batch.sizes[:n] if batch.sizes is not None else None
    preds = s.task.predict(s.rec, per_image(view, sizes))
    if sizes is not None:  # images of several sizes: all cut to the smallest one's, from the top left
        h, w = min(h for h, _ in sizes), min(w for _, w in sizes)
        view, hr = view[..., :h, :w], hr[..., :h, :w]
        lr = lr[..., : -(-h // s.scale), : -(-w // s.scale)]

    def u8(x: torch.Tensor) -> Any:
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)

    return {"lr": u8(lr), "view": u8(view), "hr": u8(hr), "pred": s.task.to_numpy(preds), "target": s.task.to_numpy(target)}


# ---------------------------------------------------------------------------------------------------
# Assembling a run from params


def freeze(net: nn.Module) -> None:
    """A network that does not train: eval mode and no gradients at all (not just left out of the optimiser)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)


def load_state(net: nn.Module, path: Path, what: str) -> None:
    """Load a state dict saved by this pipeline; name the missing or unexpected keys when it does not fit."""
    try:
        state = read_weights(path, f"restore the last good copy with `dvc checkout {path}`, or re-run the stage "
                                   "that writes it (`dvc repro -f -s <stage>`; `dvc stage list` names them)")
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
            opt_rec = build_optimizer(task.param_groups(rec), task_cfg.optim)
        else:
            freeze(rec)
    setup = Setup(
        method=method,
        task=task,
        sr=sr,
        rec=rec,
        opt_sr=opt_sr,
        opt_rec=opt_rec,
        loss=getattr(params.train, method.name, None),
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
    prepare_for_speed(setup)
    # Under torchrun: the trained networks' DDP wrappers (rank 0's weights broadcast to every rank here), for
    # the forwards whose gradients are averaged; setup.sr/rec stay the bare networks. One process: None.
    if sr is not None and method.trains_sr:
        setup.sr_ddp = distributed.ddp(sr, device)
    if rec is not None and method.trains_rec:
        setup.rec_ddp = distributed.ddp(rec, device)
    return setup


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
