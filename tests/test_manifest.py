"""data/manifest.json: the later stages depend on it in place of data/raw and data/lr, so it must change
exactly when the images do, and every stage that reads the images must list it."""

import json
import os
from pathlib import Path

import pytest
import yaml

from src.codedeps import stage_code
from src.data.manifest import write_manifest
from tests.test_dvc_deps import stage_script

ROOT = Path(__file__).resolve().parents[1]


def _tree(tmp_path: Path) -> dict[str, Path]:
    for rel, data in {"raw/train/images/0.png": b"hr0", "raw/train/labels.csv": b"id,label\n0,3\n",
                      "lr/train/0.png": b"lr0", "lr/val/1.png": b"lr1"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    return {"raw": Path("raw"), "lr": Path("lr")}


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the stages pass paths relative to the repository root
    return _tree(tmp_path)


def _write(out: Path, folders: dict[str, Path]) -> dict:
    returned = write_manifest(out, folders)
    assert json.loads(out.read_text()) == returned
    return returned


def test_manifest_counts_files_and_bytes_of_each_folder(folders):
    m = _write(Path("manifest.json"), folders)
    assert m["raw"]["files"] == 2 and m["raw"]["bytes"] == 3 + 13 and m["raw"]["path"] == "raw"
    assert m["lr"]["files"] == 2 and m["lr"]["bytes"] == 6 and m["raw"]["md5"] != m["lr"]["md5"]


def test_manifest_is_byte_identical_when_the_images_are_rewritten_unchanged(folders):
    out = Path("manifest.json")
    _write(out, folders)
    before = out.read_bytes()
    lr = Path("lr/train/0.png")
    lr.write_bytes(lr.read_bytes())  # a new mtime and, in DVC's eyes, nothing else
    os.utime(lr, (1, 1))
    _write(out, folders)
    assert out.read_bytes() == before


@pytest.mark.parametrize("edit", ["rewrite", "rename", "add", "remove"])
def test_manifest_changes_when_a_file_changes_in_either_folder(folders, edit):
    first = _write(Path("manifest.json"), folders)
    target = Path("lr/val/1.png")
    if edit == "rewrite":
        target.write_bytes(b"lr2")  # same size, other bytes
    elif edit == "rename":
        target.rename(target.with_name("2.png"))
    elif edit == "add":
        target.with_name("3.png").write_bytes(b"lr3")
    else:
        target.unlink()
    second = _write(Path("manifest.json"), folders)
    assert second["lr"]["md5"] != first["lr"]["md5"] and second["raw"] == first["raw"]


def test_manifest_of_a_missing_folder_names_it_and_leaves_the_old_manifest(folders):
    out = Path("manifest.json")
    _write(out, folders)
    before = out.read_bytes()
    with pytest.raises(FileNotFoundError, match="nope: no such folder"):
        write_manifest(out, {"raw": Path("raw"), "lr": Path("nope")})
    assert out.read_bytes() == before


def test_every_stage_that_reads_the_images_depends_on_the_manifest_not_the_folders():
    """A stage reading data/raw or data/lr with neither them nor the manifest as a dependency would never
    re-run when the images change; one listing the folders again would pay DVC's walk of 4,205 files."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    produced = {name: [next(iter(o)) if isinstance(o, dict) else o for o in s.get("outs", [])]
                for name, s in stages.items()}
    assert produced["download"] == ["data/raw"] and produced["degrade"] == ["data/lr", "data/manifest.json"]
    scripts = {name: stage_script(s.get("cmd") or s["do"]["cmd"]) for name, s in stages.items()}
    readers = {name for name, script in scripts.items() if name != "code"
               and "src/data/dataset.py" in stage_code(ROOT, script)}  # the loader: on the stage's import path
    assert readers == {"pretrain_sr", "train", "train_from_sr", "train_t2s", "evaluate"}
    for name in readers:
        deps = stages[name].get("deps") or stages[name]["do"]["deps"]
        assert "data/manifest.json" in deps and not {"data/raw", "data/lr"} & set(deps), name
    assert {"data/raw"} <= set(stages["degrade"]["deps"]) and "data/manifest.json" not in stages["degrade"]["deps"]
