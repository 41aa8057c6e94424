"""Kill a training run at several points, start it again, and get the weights of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.checkpoint import Checkpointing
from src.config import parse_params
from src.experiment import train_method
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
# SR4IR on 16 tiny images, batch 8: 2 steps per epoch, 3 epochs (TDP from epoch 2), flips on so that the
# data pipeline draws from the global RNG too.
RUN = {**TINY, "data": {**TINY["data"], "hflip": True}, "train": {**TINY["train"], "epochs": 3}}

# A child process: train SR4IR with checkpointing; optionally send itself a signal at the K-th step call.
DRIVER = """
import json, logging, os, signal, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from pathlib import Path
import torch
torch.set_num_threads(2)
from src import steps
from src.checkpoint import Checkpointing
from src.config import parse_params
from src.experiment import train_method

cfg = json.loads(sys.argv[1])
raw, lr, ckpt_path, out, kill_at, sig, every = cfg["raw"], cfg["lr"], cfg["ckpt"], cfg["out"], cfg["kill_at"], cfg["sig"], cfg["every"]
step = steps.STEPS["alternate"]
calls = 0
def counted(s, batch, tdp_on):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), getattr(signal, sig))  # SIGKILL: gone now; SIGTERM: stop after this step
    return step(s, batch, tdp_on)
steps.STEPS["alternate"] = counted
params = parse_params(cfg["params"])
ckpt = Checkpointing(Path(ckpt_path), params.digest(), every)
r = train_method(params, "cls", "sr4ir", Path(raw), Path(lr), sr_init=Path(cfg["sr_init"]), checkpoint=ckpt)
torch.save(r.states, out)
"""


def _drive(tmp: Path, data, sr_init: Path, kill_at: int = 0, sig: str = "SIGKILL", every: int = 0, name: str = "out"):
    raw, lr = data
    cfg = {"raw": str(raw), "lr": str(lr), "ckpt": str(tmp / "ckpt.pt"), "out": str(tmp / f"{name}.pt"),
           "kill_at": kill_at, "sig": sig, "every": every, "params": RUN, "sr_init": str(sr_init)}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sr_init(tmp_path_factory, tiny_data) -> Path:
    path = tmp_path_factory.mktemp("sr") / "sr.pt"
    params = parse_params(RUN)
    from src.models.sr import build_sr

    torch.manual_seed(0)
    torch.save(build_sr(params.sr, params.degrade.scale).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_data, sr_init) -> dict:
    tmp = tmp_path_factory.mktemp("ref")
    out = _drive(tmp, tiny_data, sr_init)
    assert out.returncode == 0, out.stderr[-3000:]
    return torch.load(tmp / "out.pt", weights_only=True)


def _same(a: dict, b: dict) -> None:
    for net in ("sr", "rec"):
        for k, v in a[net].items():
            assert torch.equal(v, b[net][k]), f"{net}.{k} differs after resuming"


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, every", [
    (1, 0),  # mid-epoch 1, before any checkpoint: starts again from scratch
    (3, 0),  # first step of epoch 2: resumes after epoch 1
    (4, 0),  # last step of epoch 2 (killed before its update): resumes after epoch 1
    (5, 2),  # mid-epoch 3 with step checkpoints: resumes inside epoch 3
    (6, 1),  # last step of the run, step checkpoints every step
])
def test_sigkill_at_any_point_then_rerun_gives_the_uninterrupted_weights(tmp_path, tiny_data, sr_init, uninterrupted, kill_at, every):
    killed = _drive(tmp_path, tiny_data, sr_init, kill_at=kill_at, every=every)
    assert killed.returncode == -signal.SIGKILL
    resumed = _drive(tmp_path, tiny_data, sr_init, every=every)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if kill_at > 2:
        assert "resuming sr4ir" in resumed.stderr
    _same(uninterrupted, torch.load(tmp_path / "out.pt", weights_only=True))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_mid_epoch_and_the_rerun_resumes_exactly(tmp_path, tiny_data, sr_init, uninterrupted):
    stopped = _drive(tmp_path, tiny_data, sr_init, kill_at=3, sig="SIGTERM")  # during epoch 2's first step
    assert stopped.returncode != 0 and "stopped by SIGTERM at epoch 2, step 1" in stopped.stderr
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 1)
    resumed = _drive(tmp_path, tiny_data, sr_init)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 2, step 1" in resumed.stderr
    _same(uninterrupted, torch.load(tmp_path / "out.pt", weights_only=True))


def test_a_checkpoint_from_other_params_is_set_aside_not_resumed(tmp_path, tiny_data, caplog):
    raw, lr = tiny_data
    params = parse_params({**TINY, "train": {**TINY["train"], "epochs": 2}})
    path = tmp_path / "ckpt.pt"
    train_method(params, "cls", "h2t", raw, lr, checkpoint=Checkpointing(path, params.digest()))
    assert path.is_file()  # the library keeps the last state; the stage deletes it after writing outputs
    other = parse_params({**TINY, "train": {**TINY["train"], "epochs": 2, "h2t": {"task_weight": 0.5}}})
    with caplog.at_level("WARNING"):
        train_method(other, "cls", "h2t", raw, lr, checkpoint=Checkpointing(path, other.digest()))
    assert "written under other params" in caplog.text and "not resumed" in caplog.text
    assert len(list(tmp_path.glob("ckpt.stale-*.pt"))) == 1


def test_a_torn_checkpoint_is_set_aside(tmp_path, tiny_data, caplog):
    raw, lr = tiny_data
    params = parse_params({**TINY, "train": {**TINY["train"], "epochs": 2}})
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"PK\x03\x04 half a zip")
    with caplog.at_level("WARNING"):
        result = train_method(params, "cls", "h2t", raw, lr, checkpoint=Checkpointing(path, params.digest()))
    assert "unreadable" in caplog.text and len(result.history) == 2


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_weights(tmp_path, tiny_data, monkeypatch):
    from src import steps

    raw, lr = tiny_data
    params = parse_params({**TINY, "train": {**TINY["train"], "epochs": 2}})
    real = steps.tdp_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(steps, "tdp_loss", poisoned)  # TDP starts in epoch 2 (warm-up 1)
    path = tmp_path / "ckpt.pt"
    sr = tmp_path / "sr.pt"
    from src.models.sr import build_sr

    torch.save(build_sr(params.sr, params.degrade.scale).state_dict(), sr)
    with pytest.raises(FloatingPointError, match=r"non-finite SR4IR phase-1 loss .*loss_tdp.*at step 1 of sr4ir epoch 2/2"):
        train_method(params, "cls", "sr4ir", raw, lr, sr_init=sr, checkpoint=Checkpointing(path, params.digest()))
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for net in ("sr", "rec") for v in state[net].values() if v.is_floating_point())
