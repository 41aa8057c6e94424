"""The README's results table is the committed study's: every mean, interval, per-seed value and PSNR in it is
the one `reports/results.csv` holds at HEAD (a local `make repro` on another machine rewrites the file, not the
commit, so the check reads the committed version where git has it)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from src.methods import METHODS, TABLE_METHODS

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("cls", "seg", "det")
LABELS = {METHODS[name].label: name for name in TABLE_METHODS}  # the README's rows are Table 1's methods
CELL = re.compile(r"^\**(?P<mean>-?[\d.]+) ± (?P<ci>[\d.]+)\** \((?P<seeds>[^)]*)\)$")


def committed_results() -> str:
    """reports/results.csv as committed at HEAD, or the working copy outside a git checkout."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "show", "HEAD:reports/results.csv"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        if out.returncode == 0:
            return out.stdout
    return (ROOT / "reports/results.csv").read_text()


def readme_rows(text: str) -> dict[str, list[str]]:
    """The rows of the README's results table (the one headed 'Method | cls top-1'), by method label."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Method | cls top-1"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def expected(csv_text: str) -> dict[tuple[str, str], dict]:
    by = defaultdict(list)
    for row in csv.DictReader(io.StringIO(csv_text)):
        by[(row["task"], row["method"])].append(row)
    out = {}
    for key, rows in by.items():
        rows.sort(key=lambda r: int(r["seed"]))
        psnr = [float(r["psnr"]) for r in rows if r["psnr"]]
        out[key] = {"mean": f"{float(rows[0]['mean']):.1f}", "ci": f"{float(rows[0]['ci95']):.1f}",
                    "seeds": " / ".join(f"{float(r['value']):.1f}" for r in rows),
                    "psnr": f"{sum(psnr) / len(psnr):.2f}" if psnr else "—"}
    return out


def mismatches(readme: str, csv_text: str) -> list[str]:
    """Every cell of the README's results table that differs from what results.csv gives, one line each."""
    rows, want, bad = readme_rows(readme), expected(csv_text), []
    if set(rows) != set(LABELS):
        return [f"rows {sorted(rows)}, expected {sorted(LABELS)}"]
    for label, cells in rows.items():
        method = LABELS[label]
        for task, cell in zip(TASKS, cells[:3]):
            m = CELL.match(cell)
            ref = want[(task, method)]
            if not m:
                bad.append(f"{label} {task}: {cell!r} is not 'mean ± ci (seed / seed / ...)'")
            elif (m["mean"], m["ci"], m["seeds"]) != (ref["mean"], ref["ci"], ref["seeds"]):
                bad.append(f"{label} {task}: {cell!r}, results.csv: {ref['mean']} ± {ref['ci']} ({ref['seeds']})")
        psnr = " / ".join(want[(t, method)]["psnr"] for t in TASKS)
        if cells[3] != psnr:
            bad.append(f"{label} PSNR: {cells[3]!r}, results.csv: {psnr!r}")
    return bad


def test_the_readme_results_table_is_the_committed_results_csv():
    assert mismatches((ROOT / "README.md").read_text(), committed_results()) == []


def test_a_stale_number_is_caught_with_its_row_and_task():
    readme, results = (ROOT / "README.md").read_text(), committed_results()
    cell = readme_rows(readme)["SR4IR"][2]
    mean = expected(results)[("det", "sr4ir")]["mean"]
    stale = readme.replace(cell, cell.replace(mean, f"{float(mean) + 0.1:.1f}", 1), 1)
    assert [line.split(":")[0] for line in mismatches(stale, results)] == ["SR4IR det"]
    one_seed_less = readme.replace(cell, cell.rsplit(" / ", 1)[0] + ")", 1)
    assert [line.split(":")[0] for line in mismatches(one_seed_less, results)] == ["SR4IR det"]
