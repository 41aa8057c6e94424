"""A real-dataset study through the real DAG: a tiny VOC-format dataset of images of several sizes (the
test_sources fixture, placed extracted in data.cache_dir) with the seg_voc and det_voc paper profiles, their
data protocol kept and their sizes shrunk to seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from src import profile
from tests.test_pipeline_e2e import SKIP, _dvc, _run
from tests.test_sources import _voc_files, _write

ROOT = Path(__file__).resolve().parents[1]
NETS = {  # the profiles' networks, at a size a CPU test can run
    "sr": {"n_blocks": 1, "n_feats": 8, "init": ""},
    "pretrain_sr": {"epochs": 1, "batch_size": 3},
    "seg": {"pretrained_backbone": False},  # DeepLabV3 with its aux head (at 10x lr), as the profile
    "det": {"pretrained_backbone": False, "min_size": 0, "fpn_stages": [4, 7], "fpn_channels": 16,
            "representation_size": 32, "anchor_sizes": [[8], [16], [32]], "rpn_post_nms_top_n_train": 16,
            "rpn_post_nms_top_n_test": 8, "box_batch_size_per_image": 8, "roi_sampling_ratio": 1},
}
SHRINK = {  # each profile's protocol kept (short-side resize, random crops, batch-1 eval at each image's size,
    # aspect-ratio groups, the det warm-up), its sizes and budgets cut down
    "seg_voc": {**NETS, "data": {"image_size": 40, "train_crop": 32, "num_workers": 0},
                "train": {"epochs": 2, "batch_size": 3, "sr4ir": {"warmup_epochs": 1}},
                "eval": {"psnr_crop_border": 2, "n_samples": 2}},
    "det_voc": {**NETS, "data": {"num_workers": 0},
                "train": {"epochs": 3, "batch_size": 3, "sr4ir": {"warmup_epochs": 2}},
                "eval": {"psnr_crop_border": 2, "n_samples": 2}},
}
METRIC = {"seg_voc": ("seg", "miou"), "det_voc": ("det", "map")}


@pytest.mark.slow
@pytest.mark.parametrize("profile_name", ["seg_voc", "det_voc"])
def test_voc_profile_runs_through_dvc_repro(tmp_path, profile_name):
    dest = tmp_path / "repo"
    shutil.copytree(ROOT, dest, ignore=SKIP)
    (dest / "dvc.lock").unlink(missing_ok=True)
    _write(dest / "data/downloads", _voc_files())  # already extracted: no network
    raw = profile._merge(profile.resolve(ROOT / f"configs/paper/{profile_name}.yaml", 4, "edsr", ROOT / "configs/paper"),
                         SHRINK[profile_name])
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _run(["git", "init", "-q"], dest)
    _dvc("repro", cwd=dest, warm=True)  # as make repro: stages forked from the warm server

    task, metric = METRIC[profile_name]
    (seed,) = raw["seeds"]  # the profile's one seed
    classes = json.loads((dest / "data/raw/classes.json").read_text())
    assert len(classes) == 20 and classes[0] == "aeroplane"
    for split in ("train", "val"):  # VOC serves seg and det only: no labels.csv
        assert {p.name for p in (dest / "data/raw" / split).iterdir()} == {"images", "masks", "instances.json", "sources.csv"}
    sizes = {(im["width"], im["height"]) for im in json.loads((dest / "data/raw/val/instances.json").read_text())["images"]}
    assert len(sizes) == 2  # the two val images keep their own shapes
    assert not (dest / "data/lr/train").exists() and len(list((dest / "data/lr/val").glob("*.png"))) == 2
    for m in ("h2t", "l2t", "s2t", "t2s", "joint", "sr4ir"):
        metrics = json.loads((dest / f"metrics/eval/seed{seed}" / task / f"{m}.json").read_text())
        assert 0.0 <= metrics[metric] <= 100.0 and metrics["n_val"] == 2
    report = (dest / "reports/report.md").read_text()
    assert "Dataset **voc**" in report and f"## Task: {task}" in report
    assert "another setting: compare orderings only" in report  # x4 and tiny: not the published x8 setting
    assert {p.name for p in (dest / "metrics/eval").iterdir()} == {f"seed{seed}"}
    assert {p.name for p in (dest / f"metrics/eval/seed{seed}").iterdir()} == {task}
    assert "up to date" in _dvc("status", cwd=dest)  # nothing left to run
