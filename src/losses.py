"""The task-driven perceptual (TDP) loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def tdp_loss(feats_sr: Mapping[str, torch.Tensor], feats_hr: Mapping[str, torch.Tensor], layer_weights: Mapping[str, float]) -> torch.Tensor:
    """sum_k w_k * mean|F_k(SR) - F_k(HR)|: L1 over all elements of each layer, batch included.

    ``feats_hr`` is the target and carries no gradient; gradients reach the SR image through ``feats_sr``.
    """
    if set(layer_weights) - set(feats_sr) or set(layer_weights) - set(feats_hr):
        raise KeyError(f"TDP layers {sorted(layer_weights)} not all among the features {sorted(feats_sr)}")
    return sum(w * F.l1_loss(feats_sr[k], feats_hr[k].detach()) for k, w in layer_weights.items())
