"""pipeline.track's time summary: how durations read."""

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
