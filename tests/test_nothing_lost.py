"""A failed `make repro` loses nothing: after a finished tiny study, a bad param, a broken dataset folder or a
stage that fails part-way leave every output byte-equal (README "Nothing lost").

Each test works on its own copy of the shared study (conftest ``tiny_study``) and runs `make repro` there
with the running environment (``VENV=``, ``-o`` its stamp: nothing is installed)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
OUTPUTS = ("data", "models", "metrics", "reports", "samples", "scores", "dvc.lock")


def _make_repro(cwd: Path) -> subprocess.CompletedProcess:
    # As a user types it at a shell: not as a sub-make of `make test` (which would print "Entering directory")
    shell = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env = dict(shell, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}")
    stamp = VENV / ".installed"
    return subprocess.run(["make", "-o", str(stamp), "repro", f"VENV={VENV}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _snapshot(project: Path) -> dict[str, str]:
    """md5 of every file of every output (and dvc.lock)."""
    files = {}
    for top in OUTPUTS:
        base = project / top
        for p in sorted([base] if base.is_file() else base.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(project))] = hashlib.md5(p.read_bytes()).hexdigest()
    return files


@pytest.fixture
def study(tiny_study, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(tiny_study, copy, symlinks=True)
    return copy


def _edit_params(project: Path, edit) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _fails_with(project: Path, message: str) -> str:
    before = _snapshot(project)
    assert len(before) > 100  # a finished study: data, models, metrics, samples, the report
    out = _make_repro(project)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert message in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    after = _snapshot(project)
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return out.stdout + out.stderr


@pytest.mark.slow
def test_a_bad_param_fails_make_repro_before_dvc_touches_an_output(study):
    _edit_params(study, lambda p: p["train"].update(epochs=0))
    err = _fails_with(study, "error: params.yaml: train.epochs: Input should be greater than 0")
    assert "Running stage" not in err and err.lstrip().startswith("error: params.yaml")


@pytest.mark.slow
def test_a_misspelt_key_fails_make_repro_even_when_dvc_says_up_to_date(study):
    _edit_params(study, lambda p: p["tune"].update(epohcs=3))  # no stage reads tune.*: DVC sees no change
    out = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=study, capture_output=True, text=True)
    assert "up to date" in out.stdout + out.stderr  # DVC alone would run nothing, and say nothing
    _fails_with(study, "error: params.yaml: tune.epohcs: unknown key")


@pytest.mark.slow
def test_an_empty_params_yaml_fails_make_repro_naming_the_file(study):
    (study / "params.yaml").write_text("")
    err = _fails_with(study, "error: params.yaml: empty")
    assert "Could not find" not in err  # the project's message comes first, not DVC's


@pytest.mark.slow
def test_a_missing_params_yaml_gets_the_projects_message_first(study):
    (study / "params.yaml").unlink()
    err = _fails_with(study, "error: params.yaml: file not found")
    assert "Could not find 'tasks'" not in err


@pytest.mark.slow
def test_a_broken_dataset_folder_fails_make_repro_and_keeps_every_output(study, tmp_path):
    broken = tmp_path / "mine"
    (broken / "train/cat").mkdir(parents=True)  # no val/
    Image.new("RGB", (32, 32)).save(broken / "train/cat/a.png")

    def edit(p):
        p["data"].update(name="folder", folder=str(broken), image_size=32)
        p["tasks"] = ["cls"]

    _edit_params(study, edit)
    _fails_with(study, f"error: {broken / 'val'}: folder missing (data.folder needs train/ and val/)")


@pytest.mark.slow
def test_an_image_that_fails_inside_the_download_stage_leaves_data_raw_restored(study, tmp_path):
    """The check reads headers only; a truncated pixel stream fails in the stage, after DVC removed data/raw:
    the launcher's `dvc checkout` puts it back from DVC's cache, byte-equal."""
    folder = tmp_path / "mine"
    for split in ("train", "val"):
        for k in range(2):
            (folder / split / ("cat", "dog")[k]).mkdir(parents=True)
            arr = np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / split / ("cat", "dog")[k] / "x.png")
    bad = folder / "train/dog/x.png"
    bad.write_bytes(bad.read_bytes()[:200])  # the header survives, the pixels do not

    def edit(p):
        p["data"].update(name="folder", folder=str(folder), image_size=32)
        p["tasks"] = ["cls"]

    _edit_params(study, edit)
    err = _fails_with(study, f"error: {bad}: cannot decode image (truncated or corrupt")
    assert "Running stage 'download'" in err  # it did fail inside the stage, after DVC had removed data/raw
    assert "restoring the cached outputs DVC removed" in err


@pytest.mark.slow
def test_corrupt_weights_fail_the_stage_in_one_line_and_its_persisted_outputs_stay(study):
    """sr.init names a corrupt file: pretrain_sr (a persist stage) fails naming it; its outputs were never removed."""
    (study / "models/official").mkdir(parents=True)
    (study / "models/official/broken.pt").write_bytes(b"PK\x03\x04 not a zip")
    _edit_params(study, lambda p: p["sr"].update(init="models/official/broken.pt"))
    err = _fails_with(study, "error: models/official/broken.pt: cannot be read as weights")
    assert "weights_only" not in err
