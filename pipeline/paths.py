"""Where the stages read and write (mirrored in dvc.yaml; nothing under src/ knows these paths).

Every trained output lives under its seed (``seeds`` in params.yaml: each seed is its own set of stages,
``pretrain_sr@<seed>``, ``train@<task>-<method>-<seed>``, ...): adding a seed adds stages and leaves the
others' outputs where they are."""

from collections.abc import Iterable
from pathlib import Path

RAW = Path("data/raw")
LR = Path("data/lr")
# What the stages after degrade depend on in place of RAW and LR (src/data/manifest.py says why).
MANIFEST = Path("data/manifest.json")
# data/code/<stage>.json: the md5 of every module on a stage's import path, its code dep (src/codedeps.py says why).
CODE = Path("data/code")
REPORTS = Path("reports")
# Training checkpoints: not DVC outputs (DVC deletes outputs before a stage runs), so they survive a crash;
# a stage deletes its own once its outputs are written.
CHECKPOINTS = Path("checkpoints")


def seed_dir(seed: int) -> str:
    return f"seed{seed}"


def sr_pretrained(seed: int) -> Path:
    return Path("models") / seed_dir(seed) / "sr_pretrained.pt"


def pretrain_history(seed: int) -> Path:
    return Path("metrics/train") / seed_dir(seed) / "sr_pretrain.json"


def checkpoint(task: str, method: str, seed: int) -> Path:
    return CHECKPOINTS / seed_dir(seed) / task / f"{method}.pt"


def model_dir(task: str, method: str, seed: int) -> Path:
    return Path("models") / seed_dir(seed) / task / method


def train_history(task: str, method: str, seed: int) -> Path:
    return Path("metrics/train") / seed_dir(seed) / task / f"{method}.json"


def eval_metrics(task: str, method: str, seed: int) -> Path:
    return Path("metrics/eval") / seed_dir(seed) / task / f"{method}.json"


def eval_samples(task: str, method: str, seed: int) -> Path:
    """The first val images with predictions (the report's qualitative figure)."""
    return Path("samples") / seed_dir(seed) / task / f"{method}.npz"


def eval_scores(task: str, method: str, seed: int) -> Path:
    """Per-image scores of the whole val split (the report's bootstrap over val images)."""
    return Path("scores") / seed_dir(seed) / task / f"{method}.npz"


def stage_outputs(tasks: list[str], methods: tuple[str, ...], seeds: Iterable[int]) -> dict[str, list[Path]]:
    """MLflow run name of each stage -> the outputs that identify the run which produced them."""
    outs: dict[str, list[Path]] = {"code": [CODE], "download": [RAW], "degrade": [LR]}
    for seed in seeds:
        outs[f"pretrain_sr/{seed_dir(seed)}"] = [sr_pretrained(seed)]
        for task in tasks:
            for m in methods:
                outs[f"train/{task}/{m}/{seed_dir(seed)}"] = [model_dir(task, m, seed)]
                outs[f"evaluate/{task}/{m}/{seed_dir(seed)}"] = [eval_metrics(task, m, seed)]
    outs["report"] = [REPORTS / "report.md"]
    return outs
