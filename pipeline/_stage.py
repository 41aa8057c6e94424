"""What every stage script shares: argument parsing with --help, and errors as one clear line.

A training stage (``run(..., distributed=True)``) with ``train.nproc > 1`` in params.yaml starts itself
again under torchrun (``python -m torch.distributed.run --standalone --nproc_per_node N -m <stage> <args>``;
with ``train.nnodes > 1``, c10d rendezvous at ``train.rdzv_endpoint`` instead of ``--standalone``)
and exits with its processes' exit code; each of those processes joins the process group
(``src.distributed``). With ``train.nproc: 1`` the stage runs in this process: no torchrun start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from src import distributed as dist
from src.config import load_params
from src.errors import ConfigError, DataError, DownloadError, Interrupted

EXIT_DIR = "SR4IR_EXIT_DIR"  # where torchrun's processes leave their exit codes for the launching process


def run(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser, distributed: bool = False) -> None:
    args = parser.parse_args()
    code = 0
    try:
        if distributed and not dist.launched() and (train := load_params().train).world > 1:
            sys.exit(_torchrun(train.nproc, *_nodes(train)))
        if distributed:
            dist.init()  # under torchrun: join the group; otherwise nothing
        # Rank 0 speaks for the group; the others print only errors.
        logging.basicConfig(level=logging.INFO if dist.is_main() else logging.ERROR, format="%(message)s")
        if dist.world_size() > 1:
            logging.info("%s: %d processes (torchrun, %s)", _module(), dist.world_size(), dist.backend())
        main(args)
    except (ConfigError, DataError, FileNotFoundError, DownloadError) as err:  # bad input: names the file, key or URL
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except FloatingPointError as err:  # a non-finite loss: the step and the saved last good state are named
        print(f"error: {err}", file=sys.stderr)
        code = 3
    except Interrupted as err:  # SIGTERM: the checkpoint is saved; the outputs are not written
        if dist.is_main():  # every rank stops at the same step with the same message
            print(f"interrupted: {err}", file=sys.stderr)
        code = 143
    if code:
        if os.environ.get(EXIT_DIR):
            Path(os.environ[EXIT_DIR], f"rank{dist.rank()}").write_text(str(code))
        sys.exit(code)


def _nodes(train) -> tuple[int, int, str]:
    """``train.nnodes``, this machine's node rank and the rendezvous endpoint: params, or torchrun's environment
    variables ``PET_NODE_RANK`` / ``PET_RDZV_ENDPOINT`` where set (one params.yaml for every machine)."""
    if train.nnodes == 1:
        return 1, 0, ""
    node_rank = int(os.environ.get("PET_NODE_RANK", train.node_rank))
    endpoint = os.environ.get("PET_RDZV_ENDPOINT", train.rdzv_endpoint)
    if not 0 <= node_rank < train.nnodes:
        raise ConfigError(f"params.yaml: train.node_rank (or PET_NODE_RANK) {node_rank} must be in 0 .. {train.nnodes - 1}")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"params.yaml: train.nnodes {train.nnodes} needs train.rdzv_endpoint (or PET_RDZV_ENDPOINT) "
                          f"as HOST:PORT, a free port on node 0 that every machine reaches; got {endpoint!r}")
    return train.nnodes, node_rank, endpoint


def _torchrun(nproc: int, nnodes: int = 1, node_rank: int = 0, endpoint: str = "") -> int:
    """Run this stage module under torchrun with ``nproc`` processes (on each of ``nnodes`` machines); return
    their exit code.

    One machine: ``--standalone``. Many: ``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``, the
    same stage started on every machine; ``node_rank`` goes to the processes (``SR4IR_NODE_RANK``), which
    number themselves node by node so that global rank 0, the writer, is on node 0 (``src.distributed``).

    torchrun itself exits with 1 when any process fails; the code a process chose (2 bad input, 3 non-finite
    loss, 143 interrupted) comes back through ``$SR4IR_EXIT_DIR`` (rank 0's first). SIGTERM and SIGINT are
    passed on to torchrun, which passes them on to the processes (SIGTERM: they save a checkpoint and stop).
    """
    where = ["--standalone"] if nnodes == 1 else [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                                                 f"--rdzv-id=sr4ir-{_module()}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}",
           "-m", _module(), *sys.argv[1:]]
    with tempfile.TemporaryDirectory(prefix="sr4ir-exit-") as exits:
        env = dict(os.environ, **{EXIT_DIR: exits})
        if nnodes > 1:
            env[dist.NODE_RANK] = str(node_rank)
            env.pop("PET_NODE_RANK", None)  # torchrun's c10d rendezvous ignores it (and warns): the processes use it
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))  # a share of the cores (torchrun's default: 1)
        proc = subprocess.Popen(cmd, env=env)
        forward = {sig: signal.signal(sig, lambda signum, frame: proc.send_signal(signum)) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = proc.wait()
        finally:
            for sig, handler in forward.items():
                signal.signal(sig, handler)
        if code != 0:
            chosen = sorted(Path(exits).glob("rank*"), key=lambda p: int(p.name[4:]))
            if chosen:
                return int(chosen[0].read_text())
        return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _module() -> str:
    """The running stage module, e.g. ``pipeline.train`` (stages run with ``python -m``)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        raise RuntimeError("train.nproc > 1: run the stage as a module (python -m pipeline.<stage>), as dvc.yaml does")
    return spec.name
