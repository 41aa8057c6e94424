"""The study's report: per task, the paper-style table (task metric as mean and 95 % interval over seeds, PSNR
and LPIPS per method), figures, and verdicts on the orderings of the paper's published numbers, each from the
paired difference over seeds (src/stats.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.config import Params
from src.methods import METHODS, TABLE_METHODS
from src.stats import HOLDS, NOT_RESOLVED, REVERSED, mean_interval, paired_difference, verdict

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
LR_ONLY = ("l2t", "s2t", "t2s", "joint")  # the headline claim: SR4IR above each of these (all see LR only)


def results_table(task: str, metrics: Mapping[str, Mapping[str, Any]], primary: str,
                  params: Params | None = None, seed: int = 0) -> pd.DataFrame:
    """One seed's rows: methods in the paper's order; columns = task, method, label, seed, the task metric, PSNR
    (dB), LPIPS, the paper's values (of this setting when published, else of the task's published setting: see
    ``paper_reference``), and the columns of ``add_seed_summary`` (here over this one seed: n = 1).

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
            "seed": seed,
            primary: r.get(primary, float("nan")),
            "psnr": r.get("psnr", float("nan")),  # H2T sees HR: no PSNR
            "lpips": r.get("lpips", float("nan")),  # ... and no LPIPS
            "lpips_note": "" if m == "h2t" or "lpips" in r else
                          r.get("lpips_unavailable", "not in this method's eval metrics (re-run its evaluate stage)"),
            "paper_" + primary: ref.get("values", {}).get(m, float("nan")),
            "paper_lpips": ref.get("lpips", {}).get(m, float("nan")) if same and m != "h2t" else float("nan"),
        })
    return add_seed_summary(pd.DataFrame(rows), primary)


def study_table(task: str, metrics_by_seed: Mapping[int, Mapping[str, Mapping[str, Any]]], primary: str,
                params: Params | None = None) -> pd.DataFrame:
    """Every seed's rows (``metrics_by_seed``: seed -> method -> its eval metrics), method by method in the
    paper's order and seed by seed within a method, with each method's mean, ci95 and n over its seeds."""
    frames = [results_table(task, metrics, primary, params, seed) for seed, metrics in metrics_by_seed.items()]
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values("method", key=lambda s: s.map(TABLE_METHODS.index), kind="stable", ignore_index=True)
    return add_seed_summary(df, primary)


def add_seed_summary(df: pd.DataFrame, primary: str) -> pd.DataFrame:
    """``df`` (one row per method and seed) with the columns ``metric`` (the primary metric's name), ``value``
    (each row's primary metric) and, per method over its rows, ``mean``, ``ci95`` (the half-width of the 95 %
    Student-t interval over seeds; NaN with one seed) and ``n`` (the number of seeds)."""
    df = df.copy()
    if df.empty:
        return df
    df["metric"] = primary
    df["value"] = df[primary]
    df["mean"], df["ci95"], df["n"] = float("nan"), float("nan"), 0
    for m in df["method"].unique():
        rows = df["method"] == m
        interval = mean_interval([float(v) for v in df.loc[rows, primary]])
        df.loc[rows, "mean"] = interval.mean
        df.loc[rows, "ci95"] = interval.half_width
        df.loc[rows, "n"] = interval.n
    return df


def add_bootstrap_intervals(df: pd.DataFrame, scores: Mapping[str, Mapping[str, np.ndarray]],
                            resamples: int) -> pd.DataFrame:
    """One seed's table with each method's 95 % bootstrap interval over val images (``boot_low``,
    ``boot_high``; ``scores``: method -> its per-image scores file). Test-set uncertainty only: it does not
    include training noise, which only more seeds measure."""
    from src.bootstrap import bootstrap_interval  # imported here: only the one-seed report needs it

    df = df.copy()
    df["boot_low"], df["boot_high"] = float("nan"), float("nan")
    for i, r in df.iterrows():
        interval = bootstrap_interval(r["task"], scores[r["method"]], resamples, seed=0)
        df.loc[i, "boot_low"], df.loc[i, "boot_high"] = interval.low, interval.high
    return df


def method_summary(df: pd.DataFrame, primary: str) -> pd.DataFrame:
    """One row per method (the paper's order): label, ``mean``, ``ci95``, ``n``, ``per_seed`` (the values in
    seed order), PSNR and LPIPS as means over seeds (LPIPS NaN when a seed has none, ``lpips_note`` saying
    why), the paper's values, and ``boot_low`` / ``boot_high`` when ``df`` has them."""
    rows = []
    for m in TABLE_METHODS:
        runs = df[df["method"] == m].sort_values("seed")
        if runs.empty:
            continue
        interval = mean_interval([float(v) for v in runs[primary]])
        notes = [n for n in runs["lpips_note"] if isinstance(n, str) and n]
        first = runs.iloc[0]
        rows.append({
            "method": m,
            "label": first["label"],
            "mean": interval.mean,
            "ci95": interval.half_width,
            "n": interval.n,
            "per_seed": [float(v) for v in runs[primary]],
            "psnr": float(runs["psnr"].mean(skipna=False)),
            "lpips": float(runs["lpips"].mean(skipna=False)),
            "lpips_note": notes[0] if notes else "",
            "paper_" + primary: first["paper_" + primary],
            "paper_lpips": first.get("paper_lpips", float("nan")),
            "boot_low": first.get("boot_low", float("nan")),
            "boot_high": first.get("boot_high", float("nan")),
        })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Comparison:
    """One ordering, ``higher`` above ``lower`` (the paper's direction, or the headline claim's): the difference
    higher − lower here, its 95 % interval (NaN where none can be given) and what the interval says."""

    higher: str
    lower: str
    paper_gap: float  # the paper's higher − lower (NaN where the paper has no numbers)
    diff: float  # mean paired difference over seeds; with one seed, that seed's difference
    low: float
    high: float
    word: str  # over seeds: holds / reversed / not resolved; one seed's bootstrap: above 0 / below 0 / contains 0


@dataclass(frozen=True)
class Checks:
    """What a task's section says about the paper's orderings and the headline claim."""

    orderings: list[Comparison]  # every pair the paper's published numbers order
    headline: list[Comparison]  # SR4IR above each LR-only method
    n: int  # seeds
    resamples: int = 0  # > 0: one seed, the intervals are a paired bootstrap over val images with this many resamples


def paper_orderings(df: pd.DataFrame, primary: str) -> list[tuple[str, str]]:
    """Every pair of methods in ``df`` that the paper's published numbers order, as (the paper's higher, lower)."""
    paper = dict(zip(df["method"], df["paper_" + primary]))
    methods = [m for m in TABLE_METHODS if m in paper]
    pairs = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            if math.isnan(paper[a]) or math.isnan(paper[b]) or paper[a] == paper[b]:
                continue  # no published number, or a tie: no ordering to check
            pairs.append((a, b) if paper[a] > paper[b] else (b, a))
    return pairs


def ordering_check(df: pd.DataFrame, primary: str, scores: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                   resamples: int = 1000) -> Checks:
    """The paired difference of every paper ordering and of the headline claim (SR4IR above each LR-only
    method), over the seeds of ``df`` (the same seed paired), with its 95 % interval and verdict
    (``src.stats.verdict``). With one seed there is no interval over seeds; given ``scores`` (method -> its
    per-image scores), the interval is instead a paired bootstrap over val images (seed 0): test-set
    uncertainty only."""
    paper = dict(zip(df["method"], df["paper_" + primary]))
    methods = set(df["method"])
    n = int(df["seed"].nunique())
    headline = [("sr4ir", m) for m in LR_ONLY if "sr4ir" in methods and m in methods]

    def compare(higher: str, lower: str) -> Comparison:
        gap = paper[higher] - paper[lower]
        a, b = per_seed(df, higher, primary), per_seed(df, lower, primary)
        seeds = sorted(set(a) & set(b))  # the same seed paired
        diff = paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
        if n == 1 and scores is not None:
            from src.bootstrap import paired_bootstrap  # imported here: only the one-seed report needs it

            boot = paired_bootstrap(df["task"].iloc[0], scores[higher], scores[lower], resamples, seed=0)
            return Comparison(higher, lower, gap, diff.mean, boot.low, boot.high, interval_side(boot.low, boot.high))
        return Comparison(higher, lower, gap, diff.mean, diff.low, diff.high, verdict(diff))

    return Checks([compare(a, b) for a, b in paper_orderings(df, primary)], [compare(a, b) for a, b in headline],
                  n, resamples if n == 1 and scores is not None else 0)


def per_seed(df: pd.DataFrame, method: str, column: str) -> dict[int, float]:
    """One method's ``column`` by seed."""
    rows = df[df["method"] == method]
    return {int(seed): float(v) for seed, v in zip(rows["seed"], rows[column])}


def interval_side(low: float, high: float) -> str:
    """Where a test-set interval of a difference lies: ``above 0``, ``below 0`` or ``contains 0``."""
    return "above 0" if low > 0 else "below 0" if high < 0 else "contains 0"


def _labels(comparisons: Sequence[Comparison]) -> str:
    return ", ".join(METHODS[c.lower].label for c in comparisons)


def check_summary(checks: Checks) -> list[str]:
    """The one-line summaries: how many paper orderings hold, are reversed or are not resolved, and the
    headline claim (with one seed: that no verdict over seeds can be given, and the test-set intervals)."""
    total, h = len(checks.orderings), checks.headline
    if checks.n >= 2:
        counts = {w: sum(c.word == w for c in checks.orderings) for w in (HOLDS, REVERSED, NOT_RESOLVED)}
        lines = [f"Of {total} paper orderings: " + ", ".join(
            f"{k} {'hold' if w == HOLDS and k != 1 else w}" for w, k in counts.items())
            + f" (paired over {checks.n} seeds)."]
        if h:
            text = f"Headline (SR4IR above every LR-only method): holds on {sum(c.word == HOLDS for c in h)} of {len(h)}"
            for w in (REVERSED, NOT_RESOLVED):
                if any(c.word == w for c in h):
                    text += f" / {w} vs {_labels([c for c in h if c.word == w])}"
            lines.append(text + ".")
        return lines
    lines = ["With one seed, verdicts over seeds cannot be given: an interval of the training noise needs at "
             "least two seeds (list more in `seeds`)."]
    if checks.resamples:
        lines.append(f"Instead, test-set uncertainty only (paired bootstrap over val images, {checks.resamples} "
                     "resamples; it does not include training noise): of "
                     f"{total} paper orderings, the interval of (the paper's higher) − (lower) is " + ", ".join(
                         f"{w} for {sum(c.word == w for c in checks.orderings)}"
                         for w in ("above 0", "below 0", "contains 0")) + ".")
        if h:
            text = (f"Headline (SR4IR above every LR-only method), test-set only: above 0 vs "
                    f"{sum(c.word == 'above 0' for c in h)} of {len(h)}")
            for w in ("below 0", "contains 0"):
                if any(c.word == w for c in h):
                    text += f" / {w} vs {_labels([c for c in h if c.word == w])}"
            lines.append(text + ".")
    return lines


def check_rows(checks: Checks) -> list[list[str]]:
    """The verdict table's cells: ordering, claim (paper / headline), the paper's gap, the difference here,
    its 95 % interval and the verdict. A headline pair the paper also orders is one row."""
    rows: list[list[str]] = []
    paper_pairs = {(c.higher, c.lower) for c in checks.orderings}
    headline_pairs = {(c.higher, c.lower) for c in checks.headline}
    extra = [c for c in checks.headline if (c.higher, c.lower) not in paper_pairs]
    for c in [*checks.orderings, *extra]:
        pair = (c.higher, c.lower)
        claim = ", ".join(x for x, on in (("paper", pair in paper_pairs), ("headline", pair in headline_pairs)) if on)
        interval = "—" if math.isnan(c.low) else f"[{c.low:+.1f}, {c.high:+.1f}]"
        rows.append([f"{METHODS[c.higher].label} > {METHODS[c.lower].label}", claim,
                     "—" if math.isnan(c.paper_gap) else f"{c.paper_gap:+.1f}", f"{c.diff:+.1f}", interval, c.word])
    return rows


def check_header(checks: Checks) -> list[str]:
    """The verdict table's column names (what the interval is over)."""
    if checks.n >= 2:
        return ["ordering", "claim", "paper", f"here (mean over {checks.n} seeds)", "95 % CI over seeds", "verdict"]
    if checks.resamples:
        return ["ordering", "claim", "paper", "here (one seed)", "95 % test-set interval (val images)", "interval"]
    return ["ordering", "claim", "paper", "here (one seed)", "95 % CI", "verdict"]


def checks_markdown(checks: Checks) -> list[str]:
    """A task's reproduction check as markdown: the summary lines, then the verdict table."""
    header = check_header(checks)
    lines = [*(f"- {s}" for s in check_summary(checks)), "",
             "| " + " | ".join(header) + " |", "|---|---|---:|---:|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in check_rows(checks)]
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


def metric_cell(r: Mapping[str, Any]) -> str:
    """A method's task metric cell (a ``method_summary`` row): ``83.2 ± 9.2``, the mean over seeds ± the half-width
    of its 95 % interval; with one seed the value alone, or with its test-set interval: ``83.2 [80.1, 86.0]``."""
    if not math.isnan(r["ci95"]):
        return f"{fmt_number(r['mean'])} ± {fmt_number(r['ci95'])}"
    if not math.isnan(r["boot_low"]):
        return f"{fmt_number(r['mean'])} [{fmt_number(r['boot_low'])}, {fmt_number(r['boot_high'])}]"
    return fmt_number(r["mean"])


def table_note(summary: pd.DataFrame) -> str:
    """What the task metric's interval is, in one sentence."""
    n = int(summary["n"].max()) if len(summary) else 0
    if n >= 2:
        return (f"Task metric: mean over the n = {n} seeds ± the half-width of its 95 % Student-t interval; "
                "PSNR and LPIPS: means over the seeds.")
    if len(summary) and summary["boot_low"].notna().any():
        return ("One seed: the task metric is that seed's value, in brackets its 95 % bootstrap interval over val "
                "images (test-set uncertainty only: it does not include training noise).")
    return "One seed: the task metric is that seed's value (no interval over seeds)."


def table_cells(df: pd.DataFrame, primary: str) -> tuple[list[str], list[list[str]], list[str]]:
    """The results table of ``df`` (one row per method and seed) as text: header, rows (the best non-H2T mean
    marked with ``**``) and LPIPS footnotes; the markdown and HTML tables both draw these."""
    summary = method_summary(df, primary)
    header = ["Method", f"{METRIC_LABELS.get(primary, primary)} ↑", "per seed", "n", "PSNR (dB) ↑", "LPIPS ↓",
              f"paper {primary}", "paper LPIPS"]
    lpips, notes = lpips_cells(summary)
    best = summary.loc[summary["method"] != "h2t", "mean"].max() if len(summary) else float("nan")
    rows = []
    for i, (_, r) in enumerate(summary.iterrows()):
        val = metric_cell(r)
        if r["method"] != "h2t" and r["mean"] == best:
            val = f"**{val}**"
        rows.append([r["label"], val, " / ".join(fmt_number(v) for v in r["per_seed"]), str(r["n"]),
                     fmt_number(r["psnr"], 2), lpips[i], fmt_number(r["paper_" + primary]),
                     fmt_number(r["paper_lpips"], 3)])
    return header, rows, notes


def markdown_table(df: pd.DataFrame, primary: str, paper_name: str) -> str:
    """A task's results table in markdown, with the line naming the paper's columns and what the interval is."""
    header, rows, notes = table_cells(df, primary)
    lines = [f"Paper columns: {paper_name}.", "", table_note(method_summary(df, primary)), "",
             "| " + " | ".join(header) + " |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        lines += ["", *(f"{n}  " for n in notes)]
    return "\n".join(lines)


# The embedded default's calibration targets (docs/choices.md): a recogniser has converged when its monitored val
# metric moves by less than PLATEAU points over its last two epochs on every seed, and a method is stable when
# the between-seed sd of its task metric is at most SPREAD points.
PLATEAU = 1.0
SPREAD = {"top1": 3.0, "miou": 3.0, "map": 2.0}


def spread_limit(primary: str) -> float:
    """The largest between-seed sd (points) of a stable method on the task metric ``primary``."""
    return SPREAD.get(primary, 3.0)


def convergence_table(df: pd.DataFrame, histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
                      primary: str) -> pd.DataFrame:
    """Per method (the paper's order): ``sd`` (of the task metric over seeds; NaN with one seed), ``change``
    (the largest |last − next-to-last epoch| of the monitored val metric over the seeds; NaN with one epoch),
    and ``plateau`` / ``stable`` (whether they meet PLATEAU and SPREAD; None where they cannot be judged).
    ``histories``: method -> each seed's epoch records, as the train stages write them."""
    key, limit = f"val/{primary}", spread_limit(primary)
    rows = []
    for m in TABLE_METHODS:
        runs = df[df["method"] == m]
        if runs.empty:
            continue
        sd = mean_interval([float(v) for v in runs[primary]]).sd
        changes = [abs(float(r[-1][key]) - float(r[-2][key])) for r in histories.get(m, []) if len(r) >= 2]
        change = max(changes) if changes else math.nan
        rows.append({"method": m, "label": METHODS[m].label, "sd": sd, "change": change,
                     "plateau": None if math.isnan(change) else change < PLATEAU,
                     "stable": None if math.isnan(sd) else sd <= limit})
    return pd.DataFrame(rows)


def convergence_lines(table: pd.DataFrame, primary: str, monitor_fraction: float) -> tuple[str, list[str], list[list[str]]]:
    """The convergence table's summary line, header and cells."""
    limit = spread_limit(primary)

    def judged(ok: Any) -> bool:  # pandas may hand None back as NaN
        return ok is not None and ok == ok

    def word(ok: Any) -> str:
        return ("met" if ok else "**not met**") if judged(ok) else "—"

    n_plateau = sum(judged(ok) and bool(ok) for ok in table["plateau"])
    n_stable = sum(judged(ok) and bool(ok) for ok in table["stable"])
    share = "all" if monitor_fraction >= 1 else f"the first {monitor_fraction:g}"
    summary = (f"Convergence (|last − next-to-last epoch| < {PLATEAU:g} point on every seed, on {share} of val): "
               f"{n_plateau} of {len(table)} methods; spread (sd over seeds ≤ {limit:g} points): {n_stable} of "
               f"{len(table)}.")
    header = ["method", "largest last-epoch change", "plateau", "sd over seeds", "spread"]
    rows = [[r["label"], fmt_number(r["change"]), word(r["plateau"]), fmt_number(r["sd"]), word(r["stable"])]
            for r in table.to_dict("records")]
    return summary, header, rows


def stage_times_table(times: Mapping[str, float]) -> str:
    """Stage wall times (seconds, the mean over the seeds) as a markdown table."""
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


def _seeds(p: Params) -> str:
    """The study's seeds: ``seeds 0, 1, 2 (n = 3)``."""
    word = "seeds" if len(p.seeds) > 1 else "seed"
    return f"{word} {', '.join(str(s) for s in p.seeds)} (n = {len(p.seeds)})"


def _epochs(p: Params) -> str:
    """Training epochs per task: ``6 epochs`` when every task trains as long, else ``6 epochs (cls 8)``."""
    own = [f"{t} {n}" for t in p.tasks if (n := p.train_epochs(t)[0]) != p.train.epochs]
    return f"{p.train.epochs} epochs" + (f" ({', '.join(own)})" if own else "")


def _intro(p: Params) -> list[str]:
    return [
        f"Dataset **{p.data.name}** ({_split_sizes(p)}{_hr_sizes(p)}), scale **x{p.degrade.scale}** (bicubic, antialias={p.degrade.antialias}), "
        f"SR **{_sr_name(p)}**, {_epochs(p)} per method "
        f"(SR pre-training {p.pretrain_sr.epochs}; SR4IR warm-up {p.train.sr4ir.warmup_epochs}), "
        f"TDP weight {p.train.sr4ir.tdp_weight}, CQMix p={p.train.sr4ir.cqmix_p}, {_seeds(p)}: every method "
        "is trained and evaluated once per seed.",
        "",
        "Metrics are from the last epoch on the val split (as the paper reports). PSNR is RGB on 8-bit levels with "
        f"a {p.eval.psnr_crop_border}-px border crop; LPIPS (VGG, v0.1) compares the same images with the same crop; "
        "H2T sees the HR image, so it has neither.",
    ]


# Requirement of the issue on seeds: what the verdict words mean, and what should reproduce across machines.
VERDICT_NOTE = (
    "How to read the verdicts: for each ordering the paper's published numbers give (a above b), the difference "
    "a − b is paired over seeds (the same seed's a and b) and its 95 % Student-t interval is computed. "
    "**holds**: the interval lies above 0; **reversed**: it lies below 0; **not resolved**: it contains 0, or "
    "there is only one seed. Bit-identical numbers are reproducible only on one machine, one thread count and one "
    "set of library versions; on another machine each seed's numbers move by training noise, and what should "
    "reproduce there is the verdicts, not the digits.")

FIGURE_CAPTIONS = {
    "results": "Left: task metric per method, bars at the mean over seeds with its 95 % interval (error bar) and "
               "each seed's value (dots); PSNR annotated. Right: validation metric per epoch, the mean over seeds "
               "with its 95 % interval per epoch (band; none with one seed).",
    "qualitative": "Val images through each method (the first seed's models), with the recogniser's prediction "
                   "(green: right, red: wrong).",
}


def _primary(df: pd.DataFrame) -> str:
    return next(c for c in df.columns if c.startswith("paper_") and c != "paper_lpips").removeprefix("paper_")


# A task's section: its name, its rows (one per method and seed), its Checks (None or [] for none), its figures.
Section = tuple[str, pd.DataFrame, Any, dict[str, str]]


def render_markdown(params: Params, sections: list[Section], times: Mapping[str, float],
                    convergence: Mapping[str, pd.DataFrame] | None = None) -> str:
    """The report as markdown: header, the verdict note, then per task its table, checks, convergence (task ->
    its convergence_table, where given) and figures."""
    out = ["# SR4IR study report", "", *_intro(params), "", VERDICT_NOTE, ""]
    for task, df, checks, figures in sections:
        primary = _primary(df)
        out += [f"## Task: {task}", "", markdown_table(df, primary, paper_label(task, params)), ""]
        if checks:
            out += ["Reproduction check, against the ordering of the paper's published numbers:", "",
                    *checks_markdown(checks), ""]
        if convergence and task in convergence:
            summary, header, rows = convergence_lines(convergence[task], primary, params.train.monitor_fraction)
            out += [f"- {summary}", "", "| " + " | ".join(header) + " |", "|---|---:|---|---:|---|",
                    *("| " + " | ".join(row) + " |" for row in rows), ""]
        for kind, fig in figures.items():
            out += [f"![{task} {kind}]({fig})", "", f"*{FIGURE_CAPTIONS.get(kind, '')}*", ""]
    if times:
        out += [f"## Stage wall times (mean over {len(params.seeds)} seeds)", "", stage_times_table(times), ""]
    return "\n".join(out)


def render_html(params: Params, sections: list[Section], times: Mapping[str, float], root: Path,
                convergence: Mapping[str, pd.DataFrame] | None = None) -> str:
    """The same report as one self-contained HTML file: figures are embedded as data URIs."""
    import base64
    import html

    def esc(x: Any) -> str:
        return html.escape(str(x))

    def img(rel: str, alt: str) -> str:
        data = base64.b64encode((root / rel).read_bytes()).decode()
        return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'

    def cell(text: str, tag: str = "td") -> str:
        bold = text.startswith("**") and text.endswith("**")
        return f"<{tag}>{'<b>' + esc(text[2:-2]) + '</b>' if bold else esc(text)}</{tag}>"

    def table(header: list[str], rows: list[list[str]]) -> str:
        return ("<table><tr>" + "".join(cell(h, "th") for h in header) + "</tr>"
                + "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows) + "</table>")

    body = ["<h1>SR4IR study report</h1>", f"<p>{esc(' '.join(_intro(params)).replace('**', ''))}</p>",
            f"<p>{esc(VERDICT_NOTE.replace('**', ''))}</p>"]
    for task, df, checks, figures in sections:
        primary = _primary(df)
        header, rows, notes = table_cells(df, primary)
        body += [f"<h2>Task: {esc(task)}</h2>", f"<p>Paper columns: {esc(paper_label(task, params))}.</p>",
                 f"<p>{esc(table_note(method_summary(df, primary)))}</p>", table(header, rows),
                 *(f'<p class="note">{esc(n)}</p>' for n in notes)]
        if checks:
            body += ["<h3>Reproduction check</h3><ul>" + "".join(f"<li>{esc(s)}</li>" for s in check_summary(checks))
                     + "</ul>", table(check_header(checks), check_rows(checks))]
        if convergence and task in convergence:
            summary, header, rows = convergence_lines(convergence[task], primary, params.train.monitor_fraction)
            body += ["<h3>Convergence and spread</h3>", f"<p>{esc(summary)}</p>", table(header, rows)]
        for kind, fig in figures.items():
            body += [f"<figure>{img(fig, f'{task} {kind}')}<figcaption>{esc(FIGURE_CAPTIONS.get(kind, ''))}</figcaption></figure>"]
    if times:
        body += [f"<h2>Stage wall times (mean over {len(params.seeds)} seeds)</h2>",
                 table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in times.items()])]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}figcaption{font-size:90%;color:#555}.note{font-size:90%;color:#555;margin:.3em 0}")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SR4IR study report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
