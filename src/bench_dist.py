"""Benchmark of the SR4IR step under many processes: DDP's gradient all-reduce against one process.

    python -m src.bench_dist                         # 2 processes, cls, default size, auto device
    python -m src.bench_dist --nnodes 2              # 2 "nodes" on this machine (c10d rendezvous), 1 process each
    python -m src.bench_dist --nproc 8 --tasks cls,seg,det --sizes paper --device cuda

Started plainly, it first times the step in this one process on the whole global batch (``one``: what
``train.nproc: 1`` runs), then starts itself again under torchrun: ``--standalone --nproc_per_node N``, or with
``--nnodes K`` K launchers on 127.0.0.1 joined by c10d rendezvous, N processes each, as ``train.nnodes`` starts
them (Gloo on a CPU, each process a share of the cores; NCCL with one GPU per process). Every process builds
the same SR4IR set-up (``src.bench``'s networks and synthetic batch: each process takes its share of the
global batch) with the networks in DDP, as training does (``src.experiment.build_setup``), and times
``src.steps.alternate_step`` in two ways, interleaved so that drift hits both alike:

* ``ddp``: DDP's all-reduce of the gradients, overlapped with the backward (what training does);
* ``local``: no communication (DDP's ``no_sync``: each process's own gradients; the ceiling, not a training mode).

A step's time is the slowest process's; images/s = the global batch / the median step. Rank 0 prints a
markdown table naming the machine and writes one JSON per (task, size) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from src import distributed
from src.bench import SIZES, TASK_NAMES, _csv, _sync, bench_problem, machine, synthetic_batch
from src.steps import alternate_step
from src.experiment import build_setup
from src.methods import METHODS
from src.utils import to_device, write_json_atomic, write_text_atomic

MODES = ("ddp", "local")
ONE_ENV = "SR4IR_BENCH_DIST_ONE"  # the one-process times, measured by the launcher, for rank 0's record


@contextlib.contextmanager
def mode(name: str, s: Any):
    """Run the enclosed steps of setup ``s`` with the given gradient communication."""
    if name == "ddp":
        yield
        return
    saved_world = distributed.world_size
    distributed.world_size = lambda: 1  # optimizer_step: no all-reduce of the finite flag
    try:
        with contextlib.ExitStack() as stack:
            for wrapper in (s.sr_ddp, s.rec_ddp):
                if wrapper is not None:
                    stack.enter_context(wrapper.no_sync())
            yield
    finally:
        distributed.world_size = saved_world


def one_process(task_name: str, size: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """The step in this one process (no torchrun) on the whole global batch: the baseline."""
    params, task, num_classes, hr_size, batch = bench_problem(task_name, size, device, args.hr, args.batch)
    torch.manual_seed(0)
    s = build_setup(METHODS["sr4ir"], params, task, device=device)
    full = to_device(synthetic_batch(task_name, hr_size, batch, params.degrade.scale, num_classes), device)
    for _ in range(args.warmup):
        alternate_step(s, full, True)
    times = []
    for _ in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        alternate_step(s, full, True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"imgs_per_s": batch / median, "step_s_median": median, "step_s_all": times, "threads": torch.get_num_threads()}


def bench_one(task_name: str, size: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    params, task, num_classes, hr_size, batch = bench_problem(task_name, size, device, args.hr, args.batch)
    world, rank = distributed.world_size(), distributed.rank()
    if batch % world:
        raise SystemExit(f"--batch {batch} does not split over {world} processes")
    scale = params.degrade.scale
    full = synthetic_batch(task_name, hr_size, batch, scale, num_classes)
    share = slice(rank * batch // world, (rank + 1) * batch // world)
    part = to_device(type(full)(lr=full.lr[share], hr=full.hr[share], target=full.target[share]), device)
    setups = {}
    for name in MODES:  # the same networks (seed 0), each in its own DDP wrappers (rank 0's weights broadcast)
        torch.manual_seed(0)
        setups[name] = build_setup(METHODS["sr4ir"], params, task, device=device, mix_seed=rank)
    for name in MODES:  # warm-up (and the first step allocates the optimiser state)
        with mode(name, setups[name]):
            for _ in range(args.warmup):
                alternate_step(setups[name], part, True)
    times: dict[str, list[float]] = {name: [] for name in MODES}
    for _ in range(args.steps):
        for name in MODES:
            with mode(name, setups[name]):
                distributed.barrier()
                _sync(device)
                t0 = time.perf_counter()
                alternate_step(setups[name], part, True)
                _sync(device)
                times[name].append(max(distributed.all_gather_object(time.perf_counter() - t0)))
    def weight_diff(a: str, b: str) -> float:
        nets = [(setups[a].sr, setups[b].sr), (setups[a].rec, setups[b].rec)]
        return max((x - y).abs().max().item() for na, nb in nets for x, y in zip(na.parameters(), nb.parameters()))

    grads = sum(p.numel() * p.element_size() for net in (setups["ddp"].sr, setups["ddp"].rec) for p in net.parameters())
    one = json.loads(os.environ.get(ONE_ENV, "{}")).get(f"{task_name}/{size}")
    rec: dict[str, Any] = {
        "machine": machine(), "device": str(device), "world": world, "nnodes": args.nnodes, "backend": distributed.backend(),
        "threads_per_process": torch.get_num_threads(), "task": task_name, "size": size, "hr": hr_size,
        "global_batch": batch, "grad_mib_per_step": grads / 2**20,
        "max_weight_diff": {"local_vs_ddp": weight_diff("local", "ddp")}, "one": one,
    }
    for name in MODES:
        median = statistics.median(times[name])
        rec[name] = {"imgs_per_s": batch / median, "step_s_median": median, "step_s_all": times[name]}
    return rec


def table(records: list[dict[str, Any]]) -> str:
    r0 = records[0]
    m = r0["machine"]
    where = m.get("gpu") or m.get("cpu", "?")
    nodes = f" on {r0['nnodes']} nodes" if r0.get("nnodes", 1) > 1 else ""
    lines = [f"SR4IR step, {r0['world']} processes{nodes} ({r0['backend']}, {r0['threads_per_process']} threads each) "
             f"against one process, {where}", "",
             "| task | size | HR | global batch | gradients MiB | one process s/step | DDP s/step | local s/step | "
             "one img/s | DDP img/s | DDP/one |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        one = r.get("one") or {}
        one_s, one_ips = one.get("step_s_median", float("nan")), one.get("imgs_per_s", float("nan"))
        lines.append(f"| {r['task']} | {r['size']} | {r['hr']} | {r['global_batch']} | {r['grad_mib_per_step']:.0f} | "
                     f"{one_s:.3f} | {r['ddp']['step_s_median']:.3f} | {r['local']['step_s_median']:.3f} | "
                     f"{one_ips:.2f} | {r['ddp']['imgs_per_s']:.2f} | {r['ddp']['imgs_per_s'] / one_ips:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m src.bench_dist", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=None, help="processes per node (one per GPU on CUDA); default 2, "
                    "or 1 with --nnodes")
    ap.add_argument("--nnodes", type=int, default=1, help="launchers on this machine joined by c10d rendezvous "
                    "(train.nnodes' path), --nproc processes each")
    ap.add_argument("--tasks", type=lambda v: _csv(v, TASK_NAMES, "--tasks"), default=["cls"], help="comma-separated: cls,seg,det")
    ap.add_argument("--sizes", type=lambda v: _csv(v, SIZES, "--sizes"), default=["default"], help="comma-separated: paper,default")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--batch", type=int, default=None, help="override the global batch size")
    ap.add_argument("--hr", type=int, default=None, help="override the HR side in pixels")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    ap.add_argument("--out", type=Path, default=Path("reports/bench"))
    ap.add_argument("--no-one", action="store_true", help="skip the one-process baseline")
    args = ap.parse_args(argv)
    if args.nproc is None:
        args.nproc = 2 if args.nnodes == 1 else 1
    if args.nproc < 1 or args.nnodes < 1 or args.nproc * args.nnodes < 2 or args.steps < 1 or args.warmup < 0:
        ap.error("--nproc x --nnodes must be >= 2, --steps >= 1 and --warmup >= 0")
    return args


ARGV_ENV = "SR4IR_BENCH_DIST_ARGV"  # the arguments, for the processes torchrun starts (its parser would take --nproc)


def _nodes(args: argparse.Namespace) -> str:
    return f"_{args.nnodes}nodes" if args.nnodes > 1 else ""


def launch(args: argparse.Namespace, argv: list[str], cuda: bool) -> int:
    """The one-process baseline here, then the processes under torchrun (one launcher per "node")."""
    one = {}
    if not args.no_one:
        device = torch.device("cuda") if cuda else torch.device("cpu")
        for task_name in args.tasks:
            for size in args.sizes:
                one[f"{task_name}/{size}"] = one_process(task_name, size, device, args)
                print(f"{task_name}/{size}: one process {one[f'{task_name}/{size}']['step_s_median']:.3f} s/step",
                      file=sys.stderr, flush=True)
    env = dict(os.environ, **{ARGV_ENV: json.dumps(argv), ONE_ENV: json.dumps(one)})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // (args.nproc * args.nnodes))))
    if args.nnodes == 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "src.bench_dist"]
        return subprocess.run(cmd, env=env).returncode
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for node in range(args.nnodes):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={args.nnodes}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=bench_dist", f"--nproc_per_node={args.nproc}",
               "-m", "src.bench_dist"]
        procs.append(subprocess.Popen(cmd, env=dict(env, **{distributed.NODE_RANK: str(node)})))
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if distributed.launched() and ARGV_ENV in os.environ:
        argv = json.loads(os.environ[ARGV_ENV])
    args = parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.device_count() < args.nproc * args.nnodes:
        print(f"--nproc {args.nproc}: this machine has {torch.cuda.device_count()} GPU(s); NCCL needs one per process",
              file=sys.stderr)
        return 2
    if not distributed.launched():
        return launch(args, argv, cuda)
    distributed.init()
    device = torch.device("cuda", distributed.local_rank()) if cuda else torch.device("cpu")
    records = []
    for task_name in args.tasks:
        for size in args.sizes:
            rec = bench_one(task_name, size, device, args)
            records.append(rec)
            if distributed.is_main():
                path = args.out / f"{device.type}_dist{rec['world']}{_nodes(args)}_{task_name}_{size}.json"
                write_json_atomic(path, rec)
                print(f"{task_name}/{size}: DDP {rec['ddp']['imgs_per_s']:.2f}, local {rec['local']['imgs_per_s']:.2f} img/s "
                      f"-> {path}", file=sys.stderr, flush=True)
    if distributed.is_main():
        text = table(records)
        write_text_atomic(args.out / f"{device.type}_dist{records[0]['world']}{_nodes(args)}_table.md", text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
