"""Compare the verdicts of two runs of the study: what should reproduce on another machine.

Across machines the digits of a seeded CPU run differ (float-level differences from the first training step on),
so the check of a reproduction is statistical: every ordering the report judges (the paper's pairwise orderings
and the headline claim) should get a verdict on the second run that does not contradict the first one's. A
``holds`` that becomes ``not resolved`` is noise and allowed; a ``holds`` that becomes ``reversed`` (or the
reverse) is a contradiction, and this command exits with status 1. It also lists the (task, method) means
that moved beyond noise between the runs (Welch's 95 % interval of the difference excludes 0): expected to be
rare across CPUs; many of them point at something other than float rounding (other params, data or library
versions). They are reported, and do not change the exit status.

    python -m src.compare_verdicts other_machine/reports/results.csv reports/results.csv
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.report import ordering_check, per_seed
from src.stats import HOLDS, REVERSED, Interval, mean_interval, verdict, welch_difference

OPPOSITE = {"holds": "reversed", "reversed": "holds"}


@dataclass(frozen=True)
class Change:
    task: str
    ordering: str  # "A > B"
    first: str
    second: str

    @property
    def contradicts(self) -> bool:
        return OPPOSITE.get(self.first) == self.second


def read_results(path: Path) -> pd.DataFrame:
    """``reports/results.csv`` of a run, with a clear error when it is not one."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a run's reports/results.csv)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a CSV file ({err})") from None
    missing = {"task", "method", "seed", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected a run's reports/results.csv")
    return df


@dataclass(frozen=True)
class Shift:
    """One (task, method)'s mean over seeds in both runs, and the Welch interval of second − first."""
    task: str
    label: str
    first_mean: float
    second_mean: float
    diff: Interval

    @property
    def beyond_noise(self) -> bool:
        return verdict(self.diff) in (HOLDS, REVERSED)


def shifts(first: pd.DataFrame, second: pd.DataFrame) -> list[Shift]:
    """Every (task, method) both runs trained, in the first run's order."""
    out = []
    for (task, method), a in first.groupby(["task", "method"], sort=False):
        vb = list(per_seed(second[second["task"] == task], str(method), "value").values())
        if not vb:
            continue
        va = list(per_seed(a, str(method), "value").values())
        label = str(a["label"].iloc[0]) if "label" in a else str(method)
        out.append(Shift(str(task), label, mean_interval(va).mean, mean_interval(vb).mean, welch_difference(vb, va)))
    return out


def verdicts(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(task, "higher > lower") -> verdict, for every ordering and headline comparison of every task."""
    out: dict[tuple[str, str], str] = {}
    for task, rows in df.groupby("task", sort=False):
        primary = str(rows["metric"].iloc[0])
        checks = ordering_check(rows.reset_index(drop=True), primary)
        for c in checks.orderings + checks.headline:
            out[(str(task), f"{c.higher} > {c.lower}")] = c.word
    return out


def compare(first: pd.DataFrame, second: pd.DataFrame) -> tuple[list[Change], int]:
    """The comparisons whose verdict differs between the runs, and how many both runs judged."""
    a, b = verdicts(first), verdicts(second)
    shared = [k for k in a if k in b]
    return [Change(t, o, a[(t, o)], b[(t, o)]) for t, o in shared if a[(t, o)] != b[(t, o)]], len(shared)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.compare_verdicts", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 no contradiction; 1 a verdict reversed; 2 a missing or "
                                            "malformed results file.")
    parser.add_argument("first", type=Path, help="one run's reports/results.csv")
    parser.add_argument("second", type=Path, nargs="?", default=Path("reports/results.csv"),
                        help="the other run's (default: reports/results.csv)")
    args = parser.parse_args(argv)
    try:
        first, second = read_results(args.first), read_results(args.second)
        changes, n = compare(first, second)
        means = shifts(first, second)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    moved = [m for m in means if m.beyond_noise]
    for m in moved:
        print(f"{m.task}: {m.label} mean {m.first_mean:.2f} -> {m.second_mean:.2f}: {m.diff.mean:+.2f} "
              f"[{m.diff.low:+.2f}, {m.diff.high:+.2f}] (Welch 95 %), beyond noise")
    print(f"{len(means)} means: {len(means) - len(moved)} within noise, {len(moved)} moved beyond it")
    contradictions = [c for c in changes if c.contradicts]
    for c in changes:
        mark = "  CONTRADICTS" if c.contradicts else ""
        print(f"{c.task}: {c.ordering}: {c.first} -> {c.second}{mark}")
    print(f"{n} comparisons: {n - len(changes)} same verdict, {len(changes) - len(contradictions)} changed within "
          f"noise (holds/reversed <-> not resolved), {len(contradictions)} contradicted")
    sys.exit(1 if contradictions else 0)


if __name__ == "__main__":
    main()
