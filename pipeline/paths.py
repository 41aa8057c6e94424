"""Where the stages read and write (mirrored in dvc.yaml; nothing under src/ knows these paths)."""

from pathlib import Path

RAW = Path("data/raw")
LR = Path("data/lr")
# What the stages after degrade depend on in place of RAW and LR (src/data/manifest.py says why).
MANIFEST = Path("data/manifest.json")
SR_PRETRAINED = Path("models/sr_pretrained.pt")
PRETRAIN_HISTORY = Path("metrics/train/sr_pretrain.json")
REPORTS = Path("reports")
# Training checkpoints: not DVC outputs (DVC deletes outputs before a stage runs), so they survive a crash;
# a stage deletes its own once its outputs are written.
CHECKPOINTS = Path("checkpoints")


def checkpoint(task: str, method: str) -> Path:
    return CHECKPOINTS / task / f"{method}.pt"


def model_dir(task: str, method: str) -> Path:
    return Path("models") / task / method


def train_history(task: str, method: str) -> Path:
    return Path("metrics/train") / task / f"{method}.json"


def eval_metrics(task: str, method: str) -> Path:
    return Path("metrics/eval") / task / f"{method}.json"


def eval_samples(task: str, method: str) -> Path:
    return Path("samples") / task / f"{method}.npz"


def stage_outputs(tasks: list[str], methods: tuple[str, ...]) -> dict[str, list[Path]]:
    """MLflow run name of each stage -> the outputs that identify the run which produced them."""
    outs: dict[str, list[Path]] = {"download": [RAW], "degrade": [LR], "pretrain_sr": [SR_PRETRAINED]}
    for task in tasks:
        for m in methods:
            outs[f"train/{task}/{m}"] = [model_dir(task, m)]
            outs[f"evaluate/{task}/{m}"] = [eval_metrics(task, m)]
    outs["report"] = [REPORTS / "report.md"]
    return outs
