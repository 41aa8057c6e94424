"""Many processes under ``torchrun`` (``train.nproc > 1``): one process per GPU, or per CPU share.

``init`` joins the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL for CUDA tensors (with Gloo for CPU tensors), Gloo
on a CPU-only machine; each process uses GPU ``LOCAL_RANK``. In a single process (no torchrun) every
function here is a no-op and every collective returns its input, so the one-process path is unchanged.

Why no ``DistributedDataParallel``: the recogniser plays several roles per SR4IR step (a frozen critic
with ``requires_grad`` off in phase 1, a trainee on SR, HR and CQMix inputs in phase 2), and the task code
calls attributes of the bare networks. The official code wraps both networks in DDP and it works only
because phase 1 fires no hooks of the recogniser (method doc, section 14 item 23). Instead ``GradientAverager``
does DDP's gradient averaging explicitly for each optimiser update, in DDP's buckets and overlapped with the
backward as DDP's, and ``broadcast_buffers`` does what DDP's ``broadcast_buffers=True`` does for the BatchNorm
running statistics.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

# Rank 0 scores the validation split after each epoch while the others wait in a broadcast: allow for a
# long evaluation before a collective times out (a crashed rank does not make the others wait this long:
# torchrun stops the whole group when one process fails).
TIMEOUT = datetime.timedelta(minutes=60)


def launched() -> bool:
    """True in a process started by torchrun (or anything else that sets its environment)."""
    return "RANK" in os.environ or "LOCAL_RANK" in os.environ


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init() -> None:
    """Join torchrun's process group (idempotent; nothing to do outside torchrun)."""
    if not launched() or is_initialized():
        return
    if torch.cuda.is_available():  # every rank must name the same backend, whatever params.device says
        if local_rank() < torch.cuda.device_count():
            torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"  # NCCL for CUDA tensors, Gloo for CPU tensors (device: cpu, control values)
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(shutdown)


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the only process that logs, draws progress bars and writes outputs and checkpoints."""
    return rank() == 0


def backend() -> str:
    return str(dist.get_backend()) if is_initialized() else "none"


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable values)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, by rank, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective decision, e.g. stop on SIGTERM)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)])  # control values stay on the CPU (Gloo, also under NCCL)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def sum_floats(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks of a short list of numbers (loss sums, sample counts)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


# Whether ``GradientAverager`` overlaps the all-reduce with the backward: None decides by device (on CUDA, as
# DDP; not on a CPU, where Gloo's threads share the cores with the backward and it measured no faster,
# ``python -m src.bench_dist``). The benchmark sets it to time both.
OVERLAP: bool | None = None

# DDP's bucket sizes: a small first bucket, so communication starts early in the backward, then 25 MiB.
FIRST_BUCKET_BYTES = 1 << 20
BUCKET_BYTES = 25 << 20


class GradientAverager:
    """Average the gradients of ``params`` over ranks in place: DDP's math (the sum over ranks divided by the
    world size), its bucketing, and its overlap of communication with the backward pass.

    Inside ``with averager:`` a hook on every parameter counts the gradients as the backward produces them; a
    bucket whose gradients are all there is all-reduced asynchronously while the backward goes on. Buckets
    follow the parameters in reverse order (roughly the order the backward produces them, as DDP's) and are
    launched strictly in that order, so every rank issues the same collectives in the same order whatever its
    timing. ``finish(bad)`` launches the buckets still waiting (a parameter without a gradient on this rank
    counts as zero there, as DDP with ``find_unused_parameters``; one without a gradient on every rank keeps
    ``grad is None``, so the optimiser skips it as it would in one process), all-reduces the per-parameter
    "has a gradient" flags together with ``bad`` (a non-finite loss on this rank, so every rank learns it and
    stops together), waits, writes the means into ``.grad`` and returns on how many ranks ``bad`` was set.
    Every rank passes the same parameters in the same order. ``overlap`` (default: ``OVERLAP``, else on CUDA
    only) false, or no ``with``: nothing overlaps, ``finish`` sends every bucket after the backward.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], overlap: bool | None = None,
                 first_bucket_bytes: int = FIRST_BUCKET_BYTES, bucket_bytes: int = BUCKET_BYTES):
        self.params = list(params)
        if overlap is None:
            overlap = OVERLAP if OVERLAP is not None else bool(self.params) and self.params[0].is_cuda
        self.overlap = overlap and world_size() > 1
        self.buckets: list[list[int]] = []
        bucket: list[int] = []
        size, cap = 0, first_bucket_bytes
        for i in reversed(range(len(self.params))):
            bucket.append(i)
            size += self.params[i].numel() * self.params[i].element_size()
            if size >= cap:
                self.buckets.append(bucket)
                bucket, size, cap = [], 0, bucket_bytes
        if bucket:
            self.buckets.append(bucket)
        self._bucket_of = {i: k for k, b in enumerate(self.buckets) for i in b}
        self._waiting = [len(b) for b in self.buckets]
        self._next = 0  # the next bucket to launch: strictly in order
        self._sent: list[tuple[int, torch.Tensor, Any]] = []
        self._hooks: list[Any] = []
        self.launched_in_backward = 0  # buckets sent while the backward was still running

    def __enter__(self) -> "GradientAverager":
        for i, p in enumerate(self.params):
            if p.requires_grad and self.overlap:
                self._hooks.append(p.register_post_accumulate_grad_hook(lambda _p, i=i: self._ready(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _ready(self, i: int) -> None:
        self._waiting[self._bucket_of[i]] -= 1
        while self._next < len(self.buckets) and self._waiting[self._next] == 0:
            self._launch()
            self.launched_in_backward += 1

    def _launch(self) -> None:
        k, self._next = self._next, self._next + 1
        group = [self.params[i] for i in self.buckets[k]]
        dtype = torch.float32
        for p in group:
            dtype = torch.promote_types(dtype, p.dtype)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in group])
        self._sent.append((k, flat, dist.all_reduce(flat, async_op=True)))

    def finish(self, bad: bool = False) -> int:
        if world_size() == 1:  # one process: the gradients are the means already
            return int(bad)
        while self._next < len(self.buckets):
            self._launch()
        flags = torch.tensor([*(p.grad is not None for p in self.params), bad], dtype=torch.float32,
                             device=self.params[0].device)
        dist.all_reduce(flags)  # after every bucket on every rank: the same order everywhere
        counts = flags.tolist()
        for k, flat, work in self._sent:
            work.wait()
            offset = 0
            for i in self.buckets[k]:
                p, size = self.params[i], self.params[i].numel()
                if counts[i] > 0:
                    mean = flat[offset:offset + size].view_as(p).div_(world_size())
                    if p.grad is None:
                        p.grad = mean.to(p.dtype).clone()
                    else:
                        p.grad.copy_(mean)
                offset += size
        self._sent.clear()
        return int(counts[-1])


def average_gradients(params: Sequence[torch.nn.Parameter], bad: bool = False) -> int:
    """Average the gradients of ``params`` over ranks in place, after the backward (``GradientAverager``
    without the overlap); return on how many ranks ``bad`` was set. One process: nothing to average."""
    return GradientAverager(params).finish(bad)


def broadcast_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` with rank 0's values: one coalesced broadcast per (device, dtype)."""
    if world_size() == 1:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def sync_batchnorm(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` with its BatchNorm layers as SyncBatchNorm (``train.sync_bn``): under torchrun a training batch
    is normalised with the mean and variance of the global batch, every rank's share together, as the official
    code does for segmentation. The parameters and buffers are the same tensors and the state-dict keys do not
    change, so the saved weights load into the plain network. One process: ``net`` unchanged (the same math).
    PyTorch's SyncBatchNorm runs on CUDA only: any other device is an error naming the key."""
    if world_size() == 1:
        return net
    if device.type != "cuda":
        raise ValueError(f"train.sync_bn needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only), but this run's device "
                         f"is {device}: set train.sync_bn: false (each process then normalises with its own share's statistics)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)


def broadcast_buffers(nets: Iterable[torch.nn.Module | None]) -> None:
    """Rank 0's buffers (BatchNorm running mean/var and ``num_batches_tracked``) on every rank, as DDP's
    default ``broadcast_buffers=True`` keeps them. Without SyncBatchNorm each rank normalises a training
    batch with the statistics of its own share of the batch (as DDP without SyncBatchNorm does)."""
    if world_size() > 1:
        broadcast_tensors(b for net in nets if net is not None for b in net.buffers())


def broadcast_state(nets: Iterable[torch.nn.Module | None]) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP's constructor does)."""
    if world_size() > 1:
        broadcast_tensors(t for net in nets if net is not None for t in (*net.parameters(), *net.buffers()))

