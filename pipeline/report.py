"""DVC stage `report`: reports/report.md, reports/results.csv and a figure per task, from the metrics files."""

import argparse
import logging

import numpy as np

import pandas as pd

from pipeline import _stage, paths
from src.config import load_params
from src.methods import TABLE_METHODS
from src.report import ordering_check, plot_qualitative, plot_results, render_html, render_markdown, results_table
from src.tasks import TASKS, build_task
from src.tracking import stage_run
from src.utils import atomic_path, read_json, write_text_atomic


def main(args: argparse.Namespace) -> None:
    params = load_params()
    with stage_run("report", params) as run:
        _report(params)
        for f in ("report.md", "report.html", "results.csv"):
            run.log_artifact(paths.REPORTS / f)
        for figure in sorted((paths.REPORTS / "figures").glob("*.png")):  # results and each method's samples, per task
            run.log_artifact(figure, "figures")
        run.tag_identity([paths.REPORTS / "report.md"])
        linked = run.link_cached(paths.stage_outputs(params.tasks, TABLE_METHODS))
        if linked:
            logging.info("report: linked %d cached stages into this pipeline run", len(linked))


def _report(params) -> None:
    # The figures folder is built aside and swapped in whole (with persist: true in dvc.yaml DVC no longer
    # empties it first): a failure leaves the previous report as it was, and no figure of a task left out stays.
    with atomic_path(paths.REPORTS / "figures") as staged:
        staged.mkdir()
        sections, frames, times = _figures(params, staged)
    # The CSV keeps the numbers; why LPIPS is missing (lpips_note) is a footnote of the report's tables.
    table = pd.concat(frames).drop(columns=["lpips_note"], errors="ignore")
    write_text_atomic(paths.REPORTS / "results.csv", table.to_csv(index=False, float_format="%.3f"))
    write_text_atomic(paths.REPORTS / "report.md", render_markdown(params, sections, times))
    write_text_atomic(paths.REPORTS / "report.html", render_html(params, sections, times, paths.REPORTS))
    logging.info("report: %s", paths.REPORTS / "report.md")


def _figures(params, staged):
    """Each task's table and figures (written into ``staged``, the figures folder to be)."""
    times = {"pretrain_sr": read_json(paths.PRETRAIN_HISTORY)["seconds"]}
    sections, frames = [], []
    for task in params.tasks:
        primary = TASKS[task].primary_metric
        metrics = {m: read_json(paths.eval_metrics(task, m)) for m in TABLE_METHODS}
        histories = {}
        for m in TABLE_METHODS:
            h = read_json(paths.train_history(task, m))
            histories[m] = h["epochs"]
            times[f"train {task}/{m}"] = h["seconds"]
        df = results_table(task, metrics, primary, params)
        figures = {"results": f"figures/{task}_results.png", "qualitative": f"figures/{task}_qualitative.png"}
        plot_results(df, histories, primary, staged / f"{task}_results.png")
        samples = {m: dict(np.load(paths.eval_samples(task, m))) for m in TABLE_METHODS}
        # The class count the samples were saved with (data/raw is no dep of this stage: do not read it).
        n_classes = len(samples["h2t"]["class_names"])
        plot_qualitative(build_task(task, params, num_classes=n_classes), samples, staged / f"{task}_qualitative.png")
        sections.append((task, df, ordering_check(df, primary), figures))
        frames.append(df)
    return sections, frames, times


if __name__ == "__main__":
    _stage.run(main, argparse.ArgumentParser(description=__doc__))
