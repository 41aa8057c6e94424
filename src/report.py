"""The study's report: per task, the paper-style table (task metric, PSNR and LPIPS per method), figures,
and a comparison with the ordering of the paper's published numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.config import Params
from src.methods import METHODS, TABLE_METHODS
from src.tasks.seg import IGNORE

# Published numbers (shared/SR4IR_METHOD.md section 13.1: the released x8 EDSR-baseline checkpoints), by
# setting (task, data.name, degrade.scale, sr.arch). Nothing else is published in the sources (section
# 13.2), so any other setting is compared with its task's x8 EDSR numbers, for orderings only.
PUBLISHED = {
    ("seg", "voc", 8, "edsr"): {
        "dataset": "VOC2012, x8, EDSR-baseline",
        "values": {"h2t": 63.3, "l2t": 49.3, "s2t": 52.3, "t2s": 49.2, "joint": 50.0, "sr4ir": 55.0},
        "lpips": {"h2t": 0.0, "l2t": 0.476, "s2t": 0.407, "t2s": 0.461, "joint": 0.480, "sr4ir": 0.380}},
    ("det", "voc", 8, "edsr"): {
        "dataset": "VOC2012, x8, EDSR-baseline",
        "values": {"h2t": 36.7, "l2t": 18.9, "s2t": 21.9, "t2s": 15.5, "joint": 20.3, "sr4ir": 25.5},
        "lpips": {"h2t": 0.0, "l2t": 0.559, "s2t": 0.494, "t2s": 0.476, "joint": 0.506, "sr4ir": 0.416}},
    ("cls", "stanford_cars", 8, "edsr"): {
        "dataset": "StanfordCars, x8, EDSR-baseline",
        "values": {"h2t": 86.4, "l2t": 61.0, "s2t": 68.3, "t2s": 56.9, "joint": 65.2, "sr4ir": 71.4},
        "lpips": {"h2t": 0.0, "l2t": 0.478, "s2t": 0.328, "t2s": 0.448, "joint": 0.378, "sr4ir": 0.326}},
}
PAPER = {task: ref for (task, *_), ref in PUBLISHED.items()}  # each task's published setting


def paper_reference(task: str, params: Params | None = None) -> tuple[dict[str, Any], bool]:
    """The published numbers to print beside ours, and whether they are for this very setting."""
    if params is not None:
        key = (task, params.data.name, params.degrade.scale, params.sr.arch)
        if key in PUBLISHED:
            return PUBLISHED[key], True
    return PAPER.get(task, {}), False


def paper_label(task: str, params: Params | None) -> str:
    ref, same = paper_reference(task, params)
    if not ref:
        return "n/a"
    return ref["dataset"] + ("" if same else "; another setting: compare orderings only")


METRIC_LABELS = {"top1": "top-1 (%)", "miou": "mIoU (%)", "map": "mAP@[.5:.95] (%)"}


def results_table(task: str, metrics: Mapping[str, Mapping[str, Any]], primary: str,
                  params: Params | None = None) -> pd.DataFrame:
    """Rows = methods in the paper's order; columns = task metric, PSNR (dB), LPIPS, and the paper's values
    (of this setting when published, else of the task's published setting: see ``paper_reference``).

    ``lpips_note`` holds why a method that should have LPIPS has none (the evaluate stage's
    ``lpips_unavailable``); it is empty for H2T, which has neither PSNR nor LPIPS by definition."""
    ref, same = paper_reference(task, params)
    rows = []
    for m in TABLE_METHODS:
        if m not in metrics:
            continue
        r = metrics[m]
        rows.append({
            "task": task,
            "method": m,
            "label": METHODS[m].label,
            primary: r.get(primary, float("nan")),
            "psnr": r.get("psnr", float("nan")),  # H2T sees HR: no PSNR
            "lpips": r.get("lpips", float("nan")),  # ... and no LPIPS
            "lpips_note": "" if m == "h2t" or "lpips" in r else
                          r.get("lpips_unavailable", "not in this method's eval metrics (re-run its evaluate stage)"),
            "paper_" + primary: ref.get("values", {}).get(m, float("nan")),
            "paper_lpips": ref.get("lpips", {}).get(m, float("nan")) if same and m != "h2t" else float("nan"),
        })
    return pd.DataFrame(rows)


def ordering_check(df: pd.DataFrame, primary: str) -> list[str]:
    """Plain statements: which of the paper's orderings between methods hold here."""
    ours = dict(zip(df["method"], df[primary]))
    paper = dict(zip(df["method"], df["paper_" + primary]))
    pairs = [(a, b) for i, a in enumerate(TABLE_METHODS) for b in TABLE_METHODS[i + 1:] if a in ours and b in ours]
    lines, agree, total = [], 0, 0
    for a, b in pairs:
        if any(math.isnan(x) for x in (ours[a], ours[b], paper[a], paper[b])):
            continue
        total += 1
        same = (ours[a] > ours[b]) == (paper[a] > paper[b]) and ours[a] != ours[b]
        agree += same
        if not same:
            rel = ">" if paper[a] > paper[b] else "<"
            how = f"both {ours[a]:.1f}" if ours[a] == ours[b] else \
                f"{METHODS[a].label} {ours[a]:.1f} vs {METHODS[b].label} {ours[b]:.1f}"
            lines.append(f"- differs: the paper has {METHODS[a].label} {rel} {METHODS[b].label}; here {how}")
    if total:
        lines.insert(0, f"- {agree} of {total} pairwise orderings of the paper's methods hold here.")
    if "sr4ir" in ours and "s2t" in ours:
        gap = ours["sr4ir"] - ours["s2t"]
        lines.append(f"- SR4IR − S→T: {gap:+.1f} points (paper: {paper['sr4ir'] - paper['s2t']:+.1f}).")
    return lines


def fmt_number(x: float | None, digits: int = 1, missing: str = "—") -> str:
    """A table cell: ``x`` with ``digits`` decimals, or ``missing`` for None/NaN."""
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def superscript(i: int) -> str:
    """A footnote mark: 12 -> ¹²."""
    return "".join("⁰¹²³⁴⁵⁶⁷⁸⁹"[int(d)] for d in str(i))


def lpips_cells(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The LPIPS column as text, and its footnotes: "n/a" plus a footnote number where it could not be
    computed (each distinct reason once), "—" for H2T."""
    notes: list[str] = []
    cells = []
    for _, r in df.iterrows():
        note = r.get("lpips_note")
        if isinstance(note, str) and note:
            if note not in notes:
                notes.append(note)
            cells.append(f"n/a{superscript(notes.index(note) + 1)}")
        else:
            cells.append(fmt_number(r.get("lpips", float("nan")), 3))
    return cells, [f"{superscript(i + 1)} LPIPS not computed: {n}" for i, n in enumerate(notes)]


def markdown_table(df: pd.DataFrame, primary: str, paper_name: str) -> str:
    head = (f"| Method | {METRIC_LABELS.get(primary, primary)} ↑ | PSNR (dB) ↑ | LPIPS ↓ | paper {primary} | paper LPIPS |"
            f"\n|---|---:|---:|---:|---:|---:|")
    lines = [f"Paper columns: {paper_name}.", "", head]
    lpips, notes = lpips_cells(df)
    best = df.loc[df["method"] != "h2t", primary].max() if len(df) else float("nan")
    for i, (_, r) in enumerate(df.iterrows()):
        val = fmt_number(r[primary])
        if r["method"] != "h2t" and r[primary] == best:
            val = f"**{val}**"
        lines.append(f"| {r['label']} | {val} | {fmt_number(r['psnr'], 2)} | {lpips[i]} | {fmt_number(r['paper_' + primary])} "
                     f"| {fmt_number(r.get('paper_lpips', float('nan')), 3)} |")
    if notes:
        lines += ["", *(f"{n}  " for n in notes)]
    return "\n".join(lines)


def plot_results(df: pd.DataFrame, histories: Mapping[str, list[dict]], primary: str, out: Path) -> None:
    """Left: the task metric per method (bars, PSNR annotated); right: validation metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(df["label"], df[primary], color=["#888" if m == "h2t" else "#c44" if m == "sr4ir" else "#48a" for m in df["method"]])
    for i, (v, p) in enumerate(zip(df[primary], df["psnr"])):
        ax1.text(i, v + 0.5, f"{v:.1f}" + ("" if math.isnan(p) else f"\n{p:.1f} dB"), ha="center", va="bottom", fontsize=8)
    ax1.set_ylabel(METRIC_LABELS.get(primary, primary))
    ax1.set_ylim(0, max(100.0, float(df[primary].max()) + 12))
    ax1.set_title("val split, last epoch")
    for m in TABLE_METHODS:
        h = histories.get(m)
        if h:
            ax2.plot([e["epoch"] for e in h], [e.get(f"val/{primary}", float("nan")) for e in h], marker="o", ms=3, label=METHODS[m].label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"val {METRIC_LABELS.get(primary, primary)}")
    ax2.set_title("validation during training")
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


def stage_times_table(times: Mapping[str, float]) -> str:
    lines = ["| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in times.items()]
    return "\n".join(lines)


def _split_sizes(p: Params) -> str:
    if p.data.name == "synthetic":
        return f"{p.data.synthetic.num_train} train / {p.data.synthetic.num_val} val images, "
    return ""  # a real dataset's sizes are in its download stage's MLflow run and each train history


def _sr_name(p: Params) -> str:
    name = f"{p.sr.arch} {p.sr.n_blocks}x{p.sr.n_feats}" if p.sr.arch == "edsr" else p.sr.arch
    return name + (f" from {Path(p.sr.init).name}" if p.sr.init else "")


def _hr_sizes(p: Params) -> str:
    """How the HR images are sized: one square side, or the paper's protocol (short side, crops)."""
    d = p.data
    if not d.variable_size:
        text = f"{d.hr_size} px HR"
    else:
        text = f"HR short side {d.image_size} px" if d.image_size else "HR at the source size"
    crops = [f"{what} crop {n} px" for what, n in (("random train", d.train_crop), ("centre eval", d.eval_crop)) if n]
    return ", ".join([text, *crops])


def _intro(p: Params) -> list[str]:
    return [
        f"Dataset **{p.data.name}** ({_split_sizes(p)}{_hr_sizes(p)}), scale **x{p.degrade.scale}** (bicubic, antialias={p.degrade.antialias}), "
        f"SR **{_sr_name(p)}**, {p.train.epochs} epochs per method "
        f"(SR pre-training {p.pretrain_sr.epochs}; SR4IR warm-up {p.train.sr4ir.warmup_epochs}), "
        f"TDP weight {p.train.sr4ir.tdp_weight}, CQMix p={p.train.sr4ir.cqmix_p}, seed {p.seed}.",
        "",
        "Metrics are from the last epoch on the val split (as the paper reports). PSNR is RGB on 8-bit levels with "
        f"a {p.eval.psnr_crop_border}-px border crop; LPIPS (VGG, v0.1) compares the same images with the same crop; "
        "H2T sees the HR image, so it has neither.",
    ]


FIGURE_CAPTIONS = {
    "results": "Left: task metric per method (PSNR annotated). Right: validation metric per epoch (training curves).",
    "qualitative": "Val images through each method, with the recogniser's prediction (green: right, red: wrong).",
}


def _primary(df: pd.DataFrame) -> str:
    return next(c for c in df.columns if c.startswith("paper_") and c != "paper_lpips").removeprefix("paper_")


def render_markdown(params: Params, sections: list[tuple[str, pd.DataFrame, list[str], dict[str, str]]],
                    times: Mapping[str, float]) -> str:
    out = ["# SR4IR study report", "", *_intro(params), ""]
    for task, df, checks, figures in sections:
        primary = _primary(df)
        out += [f"## Task: {task}", "", markdown_table(df, primary, paper_label(task, params)), "",
                "Reproduction check, against the ordering of the paper's published numbers:", "", *checks, ""]
        for kind, fig in figures.items():
            out += [f"![{task} {kind}]({fig})", "", f"*{FIGURE_CAPTIONS.get(kind, '')}*", ""]
    if times:
        out += ["## Stage wall times", "", stage_times_table(times), ""]
    return "\n".join(out)


def render_html(params: Params, sections: list[tuple[str, pd.DataFrame, list[str], dict[str, str]]],
                times: Mapping[str, float], root: Path) -> str:
    """The same report as one self-contained HTML file: figures are embedded as data URIs."""
    import base64
    import html

    def esc(x: Any) -> str:
        return html.escape(str(x))

    def img(rel: str, alt: str) -> str:
        data = base64.b64encode((root / rel).read_bytes()).decode()
        return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'

    body = ["<h1>SR4IR study report</h1>", f"<p>{esc(' '.join(_intro(params)).replace('**', ''))}</p>"]
    for task, df, checks, figures in sections:
        primary = _primary(df)
        lpips, notes = lpips_cells(df)
        rows = "".join(
            f"<tr><td>{esc(r['label'])}</td><td>{fmt_number(r[primary])}</td><td>{fmt_number(r['psnr'], 2)}</td><td>{esc(lpips[i])}</td>"
            f"<td>{fmt_number(r['paper_' + primary])}</td><td>{fmt_number(r.get('paper_lpips', float('nan')), 3)}</td></tr>"
            for i, (_, r) in enumerate(df.iterrows()))
        body += [f"<h2>Task: {esc(task)}</h2>", f"<p>Paper columns: {esc(paper_label(task, params))}.</p>",
                 f"<table><tr><th>Method</th><th>{esc(METRIC_LABELS.get(primary, primary))} ↑</th><th>PSNR (dB) ↑</th>"
                 f"<th>LPIPS ↓</th><th>paper {esc(primary)}</th><th>paper LPIPS</th></tr>{rows}</table>",
                 *(f'<p class="note">{esc(n)}</p>' for n in notes),
                 "<h3>Reproduction check</h3><ul>" + "".join(f"<li>{esc(c.removeprefix('- '))}</li>" for c in checks) + "</ul>"]
        for kind, fig in figures.items():
            body += [f"<figure>{img(fig, f'{task} {kind}')}<figcaption>{esc(FIGURE_CAPTIONS.get(kind, ''))}</figcaption></figure>"]
    if times:
        body += ["<h2>Stage wall times</h2><table><tr><th>stage</th><th>seconds</th></tr>"
                 + "".join(f"<tr><td>{esc(k)}</td><td>{v:.0f}</td></tr>" for k, v in times.items()) + "</table>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}figcaption{font-size:90%;color:#555}.note{font-size:90%;color:#555;margin:.3em 0}")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SR4IR study report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
