"""The SR4IR step written the way the official implementation runs it, for the benchmark and the exactness test.

``reference_alternate_step`` is ``src.steps.alternate_step``'s math, step for step as the official
``sr4ir_*_model.py:train_one_epoch`` does it (SR4IR_METHOD.md section 6):

* phase 1: SR = S(LR); L1; with TDP, T goes to eval mode with ``requires_grad`` off on all its parameters,
  and its features of SR and of HR come from two separate forwards, both with autograd on (the HR pass
  builds no graph only because nothing in it requires grad); S's optimiser steps;
* phase 2: SR is recomputed with the updated S **with autograd on** (a full graph through S that is
  thrown away) and then detached; CQMix; three task losses, one recogniser forward each, in the same order
  as ``alternate_step`` (SR, HR, CQMix); T's optimiser steps.

Two deviations from the official code, both without effect on the numbers: each parameter's own
``requires_grad`` flag is restored after phase 1 (the official code re-enables all of them, section 14.7),
and the det critic computes the backbone+FPN features only (the official detector also runs its test-time
RPN and box heads, whose outputs are unused; section 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.cqmix import cqmix
from src.data.dataset import Batch
from src.steps import Setup, per_image, task_loss
from src.optim import optimizer_step
from src.losses import tdp_loss


def reference_alternate_step(s: Setup, batch: Batch, tdp_on: bool) -> dict[str, torch.Tensor]:
    cfg = s.loss
    # Phase 1: update S; T is a frozen critic.
    sr_out = s.sr(batch.lr)
    terms = {"loss_pix": F.l1_loss(sr_out, batch.hr)}
    phase1 = cfg.pix_weight * terms["loss_pix"]
    if tdp_on:
        params = list(s.rec.parameters())
        flags = [p.requires_grad for p in params]
        was_training = s.rec.training
        for p in params:
            p.requires_grad_(False)
        s.rec.eval()
        try:
            f_sr = s.task.features(s.rec, per_image(sr_out, batch.sizes))
            f_hr = s.task.features(s.rec, per_image(batch.hr, batch.sizes))  # autograd on, as in the official loop
        finally:
            s.rec.train(was_training)
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        terms["loss_tdp"] = tdp_loss(f_sr, f_hr, s.tdp_layers)
        phase1 = phase1 + cfg.tdp_weight * terms["loss_tdp"]
    optimizer_step([s.opt_sr], phase1, "SR4IR phase-1 loss")

    # Phase 2: update T on SR (recomputed with a graph, then detached), HR and CQMix, one forward per loss.
    if cfg.recompute_sr_phase2:
        sr_out = s.sr(batch.lr)
    sr_out = sr_out.detach()
    mixed = cqmix(sr_out, batch.hr, s.cqmix_grid, cfg.cqmix_p, s.mix_generator)
    terms["loss_task_sr"] = task_loss(s, sr_out, batch)
    terms["loss_task_hr"] = task_loss(s, batch.hr, batch)
    terms["loss_task_cqmix"] = task_loss(s, mixed, batch)
    phase2 = cfg.sr_weight * terms["loss_task_sr"] + cfg.hr_weight * terms["loss_task_hr"] + cfg.cqmix_weight * terms["loss_task_cqmix"]
    optimizer_step([s.opt_rec], phase2, "SR4IR phase-2 loss")
    return terms
