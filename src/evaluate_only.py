"""Evaluate given checkpoints without training: PSNR, LPIPS (when available) and, with a recogniser, the task
metric, on the val split of ``data/raw`` + ``data/lr``, scored by the evaluate stage's own
``src.experiment.score_val_split``.

    python -m src.evaluate_only --task cls --sr models/seed0/cls/sr4ir/sr.pt --rec models/seed0/cls/sr4ir/rec.pt
    python -m src.evaluate_only --task seg --sr net_sr_latest.pth      # an official release: PSNR/LPIPS only

The library function is ``evaluate_checkpoints``; ``main`` is the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pickle
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from src.config import ConfigError, Params, load_params
from src.data.dataset import make_loader, split_dataset
from src.errors import DataError
from src.experiment import build_setup, load_state, score_val_split
from src.methods import Method
from src.models.official import load_official_sr
from src.report import METRIC_LABELS, fmt_number, superscript
from src.tasks import TASKS, build_task
from src.utils import resolve_device, seed_everything, write_json_atomic, write_text_atomic

# The recogniser sees SR(LR), like S->T; nothing trains. ``uses_rec`` is set by whether a recogniser is given.
EVALUATE_ONLY = Method("evaluate_only", "SR (given checkpoint)", "sr", "recogniser", trains_sr=False, trains_rec=False)
NO_REC_NOTE = ("no --rec given: the task metric needs a trained recogniser (an untrained one would give a "
               "meaningless number), so only PSNR and LPIPS are reported")
DEFAULT_OUT = Path("reports/evaluate_only")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the network configured in params; names the file."""


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found" + (" (it is a folder)" if path.is_dir() else ""))


def evaluate_checkpoints(params: Params, task_name: str, sr_path: Path, rec_path: Path | None,
                         raw: Path, lr: Path) -> dict[str, Any]:
    """Load the SR checkpoint (ours, or a released EDSR/SwinIR/SR4IR file: ``load_official_sr``) into the
    network ``params.sr`` describes, and optionally a recogniser state dict saved by this pipeline; evaluate
    on the val split. Returns a JSON-ready record: inputs, ``metrics`` and the reasons for what is missing."""
    sr_path, rec_path = Path(sr_path), (Path(rec_path) if rec_path is not None else None)
    _require(sr_path, "SR checkpoint")
    if rec_path is not None:
        _require(rec_path, "recogniser checkpoint")
    device = resolve_device(params.device)
    seed_everything(params.seed)
    task = build_task(task_name, params, raw)
    method = dataclasses.replace(EVALUATE_ONLY, uses_rec=rec_path is not None)
    setup = build_setup(method, params, task, device=device)
    size = f"sr.n_blocks {params.sr.n_blocks}, sr.n_feats {params.sr.n_feats}, " if params.sr.arch == "edsr" else ""
    hint = f" (params: sr.arch {params.sr.arch}, {size}degrade.scale {params.degrade.scale}: set them to the checkpoint's)"
    try:
        load_official_sr(setup.sr, sr_path)
    except ValueError as err:
        raise CheckpointError(f"{err}{hint}") from None
    if rec_path is not None:
        try:
            load_state(setup.rec, rec_path, f"{task_name} recogniser ({params.task_config(task_name).arch})")
        except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:  # the last three: not a torch file
            raise CheckpointError(str(err) if str(rec_path) in str(err) else f"{rec_path}: {err}") from None

    val_ds = split_dataset(params, raw, lr, "val", task)
    lr_img, hr, _ = val_ds[0]
    if -(-hr.shape[-1] // params.degrade.scale) != lr_img.shape[-1]:  # the LR of a side padded to the scale
        raise DataError(f"{lr / 'val'}: LR images are x{hr.shape[-1] // lr_img.shape[-1]} of {raw / 'val'}, but "
                        f"degrade.scale is {params.degrade.scale} (re-run the degrade stage, or set degrade.scale)")
    loader = make_loader(val_ds, params.eval.batch_size, False, params.data.num_workers)
    metrics, _, lpips_reason, _ = score_val_split(params, setup, val_ds, loader, device)
    record: dict[str, Any] = {
        "task": task_name,
        "sr_checkpoint": str(sr_path),
        "rec_checkpoint": str(rec_path) if rec_path is not None else None,
        "sr": params.sr.model_dump(mode="json"),
        "scale": params.degrade.scale,
        "recogniser": params.task_config(task_name).arch if rec_path is not None else None,
        "data": {"raw": str(raw), "lr": str(lr), "split": "val", "n_val": len(val_ds), "n_skipped": len(val_ds.skipped)},
        "eval": params.eval.model_dump(mode="json"),
        "metrics": metrics,
    }
    if lpips_reason is not None:
        record["lpips_unavailable"] = lpips_reason
    if rec_path is None:
        record["task_metric_unavailable"] = NO_REC_NOTE
    return record


def render_markdown(record: dict[str, Any]) -> str:
    """A small report of one evaluate-only run: what was loaded, the metrics, and why anything is missing."""
    m, sr = record["metrics"], record["sr"]
    arch = f"{sr['arch']} {sr['n_blocks']}x{sr['n_feats']}" if sr["arch"] == "edsr" else sr["arch"]
    rec = f"`{record['rec_checkpoint']}` ({record['recogniser']})" if record["rec_checkpoint"] else "none"
    data = record["data"]
    lines = [
        f"# Evaluate-only: {record['task']}", "",
        f"- SR checkpoint: `{record['sr_checkpoint']}` ({arch}, x{record['scale']})",
        f"- recogniser: {rec}",
        f"- data: the {data['split']} split of `{data['raw']}` + `{data['lr']}` ({data['n_val']} images"
        + (f", {data['n_skipped']} skipped" if data["n_skipped"] else "") + ")",
        f"- PSNR: RGB on 8-bit levels, {record['eval']['psnr_crop_border']}-px border crop; "
        "LPIPS: VGG, v0.1, the same images and crop", "",
        "| metric | value |", "|---|---:|",
    ]
    notes = []
    for key in [k for k in m if k not in ("psnr", "lpips")]:  # the task metric(s) first
        lines.append(f"| {METRIC_LABELS.get(key, key)} ↑ | {fmt_number(m[key], 1, 'n/a')} |")
    if "task_metric_unavailable" in record:
        notes.append(record["task_metric_unavailable"])
        lines.append(f"| task metric | n/a{superscript(len(notes))} |")
    lines.append(f"| PSNR (dB) ↑ | {fmt_number(m.get('psnr'), 2, 'n/a')} |")
    if "lpips" in m:
        lines.append(f"| LPIPS ↓ | {fmt_number(m['lpips'], 3, 'n/a')} |")
    else:
        notes.append(f"LPIPS not computed: {record.get('lpips_unavailable', 'not recorded')}")
        lines.append(f"| LPIPS ↓ | n/a{superscript(len(notes))} |")
    if notes:
        lines += ["", *(f"{superscript(i + 1)} {n}  " for i, n in enumerate(notes))]
    return "\n".join(lines) + "\n"


def default_out(task: str, sr_path: Path) -> Path:
    """``reports/evaluate_only/<task>_<folder>_<file stem>`` (e.g. ``cls_sr4ir_sr`` for models/seed0/cls/sr4ir/sr.pt)."""
    sr_path = Path(sr_path)
    name = "_".join(p for p in (task, sr_path.resolve().parent.name, sr_path.stem) if p)
    return DEFAULT_OUT / re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def write_outputs(record: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``<out>/metrics.json`` and ``<out>/report.md``, each written atomically."""
    out = Path(out)
    write_json_atomic(out / "metrics.json", record)
    write_text_atomic(out / "report.md", render_markdown(record))
    return out / "metrics.json", out / "report.md"


DESCRIPTION = (
    "Evaluate an SR checkpoint (and optionally a recogniser) on the val split of data/raw + data/lr, with no "
    "training: PSNR, LPIPS (when eval.lpips is auto and torchvision's VGG16 weights are in the torch hub cache; "
    "never downloaded) and, given --rec, the task metric. Writes <out>/metrics.json and <out>/report.md.",
)
EPILOG = (
    "The networks are built from params (sr.arch, sr.n_blocks, sr.n_feats, sr.res_scale, degrade.scale, and the "
    "<task> block for the recogniser); a checkpoint of another architecture or scale fails with exit 2. For the "
    "authors' x8 EDSR-baseline releases set sr.n_blocks 16, sr.n_feats 64 and degrade.scale 8, and degrade "
    "data/lr at x8.",
    "Without --rec no task metric is reported, for every task: top-1, mIoU and mAP are all the recogniser's, and "
    "an untrained one would give a meaningless number. --rec takes a recogniser state dict saved by this "
    "pipeline (models/seed<N>/<task>/<method>/rec.pt) for the network params.<task> configures.",
    "Exit status: 0 done; 2 a missing or unfitting checkpoint, bad params or bad data (one line naming the file).",
)


def build_parser() -> argparse.ArgumentParser:
    def paragraphs(texts: tuple[str, ...]) -> str:
        return "\n\n".join(textwrap.fill(t, 100) for t in texts)

    parser = argparse.ArgumentParser(prog="python -m src.evaluate_only", description=paragraphs(DESCRIPTION),
                                     epilog=paragraphs(EPILOG), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True, help="which task's val split and metric")
    parser.add_argument("--sr", type=Path, required=True, metavar="CHECKPOINT",
                        help="SR weights: ours (models/seed<N>/.../sr.pt, models/seed<N>/sr_pretrained.pt) or an official EDSR/SwinIR/SR4IR "
                             "release (bare, {'params'|'params_ema': ...}, or an SR4IR checkpoint's net_sr)")
    parser.add_argument("--rec", type=Path, metavar="STATE_DICT", help="recogniser state dict (models/seed<N>/<task>/<method>/rec.pt)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: reports/evaluate_only/<task>_<checkpoint folder>_<checkpoint name>)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="HR dataset (default: data/raw)")
    parser.add_argument("--lr", type=Path, default=Path("data/lr"), help="LR images (default: data/lr)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _require(args.sr, "SR checkpoint")  # before anything else: the commonest mistake, named first
        if args.rec is not None:
            _require(args.rec, "recogniser checkpoint")
        params = load_params(args.params)
        record = evaluate_checkpoints(params, args.task, args.sr, args.rec, args.raw, args.lr)
        out = args.out or default_out(args.task, args.sr)
        json_path, md_path = write_outputs(record, out)
    except (CheckpointError, ConfigError, DataError, FileNotFoundError) as err:
        msg = str(err).strip().splitlines() or [type(err).__name__]
        print(f"error: {msg[0]}", file=sys.stderr)
        sys.exit(2)
    for note in (record.get("task_metric_unavailable"), record.get("lpips_unavailable")):
        if note:
            logging.warning("note: %s", note)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items())
    logging.info("evaluate-only %s: %s; wrote %s and %s", args.task, shown, json_path, md_path)


if __name__ == "__main__":
    main()
