"""The paired dataset every training and evaluation stage reads: (LR, HR, task target)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from src.data.degrade import read_rgb
from src.tasks.base import Task


@dataclass
class Batch:
    lr: torch.Tensor  # (B, 3, h, w) in [0, 1], 8-bit levels
    hr: torch.Tensor  # (B, 3, s*h, s*w) in [0, 1]
    target: Any  # whatever the task collates; read only by the Task


class PairedDataset(Dataset):
    """HR images from ``raw/<split>/images``, LR twins from ``lr/<split>``, targets via the task."""

    def __init__(self, raw: Path, lr: Path, split: str, task: Task | None, hflip: bool = False, fraction: float = 1.0):
        """``task=None`` gives image pairs only (SR pre-training): targets are ``None``.

        ``fraction`` keeps a fixed prefix of the split (its order is already random), for short tuning runs.
        """
        self.hr_dir, self.lr_dir = raw / split / "images", lr / split
        self.names = sorted(p.stem for p in self.hr_dir.glob("*.png"))
        if fraction < 1.0:
            self.names = self.names[: max(1, round(fraction * len(self.names)))]
        if not self.names:
            raise FileNotFoundError(f"{self.hr_dir}: the '{split}' split is empty")
        self.task, self.hflip = task, hflip
        self.targets = task.load_targets(raw / split, self.names) if task else [None] * len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        name = self.names[i]
        hr = read_rgb(self.hr_dir / f"{name}.png")
        lr = read_rgb(self.lr_dir / f"{name}.png")
        if lr.shape[-2] * (hr.shape[-1] // max(lr.shape[-1], 1)) != hr.shape[-2]:
            raise ValueError(f"{self.lr_dir / name}.png: LR size {tuple(lr.shape[-2:])} does not match HR {tuple(hr.shape[-2:])}")
        target = self.targets[i]
        # Bicubic downscaling by an integer factor commutes with a horizontal flip, so flipping both stays consistent.
        if self.hflip and torch.rand(()) < 0.5:
            hr, lr = hr.flip(-1), lr.flip(-1)
            target = self.task.hflip_target(target, hr.shape[-1]) if self.task else None
        return lr, hr, target

    def collate(self, samples: list[tuple[torch.Tensor, torch.Tensor, Any]]) -> Batch:
        lrs, hrs, targets = zip(*samples)
        return Batch(lr=torch.stack(lrs), hr=torch.stack(hrs), target=self.task.collate_targets(list(targets)) if self.task else None)


def make_loader(ds: PairedDataset, batch_size: int, train: bool, num_workers: int, generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=ds.collate,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
