"""The paired dataset every training and evaluation stage reads: (LR, HR, task target).

Every sample is checked when the dataset is built, in the main process and before any training: both
images decode completely (a truncated PNG included), the split has one HR size (a batch stacks them) and
one integer scale (LR * k == HR), or with ``variable_size`` (the paper's protocol) each stored LR is its
image's evaluation view degraded, and the task's targets load (class ids, boxes, mask sizes). Samples are
cropped, flipped and put on a batch canvas as ``src.data.transforms`` says. A bad
sample is an error naming the file and the problem (``data.on_bad_sample: error``, the default) or is
dropped and listed in ``dataset.skipped`` (``skip``); a DataLoader worker never meets one.

The check decodes every image anyway, so a split whose pixels fit in ``CACHE_BYTES`` keeps them (as
uint8) and no epoch decodes a PNG again; a larger split is read from disk in ``__getitem__``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from src.config import DegradeConfig
from src.data.degrade import degrade, read_rgb
from src.data.images import ImageError, decode_rgb
from src.data.targets import Targets, targets_for
from src.data.grouping import GroupedBatchSampler, aspect_ratio_groups
from src.data.transforms import SampleView, canvas_size, crop, pad_to, round_up, split_views
from src.errors import DataError
from src.tasks.base import Task

if TYPE_CHECKING:
    from src.config import Params

log = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("error", "skip")
# What ``Targets.load`` raises for a bad annotation (src/data/targets.py names the file in the message).
_TARGET_ERRORS = (KeyError, ValueError, TypeError, IndexError, OSError)
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_WARN_FIRST = 5  # bad samples named in the skip warning
CACHE_BYTES = 512 * 2**20  # decoded uint8 pixels (HR + LR) a dataset keeps in memory

Skipped = list[tuple[str, str]]  # (file, problem)


def _check_mode(mode: str) -> None:
    if mode not in ON_BAD_SAMPLE:
        raise ValueError(f"data.on_bad_sample: {mode!r} is not one of {list(ON_BAD_SAMPLE)}")


@dataclass
class Batch:
    lr: torch.Tensor  # (B, 3, h, w) in [0, 1], 8-bit levels
    hr: torch.Tensor  # (B, 3, s*h, s*w) in [0, 1]: the images, or the canvas they were padded to (``sizes``)
    target: Any  # what the targets of the task collate (src/data/targets.py); read only by the Task
    # Each image's (H, W) on the canvas when some were padded (its top-left corner); None when every image
    # fills ``hr``. ``src.steps.per_image`` cuts the canvas back to the images.
    sizes: list[tuple[int, int]] | None = None


class PairedDataset(Dataset):
    """HR images from ``raw/<split>/images``, their LR (from ``lr/<split>`` or degraded here), targets of the
    task's ``target_kind``; each sample cropped and flipped as ``view`` says (``src.data.transforms``)."""

    def __init__(self, raw: Path, lr: Path, split: str, task: Task | None, view: SampleView = SampleView(),
                 fraction: float = 1.0, on_bad_sample: str = "error", degrade: DegradeConfig | None = None,
                 lr_on_disk: bool = True, variable_size: bool = False):
        """``task=None`` gives image pairs only (SR pre-training): targets are ``None``.

        ``fraction`` keeps a fixed prefix of the split (its order is already random), for short tuning runs.
        ``on_bad_sample`` (``data.on_bad_sample``) is ``"error"`` or ``"skip"``; skipped samples are listed in
        ``self.skipped`` as (file, problem). ``degrade`` makes the LR of what the disk has no LR of (a crop, a
        flipped image, a batch's canvas); ``lr_on_disk=False``: the degrade stage wrote none for this split.
        ``variable_size``: the split's images may differ in size (``data.resize: short_side``).
        """
        _check_mode(on_bad_sample)
        self.hr_dir, self.lr_dir = raw / split / "images", lr / split
        names = sorted(p.stem for p in self.hr_dir.glob("*.png"))
        if fraction < 1.0:
            names = names[: max(1, round(fraction * len(names)))]
        if not names:
            raise FileNotFoundError(f"{self.hr_dir}: the '{split}' split is empty (no PNG images)")
        if lr_on_disk and not self.lr_dir.is_dir():
            raise FileNotFoundError(f"{self.lr_dir}: missing (run the degrade stage first)")
        if degrade is None and (view.hflip or view.crop or not lr_on_disk or variable_size):
            raise ValueError("a dataset that crops, flips, pads or has no LR on disk needs the degrade settings")
        self.view, self.degrade_cfg, self.lr_on_disk, self.variable_size = view, degrade, lr_on_disk, variable_size
        self.target_io: Targets | None = targets_for(task) if task is not None else None

        problems = self._check_images(names)
        targets: dict[str, Any] = {}
        if self.target_io is not None:
            targets, bad = _targets_by_sample(self.target_io, raw / split, [n for n in names if n not in problems])
            for n, msg in bad.items():
                problems[n] = _file_and_problem(msg, self.hr_dir / f"{n}.png")

        self.skipped: Skipped = [problems[n] for n in names if n in problems]
        if self.skipped:
            if on_bad_sample == "error":
                file, problem = self.skipped[0]
                raise DataError(f"{file}: {problem} [{len(self.skipped)} of {len(names)} '{split}' samples are bad; "
                                "data.on_bad_sample: skip drops them]")
            shown = "; ".join(f"{f}: {p}" for f, p in self.skipped[:_WARN_FIRST])
            more = f"; and {len(self.skipped) - _WARN_FIRST} more" if len(self.skipped) > _WARN_FIRST else ""
            log.warning("skipping %d of %d '%s' samples (data.on_bad_sample: skip): %s%s",
                        len(self.skipped), len(names), split, shown, more)
        self.names = [n for n in names if n not in problems]
        if not self.names:
            raise DataError(f"{self.hr_dir}: all {len(names)} '{split}' samples are bad, nothing left to load "
                            f"(first: {self.skipped[0][0]}: {self.skipped[0][1]})")
        self.targets = [targets[n] for n in self.names] if task is not None else [None] * len(self.names)
        self.sizes = [self._hr_sizes[n] for n in self.names]  # (H, W) of each stored HR image

    def _check_images(self, names: Sequence[str]) -> dict[str, tuple[str, str]]:
        """The first problem of each bad sample's images, by name: (file, problem)."""
        problems: dict[str, tuple[str, str]] = {}
        hr_sizes: dict[str, tuple[int, int]] = {}
        pixels: dict[str, list[np.ndarray]] = {}
        budget = CACHE_BYTES

        def keep(n: str, arr: np.ndarray) -> None:
            nonlocal budget
            budget -= arr.nbytes
            if budget >= 0:
                pixels.setdefault(n, []).append(arr)

        for n in names:
            hr = self.hr_dir / f"{n}.png"
            arr = _decode(hr)
            if isinstance(arr, str):
                problems[n] = (str(hr), arr)
            else:
                hr_sizes[n] = (arr.shape[1], arr.shape[0])
                keep(n, arr)
        self._hr_sizes = {n: (w_h[1], w_h[0]) for n, w_h in hr_sizes.items()}
        if not self.lr_on_disk:
            self._pixels = {n: (v[0], None) for n, v in pixels.items()} if budget >= 0 else {}
            return problems
        lr_sizes: dict[str, tuple[int, int]] = {}
        scales: dict[str, int | None] = {}
        for n in hr_sizes:
            lr = self.lr_dir / f"{n}.png"
            arr = _decode(lr)
            if isinstance(arr, str):
                problems[n] = (str(lr), "LR twin missing (rerun the degrade stage)" if arr == "missing" else arr)
            else:
                lr_sizes[n] = size = (arr.shape[1], arr.shape[0])
                scales[n] = _integer_scale(hr_sizes[n], size)
                keep(n, arr)
        # All or nothing: a split over the budget is read from disk, so memory stays bounded.
        self._pixels = {n: (v[0], v[1]) for n, v in pixels.items() if len(v) == 2} if budget >= 0 else {}
        if not hr_sizes:
            return problems
        if self.variable_size:  # each image has its own size: its LR is that of its evaluation view
            for n, size in hr_sizes.items():
                if n not in problems and lr_sizes.get(n) != (want := self._lr_size_of(size)):
                    problems[n] = (str(self.lr_dir / f"{n}.png"), f"LR image is {_wxh(lr_sizes[n])}, not the "
                                   f"{_wxh(want)} that degrade.scale {self.degrade_cfg.scale} gives of HR {_wxh(size)} "
                                   "(rerun the degrade stage)")
            return problems
        # The split has one HR size (a batch stacks its images) and one scale: take the most common ones.
        hr_size = Counter(hr_sizes.values()).most_common(1)[0][0]
        valid = [k for k in scales.values() if k]
        scale = Counter(valid).most_common(1)[0][0] if valid else None
        for n, size in hr_sizes.items():
            if n in problems:
                continue
            hr, lr = self.hr_dir / f"{n}.png", self.lr_dir / f"{n}.png"
            if scale is not None and min(size) < scale:
                problems[n] = (str(hr), f"image is {_wxh(size)}, smaller than the split's scale factor {scale}")
            elif size != hr_size:
                problems[n] = (str(hr), f"image is {_wxh(size)} but the split's images are {_wxh(hr_size)} "
                                        "(a batch needs one size; data.resize: short_side keeps each image's size)")
            elif scales[n] is None and not self.view.crop:
                problems[n] = (str(lr), f"LR image is {_wxh(lr_sizes[n])}, not the HR size {_wxh(size)} "
                                        "divided by an integer scale")
            elif scales[n] != scale and not self.view.crop:
                problems[n] = (str(lr), f"LR image is {_wxh(lr_sizes[n])} = HR {_wxh(size)} / {scales[n]}, "
                                        f"but the split's scale is {scale}")
        return problems

    def _lr_size_of(self, wh: tuple[int, int]) -> tuple[int, int]:
        """(W, H) of the LR the degrade stage writes for a stored HR of (W, H): its view, padded to the scale."""
        w, h = wh
        if self.view.crop:
            w = h = self.view.crop
        s = self.degrade_cfg.scale
        return round_up(w, s) // s, round_up(h, s) // s

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        name = self.names[i]
        if name in self._pixels:
            hr_arr, lr_arr = self._pixels[name]
            hr = torch.from_numpy(hr_arr).permute(2, 0, 1).float() / 255.0
            lr = torch.from_numpy(lr_arr).permute(2, 0, 1).float() / 255.0 if lr_arr is not None else None
            return hr, lr
        hr = read_rgb(self.hr_dir / f"{name}.png")  # a file changed since the check: a ValueError naming it
        lr = read_rgb(self.lr_dir / f"{name}.png") if self.lr_on_disk else None
        if lr is not None and not self.variable_size and not self.view.crop and \
                lr.shape[-2] * (hr.shape[-1] // max(lr.shape[-1], 1)) != hr.shape[-2]:
            raise ValueError(f"{self.lr_dir / name}.png: LR size {tuple(lr.shape[-2:])} does not match HR {tuple(hr.shape[-2:])}")
        return hr, lr

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor, Any]:
        """(LR or None, HR, target): the LR is None when the collate must degrade the batch's canvas."""
        hr, lr = self._read(i)
        target = self.targets[i]
        win = self.view.window(*hr.shape[-2:])
        if win is not None:  # the crop's LR is that crop degraded (the disk's LR, if any, is the eval view's)
            hr = crop(hr, win, fill=0.0)
            target = self.target_io.crop(target, win) if self.target_io else None
            lr = lr if not self.view.random_crop else None
        if self.view.hflip and torch.rand(()) < 0.5:
            # The LR of the flipped image is the flipped image degraded: bicubic + rounding does not commute
            # with a flip exactly (a few uint8 levels in 10^4 differ at x4).
            hr, lr = hr.flip(-1), None
            target = self.target_io.hflip(target, hr.shape[-1]) if self.target_io else None
        s = self.degrade_cfg.scale if self.degrade_cfg else 1
        # Whole images of several sizes are degraded as their batch's canvas (collate); a crop fills its own.
        if lr is None and (self.view.crop or not self.variable_size) and not hr.shape[-1] % s and not hr.shape[-2] % s:
            lr = degrade(hr[None], self.degrade_cfg)[0]
        return lr, hr, target

    def collate(self, samples: list[tuple[torch.Tensor | None, torch.Tensor, Any]]) -> Batch:
        lrs, hrs, targets = zip(*samples)
        target = self.target_io.collate(list(targets)) if self.target_io else None
        sizes = [tuple(h.shape[-2:]) for h in hrs]
        s = self.degrade_cfg.scale if self.degrade_cfg else 1
        height, width = canvas_size(sizes, s) if self.degrade_cfg else sizes[0]
        if all(size == (height, width) for size in sizes) and all(lr is not None for lr in lrs):
            return Batch(lr=torch.stack(lrs), hr=torch.stack(hrs), target=target)
        canvas = torch.stack([pad_to(h, height, width, self.view.pad) for h in hrs])
        lr_size = (height // s, width // s)
        if all(lr is not None and tuple(lr.shape[-2:]) == lr_size for lr in lrs):
            lr = torch.stack(lrs)  # precomputed on this canvas (a batch of one, or images of one size)
        else:
            lr = degrade(canvas, self.degrade_cfg)
        return Batch(lr=lr, hr=canvas, target=target, sizes=sizes)


def _decode(path: Path) -> np.ndarray | str:
    """(H, W, 3) uint8 RGB pixels of an image that decodes completely, or its problem ("missing" when absent).

    ``Image.verify`` misses a truncated pixel stream; a full decode does not (~0.1 ms for a 64-px PNG).
    """
    try:
        return decode_rgb(path)  # the one decoding policy (modes, 16 bit, alpha): src/data/images.py
    except FileNotFoundError:
        return "missing"
    except ImageError as err:
        return err.problem


def _integer_scale(hr: tuple[int, int], lr: tuple[int, int]) -> int | None:
    """k with LR * k == HR on both sides, or None."""
    (hw, hh), (lw, lh) = hr, lr
    if lw < 1 or lh < 1 or hw % lw or hh % lh or hw // lw != hh // lh:
        return None
    return hw // lw


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):
        return err.args[0]  # str(KeyError) adds quotes
    return str(err) or type(err).__name__


def _file_and_problem(msg: str, fallback: Path) -> tuple[str, str]:
    """Split a target's "<file>: <problem>" message; a message without a file is the image's."""
    head, sep, rest = msg.partition(": ")
    if sep and head.endswith((".csv", ".json", ".png")):
        return head, rest
    return str(fallback), f"bad target ({msg})"


def _targets_by_sample(target_io: Targets, split_dir: Path, names: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Targets by name, and the problem of each sample whose target does not load.

    One ``load`` call when all are good (the annotation file is read once). Otherwise a call with
    no samples tells a problem of the file as a whole (unreadable, malformed: an error, no single sample to
    drop) from bad samples, and the failing halves are split again, so a few bad samples among n cost
    O(log n) calls each (``load`` reports only its first problem).
    """
    good: dict[str, Any] = {}
    bad: dict[str, str] = {}
    try:
        return dict(zip(names, target_io.load(split_dir, list(names)))), bad
    except _TARGET_ERRORS:
        pass
    try:
        target_io.load(split_dir, [])
    except _TARGET_ERRORS as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DataError(_message(err)) from None

    def visit(chunk: Sequence[str]) -> None:
        if not chunk:
            return
        try:
            targets = target_io.load(split_dir, chunk)
        except _TARGET_ERRORS as err:
            if len(chunk) == 1:
                bad[chunk[0]] = _message(err)
            else:
                visit(chunk[: len(chunk) // 2])
                visit(chunk[len(chunk) // 2:])
            return
        good.update(zip(chunk, targets))

    visit(list(names))
    return good, bad


class EpochSampler(Sampler[int]):
    """A random order per epoch that is a pure function of (seed, epoch), like DistributedSampler's.

    ``fit`` calls ``set_epoch`` before each epoch, so a resumed run needs only the epoch number to see the
    same batches as an uninterrupted one. The loader's own generator (worker seeds) is reset with it.

    With ``world`` processes (``batch_size`` is the global batch), global batch k is chunk
    ``perm[k*B:(k+1)*B]`` of the epoch's permutation, cut into ``world`` equal contiguous slices, and
    ``rank`` takes slice ``rank``: the ranks' batches k together are the one-process batch k. A last chunk
    that does not split evenly is padded by wrapping around the permutation (as DistributedSampler pads),
    so every rank takes the same number of steps. One process keeps the plain permutation.
    """

    def __init__(self, n: int, seed: int, batch_size: int = 1, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.n, self.seed, self.epoch = n, seed, 0
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.loader_generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        # Worker seeds (augmentation in DataLoader workers) differ by rank; the data order does not.
        self.loader_generator.manual_seed((self.seed + self.rank + 1) * 1_000_003 + epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        if self.world == 1:
            return iter(perm)
        mine: list[int] = []
        for start in range(0, self.n, self.batch_size):
            chunk = perm[start:start + self.batch_size]
            padded = -(-len(chunk) // self.world) * self.world
            chunk += [perm[i % self.n] for i in range(padded - len(chunk))]  # wrap around the permutation
            share = padded // self.world
            mine += chunk[self.rank * share:(self.rank + 1) * share]
        return iter(mine)

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        full, rest = divmod(self.n, self.batch_size)
        return full * (self.batch_size // self.world) + -(-rest // self.world)


def make_loader(ds: PairedDataset, batch_size: int, train: bool, num_workers: int, seed: int = 0,
                rank: int = 0, world: int = 1, aspect_groups: int = 0) -> DataLoader:
    """Training loaders shuffle with an ``EpochSampler`` seeded by ``seed``; evaluation loaders keep order.

    ``batch_size`` is the global batch: with ``world`` processes a training loader yields this ``rank``'s
    ``batch_size / world`` share of each global batch (``EpochSampler``). ``aspect_groups`` k > 0 batches
    training images of similar aspect ratio (``src.data.grouping``), each rank within its own share."""
    sampler = EpochSampler(len(ds), seed, batch_size, rank, world) if train else None
    per_rank = batch_size // world if train else batch_size
    batching: dict[str, Any] = {"batch_size": per_rank, "sampler": sampler, "drop_last": False}
    if train and aspect_groups:
        groups = aspect_ratio_groups(ds.sizes, aspect_groups)
        batching = {"batch_sampler": GroupedBatchSampler(sampler, groups, per_rank)}
    return DataLoader(
        ds,
        **batching,
        num_workers=num_workers,
        collate_fn=ds.collate,
        generator=sampler.loader_generator if sampler is not None else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def split_dataset(params: "Params", raw: Path, lr: Path, split: str, task: Task | None,
                  fraction: float = 1.0) -> PairedDataset:
    """The ``split`` of the study's dataset as ``params.data`` has its loader show it (views, LR source)."""
    data = params.data
    return PairedDataset(raw, lr, split, task, split_views(data)[split], fraction, data.on_bad_sample,
                         degrade=params.degrade, lr_on_disk=data.lr_on_disk[split], variable_size=data.variable_size)
