"""pipeline.track and src/tracking.py: the time summary, the parent run (its span, the aggregated table), stage run tags."""

from pathlib import Path

import pytest

from pipeline.track import _minutes


@pytest.mark.parametrize("seconds, text", [(0.4, "0.4 s"), (59.94, "59.9 s"), (59.96, "1 min 0 s"),
                                           (119.7, "2 min 0 s"), (905.6, "15 min 6 s")])
def test_durations_round_to_whole_seconds_from_a_minute_on_and_never_show_60_s(seconds, text):
    assert _minutes(seconds) == text


def test_stage_runs_make_a_parent_that_spans_the_pipeline_run_in_the_model_training_view(tmp_path, monkeypatch, tiny_params):
    """The parent run starts when the pipeline run began and ends with its last stage (it used to last 8 ms), and
    the experiment is tagged as model training, the view MLflow 3's UI opens it in."""
    import time

    from mlflow.tracking import MlflowClient

    from src.tracking import EXPERIMENT_KIND, stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() - 100.0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SR4IR_PIPELINE_RUN", "span-check")
    monkeypatch.setenv("SR4IR_PIPELINE_START", str(start))
    for name in ("first", "second"):
        with stage_run(name, tiny_params):
            time.sleep(0.05)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sr4ir")
    assert exp.tags[next(iter(EXPERIMENT_KIND))] == EXPERIMENT_KIND["mlflow.experimentKind"]
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = next(r for name, r in runs.items() if name.startswith("pipeline/"))
    assert parent.info.start_time == int(start * 1000) and parent.info.status == "FINISHED"
    assert parent.info.end_time >= runs["second"].info.end_time  # spans every stage: 100 s, not milliseconds
    assert parent.info.end_time - parent.info.start_time >= 100_000


def test_an_experiment_made_before_the_kind_tag_gets_it(tmp_path):
    from mlflow.tracking import MlflowClient

    from src.tracking import EXPERIMENT_KIND, Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("old")
    Tracker("old", uri=uri)
    assert MlflowClient(uri).get_experiment_by_name("old").tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"]


def test_the_dvc_process_start_is_the_parent_start_without_make_repro(monkeypatch):
    import os
    import time
    from pathlib import Path

    from src.tracking import pipeline_start

    monkeypatch.delenv("SR4IR_PIPELINE_START", raising=False)
    ticks = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    began = pipeline_start(f"{os.getpid()}-{ticks}")  # the key dvc_invocation_key gives a `dvc` process
    assert began is not None and time.time() - 3600 < began <= time.time() + 1
    assert pipeline_start("make-repro-key") is None


def test_stages_of_a_queued_dvc_experiment_log_to_the_repository_mlflow_db(tmp_path, monkeypatch):
    from src.tracking import default_uri, project_root

    temp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    assert project_root(temp) == tmp_path / "repo" and project_root(temp / "sub") == tmp_path / "repo"
    assert project_root(tmp_path / "repo") == tmp_path / "repo"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    temp.mkdir(parents=True)
    monkeypatch.chdir(temp)
    assert default_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"


RESULTS_CSV = """task,method,seed,metric,value,mean,ci95,n
cls,h2t,0,top1,98.0,97.0,2.484,3
cls,h2t,1,top1,97.0,97.0,2.484,3
cls,h2t,2,top1,96.0,97.0,2.484,3
cls,sr4ir,0,top1,90.2,90.2,,1
seg,sr4ir,0,mIoU,75.8,75.8,nan,1
"""


def _tiny(seeds):
    from src.config import parse_params
    from tests.conftest import TINY

    return parse_params({k: v for k, v in TINY.items() if k != "seed"} | {"seeds": seeds}, "tiny")


def _artifacts(client, run_id, folder="reports"):
    return sorted(f.path for f in client.list_artifacts(run_id, folder))


def test_the_parent_run_gets_the_aggregated_table_and_the_report(tmp_path):
    """log_results: mean, ci95 and n of every (task, method) from results.csv (once each, whatever the number of
    seed rows; no ci95 for one seed, where it is empty or NaN), and the report files as artifacts."""
    from mlflow.tracking import MlflowClient

    from src.tracking import Tracker, log_results

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("sr4ir", uri=uri)
    parent = tracker.start_run("pipeline/test")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "results.csv").write_text(RESULTS_CSV)
    (reports / "report.md").write_text("# report\n")
    (reports / "report.html").write_text("<h1>report</h1>\n")
    files = [reports / "report.md", reports / "report.html", reports / "results.csv", reports / "absent.png"]
    logged = log_results(tracker, parent, reports / "results.csv", files)
    expected = {"cls/h2t/mean": 97.0, "cls/h2t/ci95": 2.484, "cls/h2t/n": 3.0,
                "cls/sr4ir/mean": 90.2, "cls/sr4ir/n": 1.0, "seg/sr4ir/mean": 75.8, "seg/sr4ir/n": 1.0}
    assert logged == expected
    client = MlflowClient(uri)
    assert client.get_run(parent).data.metrics == expected
    assert len(client.get_metric_history(parent, "cls/h2t/mean")) == 1  # one value, not one per seed row
    assert _artifacts(client, parent) == ["reports/report.html", "reports/report.md", "reports/results.csv"]
    assert log_results(tracker, None, reports / "results.csv", files) == {}  # no parent run: nothing, no error


def test_track_logs_the_results_to_the_parent_run_after_linking(tmp_path, monkeypatch):
    """pipeline.track in a project whose report exists: the parent run of the key holds the table and files."""
    import argparse
    import shutil

    from mlflow.tracking import MlflowClient

    from pipeline import track

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "results.csv").write_text(RESULTS_CSV)
    (tmp_path / "reports" / "report.md").write_text("# report\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("SR4IR_PIPELINE_START", raising=False)
    track.main(argparse.Namespace(key="track-results"))
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sr4ir")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`sr4ir.pipeline_key` = 'track-results'")
    assert parent.data.metrics["cls/h2t/mean"] == 97.0 and parent.data.metrics["cls/h2t/ci95"] == 2.484
    assert "cls/sr4ir/ci95" not in parent.data.metrics
    assert _artifacts(client, parent.info.run_id) == ["reports/report.md", "reports/results.csv"]  # no HTML here


def test_every_stage_run_carries_its_task_method_and_seed(tmp_path, monkeypatch):
    """Tags task, method and seed (and the seed as a param) on each stage run: `mlflow ui` groups by them."""
    from mlflow.tracking import MlflowClient

    from src.tracking import stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SR4IR_PIPELINE_RUN", "tags-check")
    params = _tiny([4, 7])
    with stage_run("train/cls/h2t/seed7", params.with_seed(7), task="cls", method="h2t", seed=7):
        pass
    with stage_run("pretrain_sr/seed4", params.with_seed(4), method="sr_pretrain", seed=4):
        pass
    with stage_run("download", params):  # shared by every seed: no seed tag or param
        pass
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("sr4ir").experiment_id])}
    train, pretrain, download = runs["train/cls/h2t/seed7"], runs["pretrain_sr/seed4"], runs["download"]
    assert download.data.tags["seed"] == "" and "seed" not in download.data.params
    assert {k: train.data.tags[k] for k in ("task", "method", "seed")} == {"task": "cls", "method": "h2t", "seed": "7"}
    assert train.data.params["seed"] == "7" and pretrain.data.params["seed"] == "4"
    assert pretrain.data.tags["seed"] == "4" and pretrain.data.tags["method"] == "sr_pretrain"
    assert train.data.tags["mlflow.parentRunId"] == pretrain.data.tags["mlflow.parentRunId"]
