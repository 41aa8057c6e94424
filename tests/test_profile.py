"""Paper profiles (python -m src.profile): every profile validates; apply writes defaults + profile into
params.yaml, keeps its comments, and `dvc repro --dry` then plans the paper's study."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src import profile
from src.config import ConfigError, Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "configs/paper").glob("*.yaml"))


def test_there_is_a_profile_per_task_and_dataset_of_the_paper():
    assert {p.stem for p in PROFILES} == {"seg_voc", "det_voc", "cls_cars", "cls_cub"}


@pytest.mark.parametrize(("path", "scale", "sr"), list(itertools.product(PROFILES, (4, 8), profile.SR_CHOICES)),
                         ids=lambda x: getattr(x, "stem", str(x)))
def test_every_profile_resolves_to_valid_params(path, scale, sr):
    p = parse_params(profile.resolve(path, scale, sr, ROOT / "configs/paper"))
    task = path.stem.split("_")[0]
    assert p.tasks == [task] and p.degrade.scale == scale
    assert p.sr.arch == ("edsr" if sr == "edsr" else "swinir_m") and f"x{scale}" in p.sr.init
    assert p.eval.psnr_crop_border == 8  # the paper's PSNR/LPIPS border
    assert p.data.name == {"seg_voc": "voc", "det_voc": "voc", "cls_cars": "stanford_cars", "cls_cub": "cub200"}[path.stem]
    if sr == "edsr":
        assert (p.sr.n_blocks, p.sr.n_feats) == (16, 64)  # EDSR-baseline
    cfg = p.task_config(task)
    warmup = {"seg": 10, "det": 3, "cls": 20}[task]
    assert p.train.sr4ir.warmup_epochs == warmup and p.train.sr4ir.tdp_weight == 1.0
    assert p.train_epochs(task) == ({"seg": 100, "det": 30, "cls": 200}[task], "train.epochs")  # not the embedded cls.epochs' 8
    assert cfg.optim.name == "sgd"


def test_apply_writes_defaults_plus_profile_and_keeps_comments(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    root = ROOT / "configs/paper"
    diff = profile.apply(root / "seg_voc.yaml", 8, "edsr", params, root)
    written = params.read_text()
    assert "# Every key is validated by src/config.py" in written  # comments stay
    assert "fpn_stages: [4, 7]" in written  # untouched lines stay as they were
    got = parse_params(yaml.safe_load(written))
    assert got == parse_params(profile.resolve(root / "seg_voc.yaml", 8, "edsr", root))
    assert ("seg.loss_weights", {"loss_ce": 1.0}, {"loss_ce": 1.0, "loss_aux": 0.5}) in diff
    assert profile.apply(root / "seg_voc.yaml", 8, "edsr", params, root) == []  # idempotent

    profile.apply(root / "cls_cub.yaml", 4, "swinir", params, root)  # a second profile: nothing of the first survives
    got = parse_params(yaml.safe_load(params.read_text()))
    assert got.seg == Params().seg and got.tasks == ["cls"] and got.sr.arch == "swinir_m"


def test_a_bad_profile_names_the_file_and_key(tmp_path):
    (tmp_path / "sr").mkdir()
    shutil.copy(ROOT / "configs/paper/sr/edsr.yaml", tmp_path / "sr/edsr.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seg:\n  optim: {name: sgd, lr: -1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*seg.optim.lr"):
        profile.resolve(bad, 8, "edsr", tmp_path)
    with pytest.raises(ConfigError, match="no released weights listed for x2"):
        (tmp_path / "sr/edsr.yaml").write_text("sr: {arch: edsr}\ninit: {4: a.pt}\n")
        profile.resolve(ROOT / "configs/paper/seg_voc.yaml", 2, "edsr", tmp_path)
    out = subprocess.run([sys.executable, "-m", "src.profile", "apply", str(tmp_path / "missing.yaml")], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "missing.yaml: profile not found" in out.stderr


@pytest.mark.slow
def test_dvc_repro_dry_plans_the_profiles_study(tmp_path):
    """After `apply`, DVC plans the paper's run: the profile's task only, every stage from the download."""
    from tests.test_pipeline_e2e import SKIP, _dvc, _run

    dest = tmp_path / "repo"
    shutil.copytree(ROOT, dest, ignore=SKIP)
    (dest / "dvc.lock").unlink(missing_ok=True)
    _run(["git", "init", "-q"], dest)
    _run([sys.executable, "-m", "src.profile", "apply", "configs/paper/det_voc.yaml", "--scale", "8", "--sr", "edsr"], dest)
    (seed,) = yaml.safe_load((dest / "params.yaml").read_text())["seeds"]  # the profile's one seed
    assert seed == yaml.safe_load((ROOT / "configs/paper/det_voc.yaml").read_text())["seeds"][0]
    # --dry still hashes each stage's deps, and a never-run study has none: stand-ins for the outputs.
    for d in ("data/raw", "data/lr", "metrics/eval", "metrics/train", "samples", "scores",
              *(f"models/seed{seed}/det/{m}" for m in ("h2t", "l2t", "s2t", "t2s", "joint", "sr4ir"))):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / f"models/seed{seed}/sr_pretrained.pt").write_bytes(b"")
    (dest / "data/manifest.json").write_text("{}\n")
    for script in ("download", "degrade", "pretrain_sr", "train", "evaluate", "report"):
        (dest / "data/code").mkdir(exist_ok=True)
        (dest / f"data/code/{script}.json").write_text("{}\n")
    plan = _dvc("repro", "--dry", cwd=dest)
    stages = set(__import__("re").findall(r"Running stage '([^']+)'", plan))
    assert {"code", "download", "degrade", f"pretrain_sr@{seed}", "report"} <= stages
    assert {f"evaluate@det-{m}-{seed}" for m in ("h2t", "l2t", "s2t", "t2s", "joint", "sr4ir")} <= stages
    assert not any("cls" in s or "seg" in s for s in stages)  # only the profile's task
    assert not any(s.startswith("pretrain_sr@") and s != f"pretrain_sr@{seed}" for s in stages)  # only its seed
    assert f"python -m pipeline train --task det --method sr4ir --seed {seed}" in plan
