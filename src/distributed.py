"""Many processes under ``torchrun`` (``train.nproc > 1``): one process per GPU, or per CPU share.

``init`` joins the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL for CUDA tensors (with Gloo for CPU tensors), Gloo
on a CPU-only machine; each process uses GPU ``LOCAL_RANK``. In a single process (no torchrun) every
function here is a no-op and every collective returns its input, so the one-process path is unchanged.

Each trained network is wrapped in ``DistributedDataParallel`` (``ddp``) for the forward passes whose
gradients are averaged; everything else (a frozen critic, feature extraction, evaluation, checkpoints) calls
the bare network, the wrapper's ``.module`` (torchvision's ``model_without_ddp``). Many machines
(``train.nnodes``): ``init`` numbers the processes node by node, ``train.node_rank`` first, so that global
rank 0, the one that writes, runs on node 0.
"""

from __future__ import annotations

import atexit
import datetime
import inspect
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

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
    _rank_by_node()
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(shutdown)


NODE_RANK = "SR4IR_NODE_RANK"  # set by the stage launcher (pipeline/_stage.py) on each machine of a many-node run


def _rank_by_node() -> None:
    """Many nodes: global rank = node rank x processes per node + local rank, with the node rank this machine
    was given (``train.node_rank`` / ``PET_NODE_RANK``), not the order in which torchrun's c10d rendezvous
    admitted the nodes, so that rank 0 (the writer) runs on node 0. Every node must run the same number of
    processes and the node ranks must be 0 .. nnodes - 1, each once (checked through torchrun's store)."""
    if NODE_RANK not in os.environ or "LOCAL_WORLD_SIZE" not in os.environ:
        return
    node, per_node, world = int(os.environ[NODE_RANK]), int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
    if world % per_node or not 0 <= node < world // per_node:
        raise RuntimeError(f"train.node_rank {node}: must be in 0 .. nnodes - 1 ({world // per_node} nodes of {per_node} "
                           f"processes; every node runs train.nproc processes)")
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=TIMEOUT)
    if local_rank() == 0 and store.add(f"sr4ir/node_rank/{node}", 1) > 1:
        raise RuntimeError(f"train.node_rank {node} is set on two machines: give each machine its own node rank")
    os.environ["RANK"] = str(node * per_node + local_rank())


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def many_nodes() -> bool:
    """True when the processes run on more than one machine (torchrun's ``--nnodes`` above 1)."""
    return world_size() > int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


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


def ddp(net: torch.nn.Module, device: torch.device) -> DistributedDataParallel | None:
    """``net`` wrapped in ``DistributedDataParallel`` for the forward passes whose gradients are averaged.

    DDP's own machinery: rank 0's parameters and buffers broadcast at construction, gradients averaged in
    buckets (25 MiB, the first one small) by all-reduces that overlap the backward, and, with
    ``broadcast_buffers=True``, rank 0's buffers (BatchNorm running statistics) broadcast at the start of every
    forward of the wrapper. The wrapper shares ``net``'s tensors: its ``.module`` is ``net``, which every other
    use (a frozen critic, feature extraction, evaluation, checkpoints) calls directly. Parameters with
    ``requires_grad`` off at construction (a detector's frozen layers) are not DDP's. One process: no wrapper,
    ``None`` (the one-process path does not change).
    """
    if world_size() == 1:
        return None
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # broadcast_buffers=True, under the name this torch gives it (2.14 renames it forward_sync_buffers)
    sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
    return DistributedDataParallel(net, device_ids=ids, **{sync: True})


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


def sync_buffers(net: torch.nn.Module | None) -> None:
    """Rank 0's buffers of ``net`` on every rank: what the forward of ``net``'s DDP wrapper does first, for a
    forward that runs the bare network instead (SR4IR's phase-1 critic: eval mode, so its BatchNorm uses the
    running statistics, which must be the same on every rank, rank 0's as DDP keeps them). One process: no-op."""
    if net is not None and world_size() > 1:
        broadcast_tensors(net.buffers())


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
