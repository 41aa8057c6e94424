"""Benchmark of one SR4IR alternate-training step: ours (``src.steps.alternate_step``) against the official
loop's way of running it (``src.reference.reference_alternate_step``), per task and network size.

    python -m src.bench                                  # cls, seg, det; paper and default sizes; auto device
    python -m src.bench --tasks cls --sizes paper --device cuda --amp bf16 --compile --channels-last

Both loops start from the same weights (one Setup, deep-copied) and see the same synthetic batch, in the
same process; their timed steps are interleaved so that clock drift hits both alike. Per (device, task,
size, settings) one JSON goes to ``--out`` and a markdown table is printed, naming the machine.

What is measured:
* images/s: batch size / the median wall time of the timed steps (TDP on, i.e. the post-warm-up step;
  the mean is in the JSON too);
* FLOPs/step: ``torch.utils.flop_counter.FlopCounterMode`` over one eager fp32 step (convs, matmuls and
  their backward; element-wise work is not counted); GFLOP/s = FLOPs/step / median step time, and its share
  of a measured conv peak (a large 3x3 conv, forward only, on the same device, in the step's dtype; on CUDA
  "float32" convs run as TF32, PyTorch's default for cuDNN, in the step as in the peak);
* on CUDA also the share of the card's measured bf16 matmul peak (8192^3);
* peak memory: CUDA, ``torch.cuda.max_memory_allocated`` during a step minus what was allocated before it
  (the step's working memory: activations, gradients, temporaries); CPU, the same quantity from the
  profiler's per-op allocation records (``torch.profiler`` with ``profile_memory``; each op's own
  allocations and frees credited at its start), over one extra untimed step.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from src.config import Params, SRConfig
from src.data.dataset import Batch
from src.steps import Setup, alternate_step
from src.experiment import build_setup, prepare_for_speed
from src.methods import METHODS
from src.reference import reference_alternate_step
from src.tasks import build_task
from src.tasks.base import Task
from src.utils import to_device, write_json_atomic, write_text_atomic

TASK_NAMES = ("cls", "seg", "det")
SIZES = ("paper", "default")
# (HR side, batch) for the paper-size networks. cls: 128 px at batch 16 (the setting; the paper trains
# at 224 px, batch 128). seg/det: the paper's crop (seg 480 px, batch 16) and a 512-px detector input at batch 4
# on CUDA (the paper resizes to 800 px, batch 16); 128 px at batch 4 and 2 on a CPU, to keep a run short.
PAPER_SHAPES = {
    "cuda": {"cls": (128, 16), "seg": (480, 16), "det": (512, 4)},
    "cpu": {"cls": (128, 16), "seg": (128, 4), "det": (128, 2)},
}
PAPER_CLASSES = {"cls": 196, "seg": 20, "det": 20}  # StanfordCars; VOC (+ background inside the task)
DEFAULT_CLASSES = 8


# ---------------------------------------------------------------------------------------------------
# Configurations and inputs


def bench_params(task: str, size: str) -> Params:
    """``Params()`` defaults, or the paper's networks: EDSR-baseline 16x64, ResNet-18, DeepLabV3 with its
    auxiliary head, and the paper's detector."""
    p = Params()
    if size == "default":
        return p
    update: dict[str, Any] = {
        "sr": SRConfig(n_blocks=16, n_feats=64),
        "cls": p.cls.model_copy(update={"arch": "resnet18"}),
        "seg": p.seg.model_copy(update={"arch": "deeplabv3_mobilenet_v3_large",
                                        "loss_weights": {"loss_ce": 1.0, "loss_aux": 0.5}}),
    }
    if task == "det":
        update["det"] = p.det.model_copy(update={
            "fpn_stages": [13, 16], "fpn_channels": 256, "representation_size": 1024,
            "anchor_sizes": [[32, 64, 128, 256, 512]] * 3, "rpn_post_nms_top_n_train": 2000,
            "box_batch_size_per_image": 512,
        })
    return p.model_copy(update=update)


def shape_for(task: str, size: str, params: Params, device: torch.device) -> tuple[int, int]:
    if size == "paper":
        return PAPER_SHAPES["cuda" if device.type == "cuda" else "cpu"][task]
    return params.data.synthetic.image_size, params.train_batch(task)[0]


def synthetic_batch(task: str, hr_size: int, batch: int, scale: int, num_classes: int, seed: int = 0) -> Batch:
    """Random HR images, their 8-bit bicubic LR, and random targets of the task's kind."""
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(batch, 3, hr_size, hr_size, generator=g)
    lr = (F.interpolate(hr, scale_factor=1 / scale, mode="bicubic") * 255).round().clamp(0, 255) / 255
    if task == "cls":
        target: Any = torch.randint(0, num_classes, (batch,), generator=g)
    elif task == "seg":
        cells = torch.randint(0, num_classes + 1, (batch, 1, 8, 8), generator=g).float()
        target = F.interpolate(cells, size=(hr_size, hr_size), mode="nearest")[:, 0].long()
        target[:, :, hr_size // 2] = 255  # some ignored pixels, like VOC's boundaries
    else:
        target = []
        for _ in range(batch):
            n = int(torch.randint(1, 4, (1,), generator=g))
            xy = torch.rand(n, 2, generator=g) * hr_size * 0.6
            wh = (0.1 + 0.3 * torch.rand(n, 2, generator=g)) * hr_size
            boxes = torch.cat([xy, (xy + wh).clamp(max=hr_size)], dim=1)
            target.append({"boxes": boxes, "labels": torch.randint(1, num_classes + 1, (n,), generator=g)})
    return Batch(lr=lr, hr=hr, target=target)


# ---------------------------------------------------------------------------------------------------
# Machine and peaks


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(fn: Callable[[], Any], flops: float, device: torch.device, reps: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


_PEAKS: dict[tuple[str, str], float] = {}


def conv_peak_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a large 3x3 conv (forward), the best of a few runs: what this device's convs reach."""
    key = (str(device), str(dtype))
    if key not in _PEAKS:
        if device.type == "cuda":
            n, c, hw, reps = 32, 256, 64, 10
        else:
            n, c, hw, reps = 8, 64, 64, 10
        x = torch.randn(n, c, hw, hw, device=device, dtype=dtype)
        w = torch.randn(c, c, 3, 3, device=device, dtype=dtype)
        with torch.no_grad():
            _PEAKS[key] = _best_rate(lambda: F.conv2d(x, w, padding=1), 2.0 * n * c * c * 9 * hw * hw, device, reps)
    return _PEAKS[key]


def bf16_matmul_peak_gflops(device: torch.device) -> float:
    key = (str(device), "bf16-matmul")
    if key not in _PEAKS:
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        _PEAKS[key] = _best_rate(lambda: a @ b, 2.0 * n**3, device, 10)
    return _PEAKS[key]


# ---------------------------------------------------------------------------------------------------
# Measuring steps

Step = Callable[[Setup, Batch, bool], dict[str, torch.Tensor]]


def count_flops(s: Setup, step: Step, batch: Batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(s, batch, True)
    return int(counter.get_total_flops())


def cpu_step_memory(s: Setup, step: Step, batch: Batch) -> int:
    """Peak bytes of CPU tensors allocated during one step beyond those alive before it (profiler records)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(s, batch, True)
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return int(peak)


def measure(variants: dict[str, tuple[Setup, Step]], eager_copies: dict[str, Setup], batch: Batch,
            device: torch.device, steps: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Warm up, count FLOPs and memory, then time ``steps`` interleaved steps of every variant."""
    out: dict[str, dict[str, Any]] = {name: {} for name in variants}
    for name, (s, step) in variants.items():
        # FLOPs on an eager fp32 copy (FlopCounterMode and compiled graphs do not mix); it doubles as a warm-up.
        out[name]["flops_per_step"] = count_flops(eager_copies[name], step, batch)
        for _ in range(warmup):
            step(s, batch, True)
        if device.type == "cpu":
            out[name]["peak_mem_bytes"] = cpu_step_memory(s, step, batch)
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, list[int]] = {name: [] for name in variants}
    for _ in range(steps):
        for name, (s, step) in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            _sync(device)
            t0 = time.perf_counter()
            step(s, batch, True)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peaks[name].append(torch.cuda.max_memory_allocated(device) - before)
    b = batch.hr.shape[0]
    for name in variants:
        mean = sum(times[name]) / len(times[name])
        median = statistics.median(times[name])
        rec = out[name]
        rec.update({
            "imgs_per_s": b / median,  # the median step: robust to a stray slow step on a shared machine
            "imgs_per_s_mean": b / mean,
            "step_s_mean": mean,
            "step_s_median": median,
            "step_s_all": times[name],
            "gflops_per_s": rec["flops_per_step"] / median / 1e9,
        })
        if device.type == "cuda":
            rec["peak_mem_bytes"] = max(peaks[name])
    return out


def bench_problem(task_name: str, size: str, device: torch.device, hr: int | None = None,
                  batch: int | None = None) -> tuple[Params, Task, int, int, int]:
    """What a benchmark of (task, size) runs: its params, the task, its number of classes, the HR side and the
    batch (``hr``/``batch`` override them; the side is cut to whole LR pixels and whole CQMix cells)."""
    params = bench_params(task_name, size)
    num_classes = PAPER_CLASSES[task_name] if size == "paper" else DEFAULT_CLASSES
    hr_size, bsz = shape_for(task_name, size, params, device)
    hr_size, bsz = hr or hr_size, batch or bsz
    hr_size -= hr_size % (params.degrade.scale * 8)
    return params, build_task(task_name, params, num_classes=num_classes), num_classes, hr_size, bsz


def bench_one(task_name: str, size: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    params, task, num_classes, hr_size, bsz = bench_problem(task_name, size, device, args.hr, args.batch)
    scale = params.degrade.scale
    torch.manual_seed(0)
    base = build_setup(METHODS["sr4ir"], params, task, device=device, mix_seed=0)
    batch = to_device(synthetic_batch(task_name, hr_size, bsz, scale, num_classes), device)
    tdp_batched = args.tdp_batched == "on"
    amp = torch.bfloat16 if args.amp == "bf16" else None

    ref, ours = copy.deepcopy(base), copy.deepcopy(base)
    ours.tdp_batched, ours.amp_dtype, ours.channels_last, ours.compile = tdp_batched, amp, args.channels_last, args.compile
    # The approximations (off: the paper's math, as the reference runs it).
    approx = {"recompute_sr_phase2": not args.reuse_sr, "phase2_batched": args.phase2_batched}
    ours.loss = ours.loss.model_copy(update=approx)
    eager_ours = copy.deepcopy(base)
    eager_ours.tdp_batched = tdp_batched
    eager_ours.loss = ours.loss
    prepare_for_speed(ours)
    variants = {"ours": (ours, alternate_step), "reference": (ref, reference_alternate_step)}
    res = measure(variants, {"ours": eager_ours, "reference": copy.deepcopy(base)}, batch, device, args.steps, args.warmup)
    del base, eager_ours

    dtype = amp or torch.float32
    peak = conv_peak_gflops(device, dtype)
    ref_peak = conv_peak_gflops(device, torch.float32)
    res["ours"]["pct_conv_peak"] = 100.0 * res["ours"]["gflops_per_s"] / peak
    res["reference"]["pct_conv_peak"] = 100.0 * res["reference"]["gflops_per_s"] / ref_peak
    record: dict[str, Any] = {
        "machine": machine(),
        "device": device.type,
        "task": task_name,
        "size": size,
        "hr_size": hr_size,
        "batch": bsz,
        "scale": scale,
        "num_classes": num_classes,
        "sr": {"n_blocks": params.sr.n_blocks, "n_feats": params.sr.n_feats},
        "settings": {"amp": args.amp, "compile": args.compile, "channels_last": args.channels_last, "tdp_batched": args.tdp_batched,
                     "reuse_sr": args.reuse_sr, "phase2_batched": args.phase2_batched},
        "steps": args.steps,
        "warmup": args.warmup,
        "ours": res["ours"],
        "reference": res["reference"],
        "ratio_imgs_per_s": res["ours"]["imgs_per_s"] / res["reference"]["imgs_per_s"],
        "conv_peak_gflops": {"ours": peak, "reference": ref_peak},
        "conv_peak_dtype": str(dtype).removeprefix("torch.") + (" (cuDNN TF32)" if device.type == "cuda" and dtype == torch.float32
                                                                and torch.backends.cudnn.allow_tf32 else ""),
        "memory_method": ("torch.cuda.max_memory_allocated during a step minus memory_allocated before it" if device.type == "cuda"
                          else "torch.profiler profile_memory: peak of per-op CPU allocations minus frees over one step"),
    }
    if device.type == "cuda":
        mm = bf16_matmul_peak_gflops(device)
        record["bf16_matmul_peak_gflops"] = mm
        record["ours"]["pct_bf16_matmul_peak"] = 100.0 * res["ours"]["gflops_per_s"] / mm
        record["reference"]["pct_bf16_matmul_peak"] = 100.0 * res["reference"]["gflops_per_s"] / mm
    return record


# ---------------------------------------------------------------------------------------------------
# Output


def suffix(args: argparse.Namespace) -> str:
    parts = [p for p, on in (("bf16", args.amp == "bf16"), ("compile", args.compile), ("cl", args.channels_last)) if on]
    if args.tdp_batched == "on":
        parts.append("tdpbatch")
    parts += [p for p, on in (("reusesr", args.reuse_sr), ("p2batch", args.phase2_batched)) if on]
    return "".join(f"_{p}" for p in parts)


def _mib(x: Any) -> str:
    return f"{x / 2**20:.0f}" if isinstance(x, (int, float)) else "n/a"


def table(records: list[dict[str, Any]]) -> str:
    if not records:
        return "(no results)\n"
    m = records[0]["machine"]
    name = m.get("gpu") if records[0]["device"] == "cuda" else f"{m['cpu']} ({m['torch_threads']} threads)"
    s = records[0]["settings"]
    lines = [
        f"SR4IR step benchmark on {records[0]['device']}: {name}; torch {m['torch']}; ours: amp {s['amp']}, "
        f"compile {s['compile']}, channels_last {s['channels_last']}, tdp_batched {s['tdp_batched']}"
        + "".join(f", {k} {s[k]}" for k in ("reuse_sr", "phase2_batched") if s.get(k)) + "; reference: fp32 eager, the paper's step",
        "",
        "| task | size | HR | B | ours img/s | ref img/s | ours/ref | GFLOP/step | ours GFLOP/s | % conv peak | "
        + ("% bf16 mm peak | " if records[0]["device"] == "cuda" else "")
        + "ours peak MiB | ref peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if records[0]["device"] == "cuda" else "") + "---|---|",
    ]
    for r in records:
        o, ref = r["ours"], r["reference"]
        row = (f"| {r['task']} | {r['size']} | {r['hr_size']} | {r['batch']} | {o['imgs_per_s']:.2f} | {ref['imgs_per_s']:.2f} | "
               f"{r['ratio_imgs_per_s']:.2f} | {o['flops_per_step'] / 1e9:.1f} | {o['gflops_per_s']:.1f} | {o['pct_conv_peak']:.0f} | ")
        if r["device"] == "cuda":
            row += f"{o['pct_bf16_matmul_peak']:.1f} | "
        row += f"{_mib(o.get('peak_mem_bytes'))} | {_mib(ref.get('peak_mem_bytes'))} |"
        lines.append(row)
    conv = records[0]["conv_peak_gflops"]
    lines += ["", f"conv peak ({records[0]['conv_peak_dtype']}, 3x3): {conv['ours']:.0f} GFLOP/s"
              + (f"; bf16 matmul peak: {records[0]['bf16_matmul_peak_gflops'] / 1e3:.0f} TFLOP/s" if "bf16_matmul_peak_gflops" in records[0] else "")
              + f"; memory: {records[0]['memory_method']}"]
    return "\n".join(lines) + "\n"


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: {bad or value!r} not among {list(allowed)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m src.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=lambda v: _csv(v, TASK_NAMES, "--tasks"), default=list(TASK_NAMES), help="comma-separated: cls,seg,det")
    ap.add_argument("--sizes", type=lambda v: _csv(v, SIZES, "--sizes"), default=list(SIZES),
                    help="comma-separated: paper (EDSR 16x64 + the paper's recognisers), default (Params() defaults)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--batch", type=int, default=None, help="override the batch size")
    ap.add_argument("--hr", type=int, default=None, help="override the HR side in pixels")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per loop")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per loop (beyond the FLOP-counting one)")
    ap.add_argument("--out", type=Path, default=Path("reports/bench"))
    ap.add_argument("--amp", choices=("none", "bf16"), default="none", help="ours: bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="ours: torch.compile the SR network and the recogniser trunk")
    ap.add_argument("--channels-last", action="store_true", help="ours: NHWC networks and inputs")
    ap.add_argument("--tdp-batched", choices=("on", "off"), default="off",
                    help="ours: SR+HR TDP features in one forward (exact with an eval-mode critic; more backward FLOPs)")
    ap.add_argument("--reuse-sr", action="store_true",
                    help="ours, an approximation: phase 2 reuses the phase-1 SR output (train.sr4ir.recompute_sr_phase2: false)")
    ap.add_argument("--phase2-batched", action="store_true",
                    help="ours, an approximation: one recogniser forward for the three phase-2 terms (train.sr4ir.phase2_batched)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    records = []
    for task_name in args.tasks:
        for size in args.sizes:
            rec = bench_one(task_name, size, device, args)
            path = args.out / f"{device.type}_{task_name}_{size}{suffix(args)}.json"
            write_json_atomic(path, rec)
            records.append(rec)
            print(f"{task_name}/{size}: ours {rec['ours']['imgs_per_s']:.2f} img/s, reference {rec['reference']['imgs_per_s']:.2f} img/s "
                  f"(x{rec['ratio_imgs_per_s']:.2f}) -> {path}", file=sys.stderr, flush=True)
    text = table(records)
    write_text_atomic(args.out / f"{device.type}_table{suffix(args)}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
