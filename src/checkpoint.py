"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the networks, optimisers, schedulers, the epoch and step reached, the history so far,
the partial sums of the epoch in progress and every random stream (global torch/CUDA, NumPy, Python, the
data-order generator as it was at the start of the epoch, the CQMix generator). It is written atomically
(temporary file, then rename) and read with ``torch.load(weights_only=True)``, so it holds only tensors and
plain Python values. A checkpoint written under other params (its ``digest`` differs) is never resumed: it
is moved aside with a message.

Under torchrun only rank 0 writes, reads first and sets a foreign file aside; the other ranks then read
the same file (many machines, ``train.nnodes``: they receive rank 0's copy). ``fit`` adds every rank's random streams (``rng_ranks``), so each rank resumes its own.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from src import distributed
from src.utils import save_torch_atomic

if TYPE_CHECKING:
    from src.steps import Setup

log = logging.getLogger(__name__)


@dataclass
class Checkpointing:
    """Where and how often ``fit`` saves; ``digest`` identifies the params the run was started with."""

    path: Path
    digest: str
    every_steps: int = 0  # also save every N optimiser steps inside an epoch (0: at epoch ends only)
    stop_requested: bool = field(default=False, init=False)  # set by SIGTERM: save at the next step and stop


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_as_tuples(state["python"]))


def _as_tuples(x: Any) -> Any:
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(ckpt: Checkpointing, payload: dict[str, Any]) -> None:
    """Write the checkpoint (rank 0 only; a no-op on the other ranks)."""
    if not distributed.is_main():
        return
    save_torch_atomic(ckpt.path, {"digest": ckpt.digest, "saved_at": time.time(), **payload})


def load(ckpt: Checkpointing) -> dict[str, Any] | None:
    """The saved state if it belongs to these params; a foreign or unreadable one is set aside.

    Collective under torchrun: rank 0 decides, then every rank reads the file rank 0 accepted."""
    if distributed.world_size() == 1:
        return _load(ckpt)
    state = _load(ckpt) if distributed.is_main() else None
    if not distributed.broadcast_object(state is not None):
        return None
    if distributed.many_nodes():  # the file is on node 0's disk only: rank 0 sends its contents
        return distributed.broadcast_object(state)
    # Rank 0 replaces the file only after the next training step, a collective the others have not reached.
    return state if distributed.is_main() else torch.load(ckpt.path, map_location="cpu", weights_only=True)


def _load(ckpt: Checkpointing) -> dict[str, Any] | None:
    if not ckpt.path.is_file():
        return None
    try:
        state = torch.load(ckpt.path, map_location="cpu", weights_only=True)
        digest = state["digest"]
    except Exception as err:  # noqa: BLE001 - a torn or foreign file must never stop a fresh start
        return _set_aside(ckpt, f"unreadable ({type(err).__name__}; truncated or corrupt)")  # not torch's advice
    if digest != ckpt.digest:
        return _set_aside(ckpt, f"written under other params (hash {digest}, now {ckpt.digest})")
    return state


def _set_aside(ckpt: Checkpointing, why: str) -> None:
    aside = ckpt.path.with_name(f"{ckpt.path.stem}.stale-{time.strftime('%Y%m%d-%H%M%S')}{ckpt.path.suffix}")
    ckpt.path.rename(aside)
    log.warning("checkpoint %s %s: not resumed; moved to %s, starting from scratch", ckpt.path, why, aside)
    return None


def discard(ckpt: Checkpointing | None) -> None:
    """Delete the checkpoint once the stage's real outputs are written."""
    if ckpt is not None:
        ckpt.path.unlink(missing_ok=True)


@contextmanager
def stop_on_sigterm(ckpt: Checkpointing | None) -> Iterator[None]:
    """While training, SIGTERM asks ``fit`` to save a checkpoint at the next step boundary and stop."""
    if ckpt is None:
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        ckpt.stop_requested = True
        log.warning("SIGTERM: saving a checkpoint at the next step, then stopping (re-run to resume)")

    try:
        previous = signal.signal(signal.SIGTERM, request_stop)
    except ValueError:  # not the main thread (e.g. an Optuna worker thread): no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------------
# The training state of a run: what ``fit`` saves and restores.


def training_state(s: "Setup", schedulers: Sequence[Any], epoch: int, step: int, sums: dict[str, float], n: int,
                   history: list[dict[str, float]]) -> dict[str, Any]:
    """Everything needed to continue ``s`` at ``step`` of ``epoch``. Under torchrun every rank calls this at
    the same step (a collective): rank 0's file then holds every rank's random streams."""
    mix = s.mix_generator.get_state() if s.mix_generator is not None else None
    streams = distributed.all_gather_object({"rng": rng_state(), "mix_rng": mix}) if distributed.world_size() > 1 else None
    return {
        **({"rng_ranks": streams} if streams is not None else {}),
        "epoch": epoch, "step": step, "sums": dict(sums), "n": n, "history": history,
        "sr": _state_of(s.sr), "rec": _state_of(s.rec), "opt_sr": _state_of(s.opt_sr), "opt_rec": _state_of(s.opt_rec),
        "schedulers": [sched.state_dict() for sched in schedulers],
        "rng": rng_state(), "mix_rng": mix,
    }


def _state_of(obj: Any) -> dict[str, Any] | None:
    return None if obj is None else obj.state_dict()


def restore(s: "Setup", schedulers: Sequence[Any], state: Mapping[str, Any]) -> None:
    """Networks, optimisers and schedulers as ``state`` saved them."""
    for obj, key in ((s.sr, "sr"), (s.rec, "rec"), (s.opt_sr, "opt_sr"), (s.opt_rec, "opt_rec")):
        if obj is not None:
            obj.load_state_dict(state[key])
    for sched, sched_state in zip(schedulers, state["schedulers"], strict=True):
        sched.load_state_dict(sched_state)


def resume_batches(loader: Any, skip: int, state: Mapping[str, Any], s: "Setup") -> Iterator[Any]:
    """The epoch's batches after the first ``skip`` (the sampler already gives this epoch's order), with every
    random stream set as it was when the checkpoint was written."""
    it = iter(loader)
    for _ in range(skip):
        next(it)
    ranks = state.get("rng_ranks") or []
    streams = ranks[distributed.rank()] if len(ranks) == distributed.world_size() > 1 else state  # this rank's own
    set_rng_state(streams["rng"])
    if s.mix_generator is not None and streams["mix_rng"] is not None:
        s.mix_generator.set_state(streams["mix_rng"])
    return it
