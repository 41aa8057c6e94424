"""The report's figures: per task, the results figure (bars over seeds, training curves with a band) and the
qualitative figure (val images through each method, with the recogniser's predictions). The tables and
verdicts they illustrate are in src/report.py."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.methods import METHODS, TABLE_METHODS
from src.report import METRIC_LABELS, method_summary
from src.stats import mean_interval
from src.tasks.seg import IGNORE


def epoch_band(runs: Sequence[Sequence[Mapping[str, Any]]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """One method's training curve over seeds (``runs``: each seed's epoch records): the epochs, and per epoch
    the mean of ``key`` over the seeds that have it and its 95 % Student-t interval (NaN with one seed)."""
    epochs = sorted({e["epoch"] for run in runs for e in run})
    means, lows, highs = [], [], []
    for epoch in epochs:
        values = [float(e[key]) for run in runs for e in run if e["epoch"] == epoch and key in e]
        interval = mean_interval(values) if values else None
        means.append(interval.mean if interval else float("nan"))
        lows.append(interval.low if interval else float("nan"))
        highs.append(interval.high if interval else float("nan"))
    return epochs, means, lows, highs


def plot_results(df: pd.DataFrame, histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], primary: str,
                 out: Path) -> None:
    """Left: the task metric per method, bars at the mean over seeds with its 95 % interval as the error bar
    (one seed: the test-set bootstrap interval when ``df`` has it) and each seed's value as a dot, PSNR
    annotated. Right: the validation metric per epoch, the mean over seeds with its 95 % interval as a band
    (``histories``: method -> each seed's epoch records; no band with one seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = method_summary(df, primary)
    n = int(summary["n"].max()) if len(summary) else 0
    means = summary["mean"].to_numpy(float)
    if n >= 2:
        below = above = np.nan_to_num(summary["ci95"].to_numpy(float))
    else:  # one seed: the bootstrap interval where there is one, else no error bar
        below = np.nan_to_num(means - summary["boot_low"].to_numpy(float))
        above = np.nan_to_num(summary["boot_high"].to_numpy(float) - means)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(summary))
    ax1.bar(x, means, yerr=[below, above], capsize=3, ecolor="#222",
            color=["#888" if m == "h2t" else "#c44" if m == "sr4ir" else "#48a" for m in summary["method"]])
    for i, values in enumerate(summary["per_seed"]):
        ax1.scatter([i] * len(values), values, s=12, color="black", zorder=3)
    top = 0.0
    for i, (v, up, p, values) in enumerate(zip(means, above, summary["psnr"], summary["per_seed"])):
        y = max(v + up, *values)
        top = max(top, y)
        ax1.text(i, y + 0.5, f"{v:.1f}" + ("" if math.isnan(p) else f"\n{p:.1f} dB"), ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(x, summary["label"])
    ax1.set_ylabel(METRIC_LABELS.get(primary, primary))
    ax1.set_ylim(0, max(100.0, top + 12))
    ax1.set_title(f"val split, last epoch: mean ± 95 % CI over {n} seeds" if n >= 2 else "val split, last epoch, one seed")
    for m in TABLE_METHODS:
        runs = [run for run in histories.get(m, []) if run]
        if not runs:
            continue
        epochs, mean, low, high = epoch_band(runs, f"val/{primary}")
        line, = ax2.plot(epochs, mean, marker="o", ms=3, label=METHODS[m].label)
        if len(runs) >= 2:
            ax2.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"val {METRIC_LABELS.get(primary, primary)}")
    ax2.set_title("validation during training" + (f" (mean, 95 % band over {n} seeds)" if n >= 2 else ""))
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)

# Drawing one val image with its prediction, per kind of target (``Task.target_kind``). It lives here, not in
# src/tasks: the task modules are code deps of every training stage, this module only of the report stage.
# Each function shows an (H, W, 3) uint8 image on a matplotlib axis, the prediction drawn on it; ``pred`` and
# ``target`` are one sample's rows of the arrays ``Task.to_numpy`` saved.

def draw_label(ax: Any, image: Any, pred: Any, target: Any, class_names: Sequence[str]) -> None:
    """A class id (classification): the predicted name as the title, green if right, red with the truth if not."""
    ax.imshow(image, interpolation="nearest")
    ok = int(pred) == int(target)
    ax.set_title(class_names[int(pred)] + ("" if ok else f"\n(true: {class_names[int(target)]})"),
                 fontsize=7, color="#1a7f37" if ok else "#c62828")
    ax.set_axis_off()


def draw_mask(ax: Any, image: Any, pred: Any, target: Any, class_names: Sequence[str]) -> None:
    """An (H, W) class map (segmentation; 0 is background, ``IGNORE`` not scored): the predicted classes as a
    translucent overlay, the pixel accuracy as the title."""
    import matplotlib.pyplot as plt

    num_classes = len(class_names) + 1  # + background, as SegmentationTask counts them
    ax.imshow(image, interpolation="nearest")  # at the prediction's size (the report upsamples LR)
    colours = plt.get_cmap("tab10")(np.arange(num_classes) % 10)[:, :3]
    overlay = np.zeros((*pred.shape, 4))
    overlay[..., :3] = colours[pred]
    overlay[..., 3] = np.where(pred > 0, 0.45, 0.0)
    ax.imshow(overlay, interpolation="nearest")
    valid = target != IGNORE
    acc = 100.0 * float((pred[valid] == target[valid]).mean()) if valid.any() else float("nan")
    ax.set_title(f"pixel acc {acc:.0f}%", fontsize=7)
    ax.set_axis_off()


def draw_boxes(ax: Any, image: Any, pred: Any, target: Any, class_names: Sequence[str], score_min: float = 0.5) -> None:
    """(M, 6) box rows [x0, y0, x1, y1, label, score] padded with label -1 (detection): true boxes dashed
    white, predicted boxes scoring at least ``score_min`` coloured by class with name and score."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ax.imshow(image, interpolation="nearest")  # boxes are in this image's pixels (the report upsamples LR)
    colours = plt.get_cmap("tab10")
    for x0, y0, x1, y1, label, _ in target[target[:, 4] >= 0]:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=0.8, ec="white"))
    shown = pred[(pred[:, 4] >= 0) & (pred[:, 5] >= score_min)]
    for x0, y0, x1, y1, label, score in shown:
        c = colours(int(label) % 10)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2, ec=c))
        ax.text(x0, y0, f"{class_names[int(label) - 1]} {score:.2f}", fontsize=4, color="white",
                va="bottom", bbox={"fc": c, "ec": "none", "pad": 0.5})
    ax.set_title(f"{len(shown)} boxes (score >= {score_min})", fontsize=7)
    ax.set_axis_off()


DRAW = {"label": draw_label, "mask": draw_mask, "boxes": draw_boxes}  # by Task.target_kind


QUALITATIVE_COLUMNS = (("LR (L2T)", "l2t", "lr"), ("S→T", "s2t", "view"), ("SR4IR", "sr4ir", "view"), ("HR (H2T)", "h2t", "hr"))


def plot_qualitative(task: Any, samples: Mapping[str, Mapping[str, Any]], out: Path) -> None:
    """The paper's Figure 1 idea: per val image, LR / S→T / SR4IR / HR, each with its recogniser's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draw = DRAW[task.target_kind]
    cols = [c for c in QUALITATIVE_COLUMNS if c[1] in samples]
    n = min(len(samples[c[1]]["target"]) for c in cols)
    names = [str(x) for x in next(iter(samples.values()))["class_names"]]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.9 * len(cols), 2.0 * n), squeeze=False)
    for j, (label, method, key) in enumerate(cols):
        s = samples[method]
        for i in range(n):
            # Predictions live in the recogniser's input frame (HR size): show an LR image at that size.
            image = s[key][i]
            k = s["view"][i].shape[0] // image.shape[0]
            image = image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image
            draw(axes[i][j], image, s["pred"][i], s["target"][i], names)
        axes[0][j].text(0.5, 1.35, label, transform=axes[0][j].transAxes, ha="center", fontsize=10, weight="bold")
    fig.tight_layout()
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)
