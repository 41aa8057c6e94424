"""Aspect-ratio grouping of training batches: the recipe of torchvision's detection reference
(``group_by_aspect_ratio.py``), which the official SR4IR det runs use with k = 3.

Images are binned by width / height at the edges ``2 ** linspace(-1, 1, 2k + 1)`` (2k + 2 groups). Walking
the sampler's order, each index joins its group's buffer and a buffer that reaches the batch size is a batch;
when the order is exhausted, the fullest leftover buffers are topped up with their group's earliest indices
of the epoch (repeated if needed) until the epoch has ``len(sampler) // batch_size`` batches. A batch then
holds images of similar shape, so little of its padded canvas is padding.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def aspect_ratio_groups(sizes: Sequence[tuple[int, int]], k: int) -> list[int]:
    """The group id of each (height, width): ``bisect_right`` of width / height among the 2k + 1 bin edges."""
    edges = sorted((2.0 ** torch.linspace(-1, 1, 2 * k + 1)).tolist())
    return [bisect.bisect_right(edges, w / h) for h, w in sizes]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices of one group each, in the order ``sampler`` yields them."""

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be positive")
        self.sampler, self.group_ids, self.batch_size = sampler, list(group_ids), batch_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch's order comes from the wrapped sampler (``EpochSampler``)."""
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    @property
    def loader_generator(self) -> torch.Generator | None:
        return getattr(self.sampler, "loader_generator", None)

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        seen: dict[int, list[int]] = defaultdict(list)
        done = 0
        for idx in self.sampler:
            g = self.group_ids[idx]
            buffers[g].append(idx)
            seen[g].append(idx)
            if len(buffers[g]) == self.batch_size:
                yield buffers.pop(g)
                done += 1
        left = len(self) - done
        for g, buf in sorted(buffers.items(), key=lambda item: len(item[1]), reverse=True):
            if left <= 0:
                break
            need = self.batch_size - len(buf)
            pool = seen[g] * (need // len(seen[g]) + 1)
            yield buf + pool[:need]
            left -= 1

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]
