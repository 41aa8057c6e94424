"""DVC stage `report`: reports/report.md, reports/results.csv and a figure per task, from the metrics files of
every seed in params.yaml's ``seeds`` (only those: a seed removed from the list may still have files on disk)."""

import argparse
import logging
from pathlib import Path

import numpy as np

import pandas as pd

from pipeline import _stage, paths
from src.config import load_params
from src.methods import TABLE_METHODS
from src.figures import plot_qualitative, plot_results
from src.report import (add_bootstrap_intervals, convergence_table, ordering_check, render_html, render_markdown,
                        study_table)
from src.tasks import TASKS, build_task
from src.tracking import stage_run
from src.utils import atomic_path, read_json, write_text_atomic

TRAIN_STAGE = {"h2t": "train", "l2t": "train", "s2t": "train_from_sr", "joint": "train_from_sr", "sr4ir": "train_from_sr"}


def main(args: argparse.Namespace) -> None:
    params = load_params()
    with stage_run("report", params) as run:
        _report(params)
        for f in ("report.md", "report.html", "results.csv"):
            run.log_artifact(paths.REPORTS / f)
        for figure in sorted((paths.REPORTS / "figures").glob("*.png")):  # results and each method's samples, per task
            run.log_artifact(figure, "figures")
        run.tag_identity([paths.REPORTS / "report.md"])
        linked = run.link_cached(paths.stage_outputs(params.tasks, TABLE_METHODS, params.seeds))
        if linked:
            logging.info("report: linked %d cached stages into this pipeline run", len(linked))


def _report(params) -> None:
    # The figures folder is built aside and swapped in whole (with persist: true in dvc.yaml DVC no longer
    # empties it first): a failure leaves the previous report as it was, and no figure of a task left out stays.
    with atomic_path(paths.REPORTS / "figures") as staged:
        staged.mkdir()
        sections, frames, times, convergence = _figures(params, staged)
    # One row per (task, method, seed); why LPIPS is missing (lpips_note) is a footnote of the report's tables.
    table = pd.concat(frames).drop(columns=["lpips_note"], errors="ignore")
    write_text_atomic(paths.REPORTS / "results.csv", table.to_csv(index=False, float_format="%.3f"))
    write_text_atomic(paths.REPORTS / "report.md", render_markdown(params, sections, times, convergence))
    write_text_atomic(paths.REPORTS / "report.html", render_html(params, sections, times, paths.REPORTS, convergence))
    logging.info("report: %s", paths.REPORTS / "report.md")


def _needed(path: Path, stage: str) -> Path:
    """``path``, which ``stage`` writes; missing: a one-line error naming both."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: run its stage first (dvc repro {stage})")
    return path


def _train_stage(task: str, method: str, seed: int) -> str:
    """The DVC stage that trains ``method`` for ``task`` with ``seed`` (dvc.yaml's matrix names)."""
    if method == "t2s":
        return f"train_t2s@{task}-{seed}"
    return f"{TRAIN_STAGE[method]}@{task}-{method}-{seed}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _figures(params, staged):
    """Each task's table and figures (written into ``staged``, the figures folder to be), the stage wall times
    (the mean over the seeds) and each task's convergence table."""
    seeds = list(params.seeds)
    resamples = params.eval.bootstrap
    times = {"pretrain_sr": _mean([read_json(_needed(paths.pretrain_history(s), f"pretrain_sr@{s}"))["seconds"]
                                   for s in seeds])}
    sections, frames, convergence = [], [], {}
    for task in params.tasks:
        primary = TASKS[task].primary_metric
        metrics = {s: {m: read_json(_needed(paths.eval_metrics(task, m, s), f"evaluate@{task}-{m}-{s}"))
                       for m in TABLE_METHODS} for s in seeds}
        histories = {}
        for m in TABLE_METHODS:
            runs = [read_json(_needed(paths.train_history(task, m, s), _train_stage(task, m, s))) for s in seeds]
            histories[m] = [h["epochs"] for h in runs]
            times[f"train {task}/{m}"] = _mean([h["seconds"] for h in runs])
        df = study_table(task, metrics, primary, params)
        scores = None
        if len(seeds) == 1:  # no interval over seeds: the test-set one, from the per-image scores
            scores = {m: dict(np.load(_needed(paths.eval_scores(task, m, seeds[0]), f"evaluate@{task}-{m}-{seeds[0]}")))
                      for m in TABLE_METHODS}
            df = add_bootstrap_intervals(df, scores, resamples)
        figures = {"results": f"figures/{task}_results.png", "qualitative": f"figures/{task}_qualitative.png"}
        plot_results(df, histories, primary, staged / f"{task}_results.png")
        samples = {m: dict(np.load(_needed(paths.eval_samples(task, m, seeds[0]), f"evaluate@{task}-{m}-{seeds[0]}")))
                   for m in TABLE_METHODS}
        # The class count the samples were saved with (data/raw is no dep of this stage: do not read it).
        n_classes = len(samples["h2t"]["class_names"])
        plot_qualitative(build_task(task, params, num_classes=n_classes), samples, staged / f"{task}_qualitative.png")
        sections.append((task, df, ordering_check(df, primary, scores, resamples), figures))
        convergence[task] = convergence_table(df, histories, primary)
        frames.append(df)
    return sections, frames, times, convergence


if __name__ == "__main__":
    _stage.run(main, argparse.ArgumentParser(description=__doc__))
