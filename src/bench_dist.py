"""Benchmark of the SR4IR step under many processes: how the gradient all-reduce costs and overlaps.

    python -m src.bench_dist                         # 2 processes, cls, default size, auto device
    python -m src.bench_dist --nproc 8 --tasks cls,seg,det --sizes paper --device cuda

Started plainly, it starts itself again under ``torchrun --standalone --nproc_per_node N`` (Gloo on a CPU,
each process a share of the cores; NCCL with one GPU per process). Every process builds the same SR4IR
set-up (``src.bench``'s networks and synthetic batch: the global batch, each process takes its share) and
times ``src.steps.alternate_step``, which averages the gradients of each update over the processes
(``src.distributed.GradientAverager``), in three ways, interleaved so that drift hits all alike:

* ``overlap``: each bucket all-reduced while the backward goes on (what training does on CUDA);
* ``after``: the buckets all-reduced after the backward (what training does on a CPU);
* ``local``: no communication at all (each process's own gradients: the ceiling, not a training mode).

A step's time is the slowest process's; images/s = the global batch / the median step. Rank 0 prints a
markdown table naming the machine and writes one JSON per (task, size) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
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

MODES = ("overlap", "after", "local")


@contextlib.contextmanager
def mode(name: str):
    """Run the enclosed steps with the given gradient communication."""
    saved_overlap, saved_world = distributed.OVERLAP, distributed.world_size
    distributed.OVERLAP = name == "overlap"
    if name == "local":
        distributed.world_size = lambda: 1  # _update then takes the one-process path: no all-reduce
    try:
        yield
    finally:
        distributed.OVERLAP, distributed.world_size = saved_overlap, saved_world


def bench_one(task_name: str, size: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    params, task, num_classes, hr_size, batch = bench_problem(task_name, size, device, args.hr, args.batch)
    world, rank = distributed.world_size(), distributed.rank()
    if batch % world:
        raise SystemExit(f"--batch {batch} does not split over {world} processes")
    scale = params.degrade.scale
    torch.manual_seed(0)
    base = build_setup(METHODS["sr4ir"], params, task, device=device, mix_seed=rank)
    distributed.broadcast_state([base.sr, base.rec])
    full = synthetic_batch(task_name, hr_size, batch, scale, num_classes)
    share = slice(rank * batch // world, (rank + 1) * batch // world)
    part = to_device(type(full)(lr=full.lr[share], hr=full.hr[share], target=full.target[share]), device)
    setups = {name: copy.deepcopy(base) for name in MODES}
    del base
    for name in MODES:  # warm-up (and the first step allocates the optimiser state)
        with mode(name):
            for _ in range(args.warmup):
                alternate_step(setups[name], part, True)
    times: dict[str, list[float]] = {name: [] for name in MODES}
    for _ in range(args.steps):
        for name in MODES:
            with mode(name):
                distributed.barrier()
                _sync(device)
                t0 = time.perf_counter()
                alternate_step(setups[name], part, True)
                _sync(device)
                times[name].append(max(distributed.all_gather_object(time.perf_counter() - t0)))
    def weight_diff(a: str, b: str) -> float:  # after the same steps: overlap and after are the same math
        nets = [(setups[a].sr, setups[b].sr), (setups[a].rec, setups[b].rec)]
        return max((x - y).abs().max().item() for na, nb in nets for x, y in zip(na.parameters(), nb.parameters()))

    grads = sum(p.numel() * p.element_size() for net in (setups["after"].sr, setups["after"].rec) for p in net.parameters())
    rec: dict[str, Any] = {
        "machine": machine(), "device": str(device), "world": world, "backend": distributed.backend(),
        "threads_per_process": torch.get_num_threads(), "task": task_name, "size": size, "hr": hr_size,
        "global_batch": batch, "grad_mib_per_step": grads / 2**20,
        "max_weight_diff": {"overlap_vs_after": weight_diff("overlap", "after"), "local_vs_after": weight_diff("local", "after")},
    }
    for name in MODES:
        median = statistics.median(times[name])
        rec[name] = {"imgs_per_s": batch / median, "step_s_median": median, "step_s_all": times[name]}
    return rec


def table(records: list[dict[str, Any]]) -> str:
    r0 = records[0]
    m = r0["machine"]
    where = m.get("gpu") or m.get("cpu", "?")
    lines = [f"SR4IR step, {r0['world']} processes ({r0['backend']}, {r0['threads_per_process']} threads each), {where}", "",
             "| task | size | HR | global batch | gradients MiB | overlap img/s | after img/s | local img/s | overlap/after |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['task']} | {r['size']} | {r['hr']} | {r['global_batch']} | {r['grad_mib_per_step']:.0f} | "
                     f"{r['overlap']['imgs_per_s']:.2f} | {r['after']['imgs_per_s']:.2f} | {r['local']['imgs_per_s']:.2f} | "
                     f"{r['overlap']['imgs_per_s'] / r['after']['imgs_per_s']:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m src.bench_dist", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2, help="processes (one per GPU on CUDA)")
    ap.add_argument("--tasks", type=lambda v: _csv(v, TASK_NAMES, "--tasks"), default=["cls"], help="comma-separated: cls,seg,det")
    ap.add_argument("--sizes", type=lambda v: _csv(v, SIZES, "--sizes"), default=["default"], help="comma-separated: paper,default")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--batch", type=int, default=None, help="override the global batch size")
    ap.add_argument("--hr", type=int, default=None, help="override the HR side in pixels")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    ap.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = ap.parse_args(argv)
    if args.nproc < 2 or args.steps < 1 or args.warmup < 0:
        ap.error("--nproc must be >= 2, --steps >= 1 and --warmup >= 0")
    return args


ARGV_ENV = "SR4IR_BENCH_DIST_ARGV"  # the arguments, for the processes torchrun starts (its parser would take --nproc)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if distributed.launched() and ARGV_ENV in os.environ:
        argv = json.loads(os.environ[ARGV_ENV])
    args = parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.device_count() < args.nproc:
        print(f"--nproc {args.nproc}: this machine has {torch.cuda.device_count()} GPU(s); NCCL needs one per process",
              file=sys.stderr)
        return 2
    if not distributed.launched():
        env = dict(os.environ, **{ARGV_ENV: json.dumps(argv)})
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // args.nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "src.bench_dist"]
        return subprocess.run(cmd, env=env).returncode
    distributed.init()
    device = torch.device("cuda", distributed.local_rank()) if cuda else torch.device("cpu")
    records = []
    for task_name in args.tasks:
        for size in args.sizes:
            rec = bench_one(task_name, size, device, args)
            records.append(rec)
            if distributed.is_main():
                path = args.out / f"{device.type}_dist{rec['world']}_{task_name}_{size}.json"
                write_json_atomic(path, rec)
                print(f"{task_name}/{size}: overlap {rec['overlap']['imgs_per_s']:.2f}, after {rec['after']['imgs_per_s']:.2f}, "
                      f"local {rec['local']['imgs_per_s']:.2f} img/s -> {path}", file=sys.stderr, flush=True)
    if distributed.is_main():
        text = table(records)
        write_text_atomic(args.out / f"{device.type}_dist{records[0]['world']}_table.md", text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
