"""Many processes (``train.nproc``): torchrun with the Gloo backend on the CPU, 2 processes.

The process tests share two module fixtures: one torchrun run of a driver (the library path: exactness,
ranks in step, gradient averaging, a non-finite loss on one rank) and the two training stages run as DVC
runs them (the stage path: torchrun started by the stage itself, only rank 0 writes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from src.config import ConfigError, parse_params
from src.data.dataset import EpochSampler, PairedDataset, make_loader
from src.experiment import pretrain_sr
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
# 16 train images, global batch 8: 2 steps per epoch, each rank 4 images per step. SR pre-training without
# augmentation (exactly one process's math); SR4IR with flips, so the ranks' own random streams matter.
PRETRAIN = TINY
RUN = {**TINY, "data": {**TINY["data"], "hflip": True}}


def hand_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Two global SR4IR batches of 8 (LR 8 px, HR 32 px, cls labels): the driver's and the hand computation's."""
    g = torch.Generator().manual_seed(123)
    return [(torch.rand(8, 3, 8, 8, generator=g), torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 8, (8,), generator=g))
            for _ in range(2)]


DRIVER = r"""
import json, sys
from pathlib import Path
import torch
from src import distributed, optim, steps
from src.config import parse_params
from src.data.dataset import Batch
from src.experiment import build_setup, pretrain_sr, train_method
from src.methods import METHODS
from src.tasks import build_task
from tests.test_distributed import hand_batches

distributed.init()
rank = distributed.rank()
cfg = json.loads(sys.argv[1])
out, raw, lr = Path(cfg["out"]), Path(cfg["raw"]), Path(cfg["lr"])
params = parse_params(cfg["params"])
report = {"world": distributed.world_size(), "backend": distributed.backend()}

sr = pretrain_sr(parse_params(cfg["pretrain_params"]), raw, lr)  # SR alone, L1 (EDSR: no BatchNorm)
torch.save(sr.states["sr"], out / f"pretrain{rank}.pt")
report["pretrain_history"] = sr.history
run = train_method(params, "cls", "sr4ir", raw, lr, sr_init=out / f"pretrain{rank}.pt")  # BatchNorm, CQMix
torch.save(run.states, out / f"sr4ir{rank}.pt")
report["sr4ir_history"] = run.history

# DDP's math by hand (tests/test_distributed.py hand_sr4ir): two SR4IR steps with TDP on a fixed global batch.
torch.manual_seed(0)
s = build_setup(METHODS["sr4ir"], params, build_task("cls", params, raw), sr_init=out / "pretrain0.pt")
report["wrapped"] = [type(s.sr_ddp).__name__, type(s.rec_ddp).__name__, s.sr_ddp.module is s.sr, s.rec_ddp.module is s.rec]
s.mix_generator.manual_seed(10 + rank)
s.sr.train(), s.rec.train()
for lr_img, hr_img, label in hand_batches():
    half = slice(rank * 4, rank * 4 + 4)
    steps.alternate_step(s, Batch(lr=lr_img[half], hr=hr_img[half], target=label[half]), True)
torch.save({"sr": s.sr.state_dict(), "rec": s.rec.state_dict()}, out / f"hand{rank}.pt")

# A non-finite TDP loss on rank 1 only: both ranks stop at the same step, before any update.
real = steps.tdp_loss
steps.tdp_loss = lambda *x, **k: real(*x, **k) * (float("nan") if rank == 1 else 1.0)
try:
    train_method(params, "cls", "sr4ir", raw, lr, sr_init=out / f"pretrain{rank}.pt")
except FloatingPointError as err:
    report["error"] = str(err)
(out / f"rank{rank}.json").write_text(json.dumps(report))
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    return env | extra


def _ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


# ---------------------------------------------------------------------------------------------------
# Sampler and config (no processes)


def _batches(n: int, batch: int, rank: int, world: int, epoch: int = 1, seed: int = 5) -> list[list[int]]:
    sampler = EpochSampler(n, seed, batch, rank, world)
    sampler.set_epoch(epoch)
    order = list(sampler)
    assert len(order) == len(sampler)
    share = batch // world
    return [order[i:i + share] for i in range(0, len(order), share)]


@pytest.mark.parametrize("n, batch, world", [(16, 8, 2), (24, 12, 3), (8, 8, 4)])
def test_the_ranks_batches_together_are_the_one_process_batches(n, batch, world):
    single = _batches(n, batch, 0, 1)
    ranks = [_batches(n, batch, r, world) for r in range(world)]
    assert all(len(b) == len(single) for b in ranks)
    for k, whole in enumerate(single):
        assert [i for r in range(world) for i in ranks[r][k]] == whole


def test_an_uneven_last_batch_is_padded_by_wrapping_around_the_permutation():
    n, batch, world = 13, 8, 2  # batches of 8 and 5; the 5 split 3 + 3 with one index repeated
    single = _batches(n, batch, 0, 1)
    ranks = [_batches(n, batch, r, world) for r in range(world)]
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [4, 3]
    assert ranks[0][0] + ranks[1][0] == single[0]
    perm = [i for b in single for i in b]
    assert ranks[0][1] + ranks[1][1] == single[1] + perm[:1]
    assert sorted({i for r in ranks for b in r for i in b}) == list(range(n))  # every sample seen


def test_one_process_keeps_the_order_of_before():
    for epoch in (0, 1, 7):
        sampler = EpochSampler(21, 3)
        sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(3 * 1_000_003 + epoch)
        assert list(sampler) == torch.randperm(21, generator=g).tolist() and len(sampler) == 21
        assert torch.equal(sampler.loader_generator.get_state(), torch.Generator().manual_seed(4 * 1_000_003 + epoch).get_state())


def test_a_rank_loader_yields_its_share_of_every_global_batch(tiny_data):
    raw, lr = tiny_data
    ds = PairedDataset(raw, lr, "train", None)
    loader = make_loader(ds, 8, True, 0, seed=0, rank=1, world=2)
    assert [b.hr.shape[0] for b in loader] == [4, 4] and len(loader) == 2
    assert make_loader(ds, 8, False, 0, rank=1, world=2).batch_size == 8  # evaluation is not split


@pytest.mark.parametrize("override, key", [
    ({"train": {"nproc": 3}}, "train.batch_size (32) must be divisible by train.nproc (3)"),
    ({"train": {"nproc": 4}, "pretrain_sr": {"batch_size": 6}}, "pretrain_sr.batch_size (6) must be divisible by train.nproc (4)"),
    ({"train": {"nproc": 0}}, "train.nproc: Input should be greater than 0"),
    ({"train": {"nproc": 16}}, "det.batch_size (8) must be divisible by train.nproc (16)"),  # a task's own batch
])
def test_a_batch_that_does_not_split_over_the_processes_is_a_config_error(override, key):
    with pytest.raises(ConfigError, match=r"params\.yaml: .*" + key.replace("(", r"\(").replace(")", r"\)")):
        parse_params(override, "params.yaml")
    assert parse_params({"train": {"nproc": 4}}).train.nproc == 4  # 32 / 4


def test_sync_bn_on_a_cpu_with_many_processes_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"params\.yaml: .*train\.sync_bn needs GPUs .*device is cpu"):
        parse_params({"device": "cpu", "train": {"nproc": 2, "sync_bn": True}}, "params.yaml")
    assert parse_params({"device": "cpu", "train": {"sync_bn": True}}).train.sync_bn  # one process: nothing to sync
    assert parse_params({"device": "auto", "train": {"nproc": 2, "sync_bn": True}}).train.sync_bn  # decided at run time


@pytest.mark.parametrize("task", ["cls", "seg", "det"])
def test_sync_bn_swaps_every_batchnorm_and_keeps_the_weights_and_their_keys(task, tiny_data, monkeypatch):
    from src import distributed
    from src.tasks import build_task

    params = parse_params({**TINY, "train": {**TINY["train"], "sync_bn": True}})
    rec = build_task(task, params, tiny_data[0]).build_model()
    assert distributed.sync_batchnorm(rec, torch.device("cpu")) is rec  # one process: unchanged, no error
    bns = [m for m in rec.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns, f"{task}: the default recogniser has BatchNorm"
    before, tensors = rec.state_dict(), {id(t) for t in (*rec.parameters(), *rec.buffers())}
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match=r"train\.sync_bn needs GPUs .*device is cpu"):
        distributed.sync_batchnorm(rec, torch.device("cpu"))
    synced = distributed.sync_batchnorm(rec, torch.device("cuda"))  # only swaps modules: runs without a GPU
    assert [m for m in synced.modules() if isinstance(m, torch.nn.BatchNorm2d)] == []
    syncs = [m for m in synced.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(syncs) == len(bns) and [m.momentum for m in syncs] == [m.momentum for m in bns]  # seg/det bn_momentum kept
    assert {id(t) for t in (*synced.parameters(), *synced.buffers())} == tensors  # the optimiser's tensors, unchanged
    after = synced.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    build_task(task, params, tiny_data[0]).build_model().load_state_dict(after, strict=True)  # what evaluate loads


def test_the_training_setup_converts_only_when_asked_and_names_the_key_on_a_cpu(tiny_data, monkeypatch):
    from src import distributed
    from src.experiment import build_setup
    from src.methods import METHODS
    from src.tasks import build_task

    params = parse_params({**TINY, "train": {**TINY["train"], "sync_bn": True}})
    task = build_task("cls", params, tiny_data[0])
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "ddp", lambda net, device: None)  # no process group here to wrap in
    with pytest.raises(ValueError, match=r"train\.sync_bn"):
        build_setup(METHODS["h2t"], params, task)
    plain = build_setup(METHODS["h2t"], parse_params(TINY), task)  # sync_bn off: plain BatchNorm under torchrun
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.rec.modules())


# ---------------------------------------------------------------------------------------------------
# The library under torchrun


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory, tiny_data) -> dict:
    out = tmp_path_factory.mktemp("ranks")
    raw, lr = tiny_data
    script = out / "driver.py"
    script.write_text(DRIVER)
    cfg = {"out": str(out), "raw": str(raw), "lr": str(lr), "params": RUN, "pretrain_params": PRETRAIN}
    _ok(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                        json.dumps(cfg)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300))
    return {"out": out, "ranks": [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]}


@pytest.mark.slow
def test_two_processes_pretrain_the_same_sr_weights_as_one(torchrun, tiny_data):
    raw, lr = tiny_data
    one = pretrain_sr(parse_params(PRETRAIN), raw, lr)  # this process: no process group
    assert [r["world"] for r in torchrun["ranks"]] == [2, 2] and torchrun["ranks"][0]["backend"] == "gloo"
    two = torch.load(torchrun["out"] / "pretrain0.pt", weights_only=True)
    diff = max((one.states["sr"][k] - v).abs().max().item() for k, v in two.items())
    assert diff < 1e-5, diff
    h1, h2 = one.history[-1], torchrun["ranks"][0]["pretrain_history"][-1]
    assert h2["train/loss_pix"] == pytest.approx(h1["train/loss_pix"], rel=1e-5)  # the global mean, not rank 0's
    assert h2["val/psnr"] == pytest.approx(h1["val/psnr"], abs=1e-3)


@pytest.mark.slow
def test_the_ranks_stay_in_step_and_agree_on_every_record(torchrun):
    out = torchrun["out"]
    for stage in ("pretrain", "sr4ir"):
        a, b = (torch.load(out / f"{stage}{r}.pt", weights_only=True) for r in range(2))
        if stage == "pretrain":
            a, b = {"sr": a}, {"sr": b}
        for net in a:  # parameters; BatchNorm buffers are rank 0's (DDP: rank 1's own updates since its last forward)
            for k, v in a[net].items():
                assert k.endswith(_BUFFERS) or torch.equal(v, b[net][k]), f"{stage} {net}.{k} differs between the ranks"
    r0, r1 = torchrun["ranks"]
    strip = lambda h: [{k: v for k, v in rec.items() if not k.startswith("time/")} for rec in h]  # noqa: E731
    assert strip(r0["sr4ir_history"]) == strip(r1["sr4ir_history"])
    assert len(r0["sr4ir_history"]) == 2 and "val/top1" in r0["sr4ir_history"][-1]


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def hand_sr4ir(params, raw: Path, sr_init: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Two SR4IR steps of 2 processes (4 images each) in this one process, written out with DDP's documented
    math: every update uses the mean of the two ranks' gradients; BatchNorm buffers are rank 0's
    (``broadcast_buffers=True``: rank 0's at the start of every forward, so rank 1's forwards, in train mode,
    leave no trace); each rank draws its CQMix masks from its own stream; the phase-1 critic is rank 0's."""
    import torch.nn.functional as F

    from src.cqmix import cqmix
    from src.experiment import build_setup
    from src.losses import tdp_loss
    from src.methods import METHODS
    from src.tasks import build_task
    from src.tasks.base import weighted_sum

    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same float sums, bit for bit
    torch.manual_seed(0)
    s = build_setup(METHODS["sr4ir"], params, build_task("cls", params, raw), sr_init=sr_init)
    assert s.sr_ddp is None and s.rec_ddp is None  # one process: the bare networks
    cfg, gens = s.loss, [torch.Generator().manual_seed(10 + r) for r in range(2)]
    assert cfg.recompute_sr_phase2 and not cfg.phase2_batched and not s.tdp_batched
    s.sr.train(), s.rec.train()

    def mean_step(opt, losses):  # backward each rank's loss on its own, then step with the mean gradient
        params = [p for g in opt.param_groups for p in g["params"]]
        grads = []
        for r, loss in enumerate(losses):
            kept = [b.clone() for b in s.rec.buffers()]
            opt.zero_grad(set_to_none=True)
            loss().backward()
            grads.append([p.grad.clone() for p in params])
            if r == 1:  # rank 1's running-statistics updates are overwritten by rank 0's at the next DDP forward
                for b, k in zip(s.rec.buffers(), kept):
                    b.copy_(k)
        for p, g0, g1 in zip(params, *grads):
            p.grad = (g0 + g1) / 2
        opt.step()

    for lr_img, hr_img, label in hand_batches():
        halves = [(lr_img[r * 4:r * 4 + 4], hr_img[r * 4:r * 4 + 4], label[r * 4:r * 4 + 4]) for r in range(2)]

        def phase1(lr, hr, _y):
            sr_out = s.sr(lr)
            with s.task.frozen(s.rec):  # rank 0's critic on both ranks
                with torch.no_grad():
                    f_hr = s.task.features(s.rec, hr)
                f_sr = s.task.features(s.rec, sr_out)
            return cfg.pix_weight * F.l1_loss(sr_out, hr) + cfg.tdp_weight * tdp_loss(f_sr, f_hr, s.tdp_layers)

        def phase2(r, lr, hr, y):
            with torch.no_grad():
                sr_out = s.sr(lr)
            mixed = cqmix(sr_out, hr, s.cqmix_grid, cfg.cqmix_p, gens[r])
            task = lambda x: weighted_sum(s.task.losses(s.rec, x, y), s.task_loss_weights)  # noqa: E731
            return cfg.sr_weight * task(sr_out) + cfg.hr_weight * task(hr) + cfg.cqmix_weight * task(mixed)

        mean_step(s.opt_sr, [lambda h=h: phase1(*h) for h in halves])
        mean_step(s.opt_rec, [lambda r=r, h=h: phase2(r, *h) for r, h in enumerate(halves)])
    return {"sr": s.sr.state_dict(), "rec": s.rec.state_dict()}


@pytest.mark.slow
def test_two_sr4ir_steps_under_ddp_give_the_mean_gradient_updates_computed_by_hand(torchrun, tiny_data):
    out = torchrun["out"]
    for report in torchrun["ranks"]:  # each trained network in DDP; setup.sr/rec are its .module
        assert report["wrapped"] == ["DistributedDataParallel", "DistributedDataParallel", True, True]
    ddp = torch.load(out / "hand0.pt", weights_only=True)
    hand = hand_sr4ir(parse_params(RUN), tiny_data[0], out / "pretrain0.pt")
    for net in ("sr", "rec"):
        assert ddp[net].keys() == hand[net].keys()  # the bare networks' keys: no "module." prefix
        diff = max((ddp[net][k].double() - v.double()).abs().max().item() for k, v in hand[net].items())
        assert diff < 1e-6, f"{net}: {diff}"  # 0.0 on the development machine: (g0 + g1) / 2 is DDP's g0 / 2 + g1 / 2
    one = torch.load(out / "hand1.pt", weights_only=True)  # rank 1: the same parameters, bit for bit
    for net in ("sr", "rec"):
        for k, v in ddp[net].items():
            assert k.endswith(_BUFFERS) or torch.equal(v, one[net][k]), f"{net}.{k} differs between the ranks"


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_both_before_any_update(torchrun):
    r0, r1 = torchrun["ranks"]
    assert "non-finite SR4IR phase-1 loss in 1 of 2 processes, at step 1 of sr4ir epoch 2/2" in r0["error"]
    assert "loss_tdp=nan" in r1["error"] and "at step 1 of sr4ir epoch 2/2" in r1["error"]


# ---------------------------------------------------------------------------------------------------
# The stages, as `dvc repro` runs them


def _stage_dir(root: Path, data: tuple[Path, Path], nproc: int) -> Path:
    work = root / f"nproc{nproc}"
    (work / "data").mkdir(parents=True)
    (work / "data/raw").symlink_to(data[0])
    (work / "data/lr").symlink_to(data[1])
    params = {**TINY, "train": {**TINY["train"], "nproc": nproc}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def _stage(work: Path, *args: str) -> subprocess.CompletedProcess:
    return _ok(subprocess.run([sys.executable, "-m", *args], cwd=work, capture_output=True, text=True, timeout=300,
                              env=_env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")))


@pytest.fixture(scope="module")
def stages(tmp_path_factory, tiny_data) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("stages")
    two = _stage_dir(root, tiny_data, 2)
    logs = _stage(two, "pipeline.pretrain_sr", "--seed", "0").stderr
    logs += _stage(two, "pipeline.train", "--task", "cls", "--method", "sr4ir", "--seed", "0").stderr
    (two / "stderr.txt").write_text(logs)
    one = _stage_dir(root, tiny_data, 1)
    (one / "models/seed0").mkdir(parents=True)
    (one / "models/seed0/sr_pretrained.pt").write_bytes((two / "models/seed0/sr_pretrained.pt").read_bytes())
    _stage(one, "pipeline.train", "--task", "cls", "--method", "sr4ir", "--seed", "0")
    return {1: one, 2: two}


@pytest.mark.slow
def test_the_stages_run_under_torchrun_and_write_what_one_process_writes(stages):
    one, two = stages[1], stages[2]
    logs = (two / "stderr.txt").read_text()
    for stage in ("pipeline.pretrain_sr", "pipeline.train"):
        assert logs.count(f"{stage}: 2 processes (torchrun, gloo)") == 1  # rank 0 alone logs
    assert logs.count("pretrain_sr seed 0: val PSNR") == 1 and logs.count("train cls/sr4ir seed 0:") == 1
    a, b = (json.loads((w / "metrics/train/seed0/cls/sr4ir.json").read_text()) for w in (one, two))
    assert a.keys() == b.keys() and a["skipped"] == b["skipped"]
    assert [sorted(rec) for rec in a["epochs"]] == [sorted(rec) for rec in b["epochs"]]
    assert [rec["epoch"] for rec in b["epochs"]] == [1, 2]
    assert sorted(p.name for p in (two / "models/seed0/cls/sr4ir").iterdir()) == ["rec.pt", "sr.pt"]
    assert (two / "models/seed0/sr_pretrained.pt").is_file() and (two / "metrics/train/seed0/sr_pretrain.json").is_file()


@pytest.mark.slow
def test_only_rank_0_writes_and_tracks(stages):
    from mlflow.tracking import MlflowClient

    two = stages[2]
    client = MlflowClient(f"sqlite:///{two / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sr4ir").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["pretrain_sr/seed0", "train/cls/sr4ir/seed0"]  # one run per stage
    assert all(r.info.status == "FINISHED" and r.data.params["train.nproc"] == "2" for r in runs)
    assert [m.step for m in client.get_metric_history(
        next(r.info.run_id for r in runs if r.info.run_name == "train/cls/sr4ir/seed0"), "val/top1")] == [1, 2]
    stray = [p for p in two.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert stray == []  # no atomic-write leftovers from a second writer
    assert [p for p in (two / "checkpoints").rglob("*") if p.is_file()] == []  # removed after the outputs


@pytest.mark.slow
def test_two_nodes_train_the_same_weights_as_one_node_with_two_processes(stages, tmp_path, tiny_data):
    """Two "machines" on 127.0.0.1, each its own folder, params.yaml and launcher (one process each, Gloo,
    c10d rendezvous): node 0 writes what one node with two processes wrote; node 1 writes nothing."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nodes = []
    for node in (1, 0):  # node 1 starts first: torchrun's rendezvous would make it rank 0 (lower pid); node_rank decides
        work = _stage_dir(tmp_path / f"node{node}", tiny_data, 1)
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["train"] |= {"nnodes": 2, "rdzv_endpoint": "127.0.0.1:1"}  # the environment overrides the endpoint
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = _env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", PET_NODE_RANK=str(node),
                   PET_RDZV_ENDPOINT=f"127.0.0.1:{port}")
        nodes.append((work, subprocess.Popen([sys.executable, "-m", "pipeline.pretrain_sr", "--seed", "0"], cwd=work, env=env,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for work, proc in nodes:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
        (work / "stderr.txt").write_text(err)
    node1, node0 = (work for work, _ in nodes)
    assert "pipeline.pretrain_sr: 2 processes (torchrun, gloo)" in (node0 / "stderr.txt").read_text()
    two_nodes = torch.load(node0 / "models/seed0/sr_pretrained.pt", weights_only=True)
    one_node = torch.load(stages[2] / "models/seed0/sr_pretrained.pt", weights_only=True)
    assert two_nodes.keys() == one_node.keys()
    assert max((two_nodes[k] - v).abs().max().item() for k, v in one_node.items()) < 1e-6
    assert not (node1 / "models").exists() and not (node1 / "metrics").exists()  # rank 0 alone writes, on node 0


# ---------------------------------------------------------------------------------------------------
# CUDA: run by scripts/gpu_check.sh (pytest -m gpu). Two ranks share the one GPU through Gloo, which takes
# CUDA tensors (NCCL needs a GPU per rank): the GPU paths of the library, not NCCL's speed.

GPU_DRIVER = r"""
import copy, json, sys
from pathlib import Path
import torch
import torch.distributed as dist
from src import distributed, optim, steps

dist.init_process_group("gloo")
rank, dev = dist.get_rank(), torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
report = {}

# DDP on CUDA through optim.optimizer_step: one SGD step on each rank's half equals one on the whole batch.
torch.manual_seed(0)
net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(6)]).to(dev)
whole = copy.deepcopy(net)
x = torch.randn(16, 256, generator=torch.Generator().manual_seed(7)).to(dev)
half = x[rank * 8:(rank + 1) * 8]
opt = torch.optim.SGD(net.parameters(), lr=0.5)
wrapped = distributed.ddp(net, dev)
optim.optimizer_step([opt], wrapped(half).square().mean(), "test loss")
whole_opt = torch.optim.SGD(whole.parameters(), lr=0.5)
whole(x).square().mean().backward()
whole_opt.step()
report["overlapped"] = type(wrapped).__name__ == "DistributedDataParallel"
report["step_diff"] = max((a - b).abs().max().item() for a, b in zip(net.parameters(), whole.parameters()))

# SyncBatchNorm: each rank's half normalised with the whole batch's statistics, running stats included.
torch.manual_seed(1)
bn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).to(dev)
images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2)).to(dev)
ref = copy.deepcopy(bn).train()
expected = ref(images)[rank * 4:(rank + 1) * 4]
synced = distributed.sync_batchnorm(copy.deepcopy(bn), dev).train()
out = synced(images[rank * 4:(rank + 1) * 4])
out.sum().backward()  # the backward's all_reduce runs too
report["syncbn"] = isinstance(synced[1], torch.nn.SyncBatchNorm)
report["syncbn_diff"] = (out - expected).abs().max().item()
report["running_diff"] = (synced[1].running_var - ref[1].running_var).abs().max().item()
Path(sys.argv[1], f"gpu{rank}.json").write_text(json.dumps(report))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_overlapped_averaging_and_sync_batchnorm_match_one_process(tmp_path):
    script = tmp_path / "gpu_driver.py"
    script.write_text(GPU_DRIVER)
    _ok(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                        str(tmp_path)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240))
    for rank in range(2):
        r = json.loads((tmp_path / f"gpu{rank}.json").read_text())
        assert r["overlapped"], "the network was not wrapped in DDP"
        assert r["step_diff"] < 1e-5, r
        assert r["syncbn"] and r["syncbn_diff"] < 1e-4 and r["running_diff"] < 1e-5, r
