"""Many processes under ``torchrun`` (``train.nproc > 1``): one process per GPU, or per CPU share.

``init`` joins the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL for CUDA tensors (with Gloo for CPU tensors), Gloo
on a CPU-only machine; each process uses GPU ``LOCAL_RANK``. In a single process (no torchrun) every
function here is a no-op and every collective returns its input, so the one-process path is unchanged.

Why no ``DistributedDataParallel``: the recogniser plays several roles per SR4IR step (a frozen critic
with ``requires_grad`` off in phase 1, a trainee on SR, HR and CQMix inputs in phase 2), and the task code
calls attributes of the bare networks. The official code wraps both networks in DDP and it works only
because phase 1 fires no hooks of the recogniser (method doc, section 14 item 23). Instead ``average_gradients``
does DDP's gradient averaging explicitly, once per optimiser update, and ``broadcast_buffers`` does what
DDP's ``broadcast_buffers=True`` does for the BatchNorm running statistics.
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


def average_gradients(params: Sequence[torch.nn.Parameter], bad: bool = False) -> int:
    """Average the gradients of ``params`` over ranks in place; return on how many ranks ``bad`` was set.

    The same math as DDP's gradient averaging (the sum over ranks divided by the world size), in one
    coalesced all_reduce after the backward pass: unlike DDP, communication does not overlap the backward.
    Every rank passes the same parameters in the same order. A parameter without a gradient on some rank
    counts as zero there (DDP with ``find_unused_parameters``); one without a gradient on every rank keeps
    ``grad is None``, so the optimiser skips it as it would in one process. ``bad`` (a non-finite loss on
    this rank) travels in the same all_reduce, so every rank learns it and stops together.
    """
    if world_size() == 1:
        return int(bad)
    ref = params[0]
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    has = [p.grad is not None for p in params]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in params]
                     + [torch.tensor([*has, bad], dtype=dtype, device=ref.device)])
    dist.all_reduce(flat)
    n = sum(p.numel() for p in params)
    counts = flat[n:].tolist()
    offset = 0
    for p, count in zip(params, counts, strict=False):
        size = p.numel()
        if count > 0:
            mean = flat[offset:offset + size].view_as(p).div_(world_size())
            if p.grad is None:
                p.grad = mean.to(p.dtype).clone()
            else:
                p.grad.copy_(mean)
        offset += size
    return int(counts[-1])


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

