"""End to end: `dvc repro` on tiny params in a copy of the repository, then the caching contract."""

from __future__ import annotations

import json
import math
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("h2t", "l2t", "s2t", "t2s", "joint", "sr4ir")
TASKS = {"cls": "top1", "seg": "miou", "det": "map"}  # every task runs by default
SEEDS = tuple(TINY["seeds"])  # the tiny study trains two seeds: every (task, method) once per seed
FIRST_KEY = "e2e-first-repro"
# Generated state stays behind: only the repository's own files travel to the copy.
TOP_LEVEL_SKIP = {".venv", ".git", "data", "models", "metrics", "reports", "samples", "scores", "checkpoints", "mlruns",
                  "mlflow.db", "optuna.db", ".pytest_cache"}
ANYWHERE_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info")


def SKIP(folder: str, names: list[str]) -> set[str]:
    skipped = set(ANYWHERE_SKIP(folder, names))
    if Path(folder) == ROOT:
        skipped |= TOP_LEVEL_SKIP & set(names)
    if Path(folder) == ROOT / ".dvc":
        skipped |= {"cache", "tmp"} & set(names)
    return skipped


def _env(cwd: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}")
    return env | extra


def _run(args: list[str], cwd: Path, **extra: str) -> str:
    out = subprocess.run(args, cwd=cwd, env=_env(cwd, **extra), capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def _dvc(*args: str, cwd: Path, warm: bool = False, **extra: str) -> str:
    """`dvc <args>`; ``warm``: as `make repro` runs it, every stage forked from the warm server (pipeline/warm.py),
    which saves the ~4-8 s of imports a stage started afresh spends (test_a_stage_started_afresh... checks both
    ways write the same weights)."""
    launcher = [sys.executable, "-m", "pipeline.warm"] if warm else []
    return _run([*launcher, sys.executable, "-m", "dvc", *args], cwd, **extra)


def build_tiny_study(dest: Path) -> Path:
    """A copy of the repository at ``dest`` with tiny params, after one full `dvc repro` (conftest's
    session fixture ``tiny_study`` builds it once for every slow test)."""
    shutil.copytree(ROOT, dest, ignore=SKIP)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        if isinstance(values, dict):
            for k, v in values.items():
                if isinstance(v, dict):
                    params[section][k].update(v)
                else:
                    params[section][k] = v
        else:
            params[section] = values
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for f in ("dvc.lock",):
        (dest / f).unlink(missing_ok=True)
    _run(["git", "init", "-q"], dest)
    # As `make repro`: stages forked from the warm server, one key for the pipeline run.
    _dvc("repro", cwd=dest, warm=True, SR4IR_PIPELINE_RUN=FIRST_KEY)
    return dest


@pytest.fixture(scope="module")
def project(tiny_study) -> Path:
    """The shared tiny study; the tests below edit it in place (tests/test_nothing_lost.py works on copies)."""
    return tiny_study


@pytest.mark.slow
def test_repro_writes_every_method_of_every_task_and_the_report(project):
    for seed in SEEDS:
        for task, metric in TASKS.items():
            for m in METHODS:
                metrics = json.loads((project / f"metrics/eval/seed{seed}" / task / f"{m}.json").read_text())
                assert 0.0 <= metrics[metric] <= 100.0
                if m != "h2t":
                    assert math.isfinite(metrics["psnr"]) and metrics["psnr"] > 5.0
                assert (project / f"models/seed{seed}" / task / m / "rec.pt").is_file()
    report = (project / "reports/report.md").read_text()
    assert [line for line in report.splitlines() if line.startswith("# ")] == ["# SR4IR study report"]
    assert [line for line in report.splitlines() if line.startswith("## Task")] == [f"## Task: {t}" for t in TASKS]
    for label in ("H2T", "L2T", "S→T", "T→S", "S+T", "SR4IR"):
        assert report.count(f"| {label} |") == 2 * len(TASKS)  # per task: the results and the convergence table
    csv_lines = (project / "reports/results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(TASKS) * len(METHODS) * len(SEEDS)  # one row per task, method and seed
    for fig in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):  # every figure the report references exists
        assert (project / "reports" / fig).stat().st_size > 1000, fig
    for task in TASKS:
        assert f"figures/{task}_qualitative.png" in report and f"figures/{task}_results.png" in report
    html = (project / "reports/report.html").read_text()
    assert html.count("<img") == 2 * len(TASKS) and "src=\"figures/" not in html  # self-contained: data URIs only
    for label in ("H2T", "L2T", "S→T", "T→S", "S+T", "SR4IR"):
        assert html.count(f"<td>{label}</td>") == 2 * len(TASKS)
    assert report.count("- Convergence (|last − next-to-last epoch| < 1 point on every seed") == len(TASKS)


@pytest.mark.slow
def test_every_seed_is_its_own_draw_with_its_own_outputs_and_runs(project):
    """The seed axis: each (task, method, seed) has its weights, eval metrics and per-image scores; the seeds are
    different draws (not one run copied); each stage's MLflow run carries its seed."""
    for seed in SEEDS:
        assert (project / f"models/seed{seed}/sr_pretrained.pt").is_file()
        for task in TASKS:
            for m in METHODS:
                assert sorted(p.name for p in (project / f"models/seed{seed}" / task / m).iterdir()) == \
                    (["rec.pt"] if m in ("h2t", "l2t") else ["rec.pt", "sr.pt"])
                assert (project / f"metrics/eval/seed{seed}" / task / f"{m}.json").is_file()
                assert (project / f"scores/seed{seed}" / task / f"{m}.npz").is_file()
    assert {p.name for p in (project / "models").iterdir()} == {f"seed{seed}" for seed in SEEDS}
    a, b = ((project / f"models/seed{seed}/sr_pretrained.pt").read_bytes() for seed in SEEDS)
    assert a != b  # each seed pre-trains its own SR network
    evals = {seed: {(t, m): json.loads((project / f"metrics/eval/seed{seed}" / t / f"{m}.json").read_text())
                    for t in TASKS for m in METHODS} for seed in SEEDS}
    assert any(evals[SEEDS[0]][k][TASKS[k[0]]] != evals[SEEDS[1]][k][TASKS[k[0]]] for k in evals[SEEDS[0]]), evals
    _, runs = _runs(project)
    first = next(r for r in runs if r.data.tags.get("sr4ir.pipeline_key") == FIRST_KEY)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.info.run_id]
    per_seed = [r for r in children if r.info.run_name not in SHARED_RUNS]
    assert len(per_seed) == len(STAGE_RUNS) - len(SHARED_RUNS)
    for run in per_seed:
        seed = run.info.run_name.rpartition("/seed")[2]
        assert run.data.tags["seed"] == seed and run.data.params["seed"] == seed, run.info.run_name
        assert run.data.params["seeds"] == str(list(SEEDS))


@pytest.mark.slow
def test_adding_a_seed_adds_its_stages_and_leaves_the_other_seeds_cached(tiny_study, tmp_path):
    """params.yaml's seeds: [0, 1] -> [0, 1, 2]: only seed 2's stages and the report (which reads seeds) are to
    run; no stage of seeds 0 and 1 depends on the list."""
    copy = tmp_path / "repo"
    shutil.copytree(tiny_study, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    assert params["seeds"] == list(SEEDS)
    params["seeds"] = [*SEEDS, 2]
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], copy).strip().splitlines()[-1])
    assert set(status) == seed_stages(2) | {"report"}, sorted(set(status) ^ (seed_stages(2) | {"report"}))
    assert status["report"] == [{"changed deps": {"params.yaml": {"seeds": "modified"}}}]  # nothing else of it changed


@pytest.mark.slow
def test_dvc_plots_render_the_training_curves(project):
    out = _dvc("plots", "show", "--json", cwd=project)
    shown, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
    assert not shown.get("errors"), shown.get("errors")
    data = shown["data"]
    for title in ("Validation top-1 per epoch", "Validation mIoU per epoch", "Validation mAP per epoch"):
        curves = [k for k in data if title in k]
        assert curves, (title, sorted(data))
        points = json.dumps(data[curves[0]])
        assert all(m in points for m in ("h2t", "sr4ir"))  # one curve per method file


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_html_renders_in_headless_chromium_with_no_missing_images(project, tmp_path):
    page = tmp_path / "report.html"
    # Count images that failed to load once the page has loaded, and expose the count in the DOM.
    probe = ("<script>window.addEventListener('load',()=>{const bad=[...document.images].filter("
             "i=>!i.complete||i.naturalWidth===0).length;document.body.setAttribute('data-images',"
             "document.images.length);document.body.setAttribute('data-broken',bad);});</script>")
    page.write_text((project / "reports/report.html").read_text().replace("</body>", probe + "</body>"))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'data-broken="0"' in out.stdout
    assert f'data-images="{2 * len(TASKS)}"' in out.stdout


def _runs(project: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr4ir")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


SHARED_RUNS = {"code", "download", "degrade", "report"}  # the stages every seed shares
STAGE_RUNS = {*SHARED_RUNS, *(f"pretrain_sr/seed{seed}" for seed in SEEDS),
              *(f"{s}/{t}/{m}/seed{seed}" for s in ("train", "evaluate") for t in TASKS for m in METHODS for seed in SEEDS)}


@pytest.mark.slow
def test_one_parent_run_per_repro_with_a_tagged_child_per_stage(project):
    client, runs = _runs(project)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name.startswith("pipeline/")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.info.run_name for r in children} == STAGE_RUNS
    sr4ir = next(r for r in children if r.info.run_name == "train/cls/sr4ir/seed0")
    tags = sr4ir.data.tags
    assert tags["task"] == "cls" and tags["method"] == "sr4ir" and tags["scale"] == "4" and tags["seed"] == "0"
    assert {"git.commit", "git.dirty", "params.hash", "dvc.stage", "dvc.md5.sr.pt", "dvc.md5.rec.pt"} <= set(tags)
    assert sr4ir.data.params["train.sr4ir.tdp_weight"] == "1.0"  # flattened params
    steps = [m.step for m in client.get_metric_history(sr4ir.info.run_id, "train/loss_tdp")]
    assert steps == [2]  # TDP after the 1-epoch warm-up, logged per epoch
    assert [m.step for m in client.get_metric_history(sr4ir.info.run_id, "val/top1")] == [1, 2]


@pytest.mark.slow
def test_second_repro_does_nothing(project):
    _, before = _runs(project)
    out = _dvc("repro", cwd=project)
    assert "Running stage" not in out
    assert "up to date" in _dvc("status", cwd=project)
    _, after = _runs(project)
    assert len(after) == len(before)  # nothing ran, nothing logged


@pytest.mark.slow
def test_track_says_where_the_time_of_the_pipeline_run_went(project):
    start = time.time() - 4 * 3600.0  # hours before now: the wall time only has to cover the stages (both seeds' loops)
    out = _run([sys.executable, "-m", "pipeline.track"], project, SR4IR_PIPELINE_RUN=FIRST_KEY, SR4IR_PIPELINE_START=str(start))
    printed = re.search(rf"track: {len(STAGE_RUNS)} stages ran; training and evaluation loops .*overhead \(all but the loops\) "
                        r"(9\d\.\d) %", out)
    assert printed, out
    client, runs = _runs(project)
    parent = next(r for r in runs if r.data.tags.get("sr4ir.pipeline_key") == FIRST_KEY)
    t = {k.removeprefix("time/"): v for k, v in parent.data.metrics.items() if k.startswith("time/")}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    loops = sum(r.data.metrics.get("time/loop_s", 0.0) for r in children)
    assert t["stages"] == len(STAGE_RUNS) and t["loop_s"] == pytest.approx(loops) and 0 < t["loop_s"] < t["stage_s"]
    assert all("time/loop_s" in r.data.metrics for r in children if r.info.run_name.startswith(("train/", "evaluate/")))
    assert t["wall_s"] >= 4 * 3600 and t["outside_s"] == pytest.approx(t["wall_s"] - t["stage_s"])
    assert t["overhead_pct"] == pytest.approx(100 * (t["wall_s"] - t["loop_s"]) / t["wall_s"])
    assert float(printed[1]) == pytest.approx(t["overhead_pct"], abs=0.051)  # the line says what the run logged


@pytest.mark.slow
def test_a_fully_cached_make_repro_still_records_the_whole_study(project):
    """What `make repro` does: one key for dvc repro and pipeline.track; nothing runs, all stages are linked."""
    _, before = _runs(project)
    out = _dvc("repro", cwd=project, SR4IR_PIPELINE_RUN="cached-check")
    assert "Running stage" not in out
    _run([sys.executable, "-m", "pipeline.track"], project, SR4IR_PIPELINE_RUN="cached-check")
    client, runs = _runs(project)
    parent = [r for r in runs if r.data.tags.get("sr4ir.pipeline_key") == "cached-check"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert {r.info.run_name for r in children} == STAGE_RUNS
    originals = {r.info.run_id for r in before}
    assert all(r.data.tags["dvc.cached"] == "true" and r.data.tags["linked_run_id"] in originals for r in children)


@pytest.mark.slow
def test_unreachable_tracking_server_never_fails_a_stage(project):
    out_file = project / "metrics/eval/seed0/cls/h2t.json"
    original = out_file.read_bytes()
    out_file.unlink()
    try:
        _run([sys.executable, "-m", "pipeline.evaluate", "--task", "cls", "--method", "h2t", "--seed", "0"], project,
             MLFLOW_TRACKING_URI="http://127.0.0.1:9", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        assert json.loads(out_file.read_text())["top1"] >= 0.0
    finally:
        out_file.write_bytes(original)  # later tests compare against the tracked runs' outputs


@pytest.mark.slow
def test_changing_the_tdp_weight_reruns_only_sr4ir_its_evaluation_and_the_report(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["sr4ir"]["tdp_weight"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc("repro", cwd=project, warm=True, SR4IR_PIPELINE_RUN="tdp-weight")  # as make repro: one key, forked stages
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # SR4IR of every task and seed and its evaluation re-run, then the report; nothing else may run.
    sr4ir = {f"{stage}@{task}-sr4ir-{seed}" for stage in ("train_from_sr", "evaluate") for task in TASKS for seed in SEEDS}
    assert sr4ir <= ran <= sr4ir | {"report"}
    # The new pipeline run still shows the whole study: the cached stages are linked to the runs that made them.
    client, runs = _runs(project)
    parents = sorted((r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    assert len(parents) >= 2  # the first repro's, (the cached check's,) and this one's
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[-1].info.run_id]
    assert "report" in ran  # a new TDP weight changes the SR weights, hence PSNR, hence the report
    assert {r.info.run_name for r in children} == STAGE_RUNS
    linked = {r.info.run_name: r for r in children if r.data.tags.get("dvc.cached") == "true"}
    assert set(linked) == STAGE_RUNS - {f"{stage}/{task}/sr4ir/seed{seed}" for stage in ("train", "evaluate")
                                        for task in TASKS for seed in SEEDS} - {"report"}
    first = {r.info.run_id: r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert all(first[r.data.tags["linked_run_id"]] == name for name, r in linked.items())


@pytest.mark.slow
def test_bad_params_fail_before_work_naming_the_key(project):
    env = _env(project)
    bad = project / "bad"
    shutil.copytree(project, bad, ignore=shutil.ignore_patterns("bad"))
    text = (bad / "params.yaml").read_text().replace("scale: 4", "scale: 3")
    (bad / "params.yaml").write_text(text)
    out = subprocess.run([sys.executable, "-m", "pipeline.degrade"], cwd=bad, env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "params.yaml: degrade.scale: Input should be 2, 4 or 8" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_stage_started_afresh_writes_the_same_weights_as_the_warm_servers_fork(project):
    """The fixture's repro ran every stage in a fork of the warm server; plain `dvc repro` starts a new process."""
    models = sorted((project / "models/seed1/cls/sr4ir").glob("*.pt"))  # a seed other than seeds[0]: --seed reaches it
    before = {p.name: p.read_bytes() for p in models}
    out = _dvc("repro", "-f", "-s", "train_from_sr@cls-sr4ir-1", cwd=project)
    assert "Running stage 'train_from_sr@cls-sr4ir-1'" in out
    assert {p.name: p.read_bytes() for p in models} == before and set(before) == {"sr.pt", "rec.pt"}


@pytest.mark.slow
def test_degrade_rewriting_the_same_images_leaves_every_later_stage_cached(project):
    """The stages after degrade depend on data/manifest.json: rewritten with the same bytes, nothing re-runs."""
    manifest = project / "data" / "manifest.json"
    before = manifest.read_bytes()
    summary = json.loads(before)
    assert {k: summary[k]["files"] for k in ("raw", "lr")} == {
        "raw": sum(1 for p in (project / "data/raw").rglob("*") if p.is_file()),
        "lr": sum(1 for p in (project / "data/lr").rglob("*") if p.is_file())}
    status = _dvc("status", cwd=project)  # earlier tests may have left the report behind, nothing else
    out = _dvc("repro", "-f", "-s", "degrade", cwd=project)
    assert "Running stage 'degrade'" in out
    assert manifest.read_bytes() == before
    assert _dvc("status", cwd=project) == status and "degrade" not in status


def _changed_deps(project: Path) -> dict[str, set[str]]:
    """`dvc status`: stage -> the deps it finds changed (a folder dep is named, not the file in it)."""
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], project).strip().splitlines()[-1] or "{}")
    return {stage: {d for change in changes if isinstance(change, dict) for d in change.get("changed deps", {})}
            for stage, changes in status.items() if isinstance(changes, list)}


def _stages_stale_through(project: Path, rel: str) -> set[str]:
    """The stages an edit at ``rel`` makes stale: `dvc status` names ``rel`` (or its folder) under the code stage
    alone; once the code stage has rewritten the fingerprints (`dvc repro -s code`, untracked), the stages whose
    ``data/code/*.json`` changed."""
    before = _changed_deps(project)
    through = {stage for stage, deps in before.items() if any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)}
    assert through <= {"code"}, through
    _run([sys.executable, "-m", "dvc", "repro", "-s", "code"], project, SR4IR_TRACKING="0")
    return {stage for stage, deps in _changed_deps(project).items() if any(d.startswith("data/code/") for d in deps)}


# One function edited in each module (the edit itself does not matter to DVC: any byte does), and the stages whose
# outputs that module can change, written out by hand from what each stage computes.
def seed_stages(seed: int) -> set[str]:
    """The stages dvc.yaml makes for one seed of ``seeds``."""
    return {f"pretrain_sr@{seed}", *(f"train@{t}-{m}-{seed}" for t in TASKS for m in ("h2t", "l2t")),
            *(f"train_from_sr@{t}-{m}-{seed}" for t in TASKS for m in ("s2t", "joint", "sr4ir")),
            *(f"train_t2s@{t}-{seed}" for t in TASKS), *(f"evaluate@{t}-{m}-{seed}" for t in TASKS for m in METHODS)}


ALL_STAGES = {"download", "degrade", "report", *(stage for seed in SEEDS for stage in seed_stages(seed))}  # but code
EDITS = [
    # seeding decides every stage's randomness, atomic writes every output
    ("src/utils.py", '    """Seed Python, NumPy and torch; return a torch generator for data order."""\n',
     '    """Seed Python, NumPy and torch; return a torch generator for data order."""\n    seed = int(seed)\n', ALL_STAGES),
    # what a method loads and trains: every stage that trains or evaluates one, and the report (its labels)
    ("src/methods.py", '        return self.sr_start in ("pretrain_sr", "div2k")\n',
     '        return self.sr_start != "random"\n', ALL_STAGES - {"download", "degrade"}),
    # the report's formatting: the report alone
    ("src/report.py", '    """A table cell: ``x`` with ``digits`` decimals, or ``missing`` for None/NaN."""\n',
     '    """A table cell: ``x`` with ``digits`` decimals, or ``missing`` for None/NaN."""\n    digits = int(digits)\n', {"report"}),
    # an output-neutral module (MLflow logging): nothing
    ("src/tracking.py", "    def log_artifact(self, path: Path, folder: str | None = None) -> None:\n",
     "    def log_artifact(self, path: Path, folder: str | None = None) -> None:\n        path = Path(path)\n", set()),
]


@pytest.mark.slow
@pytest.mark.parametrize(("rel", "old", "new", "expected"), EDITS, ids=[e[0] for e in EDITS])
def test_an_edit_makes_exactly_the_stages_whose_outputs_it_can_change_stale(project, rel, old, new, expected):
    path = project / rel
    original = path.read_text()
    assert old in original, f"{rel}: the edited line moved; update EDITS"
    # No check that nothing is stale before the edit: a stage left stale would show up in the set below and
    # fail the test, and the check after the restore is the next edit's precondition.
    try:
        path.write_text(original.replace(old, new, 1))
        assert _stages_stale_through(project, rel) == expected
    finally:
        path.write_text(original)
    assert _stages_stale_through(project, rel) == set()
