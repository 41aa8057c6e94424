"""The report: per task and method the mean and 95 % interval over seeds beside the paper's numbers (of this
very setting when published, otherwise the task's published setting, labelled as another setting: orderings
only), verdicts on the paper's orderings from paired differences over seeds, results.csv and the figures."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from src import profile
from src.config import Params, parse_params
from src.figures import DRAW, draw_boxes, draw_label, draw_mask, plot_qualitative, plot_results
from src.report import (markdown_table, ordering_check, paper_reference, render_html, render_markdown, results_table,
                        study_table)
from src.tasks import TASKS, build_task

ROOT = Path(__file__).resolve().parents[1]
T95_2 = 4.302652729911275  # Student t, 2 degrees of freedom, two-sided 95 %
# Three seeds, made so that against the paper's order (H2T > SR4IR > S→T > S+T > L2T > T→S, every task) the
# paired differences SR4IR − L2T are [1, 2, 3] (mean 2, half-width 4.3027 / sqrt(3) = 2.484: not resolved),
# SR4IR − T→S are [-5, -6, -7] (reversed) and SR4IR − S→T are [4, 5, 6] (holds).
SEEDS = {
    "h2t": [80.0, 81.0, 82.0],
    "l2t": [55.0, 55.0, 55.0],
    "s2t": [52.0, 52.0, 52.0],
    "t2s": [61.0, 63.0, 65.0],
    "joint": [46.0, 47.0, 48.0],
    "sr4ir": [56.0, 57.0, 58.0],
}
PSNR = [24.0, 25.0, 26.0]


def _metrics(primary: str, seeds: tuple[int, ...] = (0, 1, 2), values: dict | None = None) -> dict[int, dict]:
    """seed -> method -> eval metrics, as the evaluate stages write them."""
    values = values or SEEDS
    return {s: {m: {primary: v[i], **({} if m == "h2t" else {"psnr": PSNR[i], "lpips": 0.4})} for m, v in values.items()}
            for i, s in enumerate(seeds)}


def _profile(name: str, scale: int, sr: str) -> Params:
    root = ROOT / "configs/paper"
    return parse_params(profile.resolve(root / f"{name}.yaml", scale, sr, root))


def _by_pair(checks):
    return {(c.higher, c.lower): c for c in [*checks.orderings, *checks.headline]}


def test_a_published_setting_gets_its_own_numbers_and_lpips():
    params = _profile("seg_voc", 8, "edsr")
    ref, same = paper_reference("seg", params)
    assert same and ref["values"]["sr4ir"] == 55.0
    df = study_table("seg", _metrics("miou"), "miou", params)
    assert (df[df["method"] == "sr4ir"]["paper_lpips"] == 0.380).all()
    assert df[df["method"] == "h2t"]["paper_lpips"].isna().all()  # H2T has none by definition
    md = render_markdown(params, [("seg", df, ordering_check(df, "miou"), {})], {})
    assert "Paper columns: VOC2012, x8, EDSR-baseline." in md and "another setting" not in md
    # mean ± half-width (4.3027 / sqrt(3) = 2.484 for [56, 57, 58]), every seed, n, PSNR and LPIPS as means
    assert "| SR4IR | 57.0 ± 2.5 | 56.0 / 57.0 / 58.0 | 3 | 25.00 | 0.400 | 55.0 | 0.380 |" in md
    assert "| T→S | **63.0 ± 5.0** | 61.0 / 63.0 / 65.0 | 3 |" in md  # the best non-H2T mean is bold
    assert "| H2T | 81.0 ± 2.5 | 80.0 / 81.0 / 82.0 | 3 | — | — |" in md
    assert "Dataset **voc** (HR short side 520 px, random train crop 480 px)" in md and "edsr 16x64 from edsr_baseline_x8.pt" in md


def test_any_other_setting_is_compared_for_orderings_only():
    for params, task in ((Params(), "det"), (_profile("cls_cub", 8, "edsr"), "cls"), (_profile("det_voc", 4, "swinir"), "det")):
        ref, same = paper_reference(task, params)
        assert not same and ref  # the task's published x8 EDSR numbers
        primary = {"cls": "top1", "det": "map"}[task]
        df = study_table(task, _metrics(primary), primary, params)
        assert df["paper_lpips"].isna().all()  # LPIPS of another setting is not shown
        md = render_markdown(params, [(task, df, [], {})], {})
        assert "another setting: compare orderings only" in md


def test_the_table_and_its_rows_keep_every_seed_with_the_mean_interval_and_n():
    df = study_table("cls", _metrics("top1"), "top1")
    assert len(df) == 18 and list(df["method"][:3]) == ["h2t"] * 3 and list(df["seed"][:3]) == [0, 1, 2]
    sr4ir = df[df["method"] == "sr4ir"]
    assert list(sr4ir["value"]) == [56.0, 57.0, 58.0] and set(sr4ir["metric"]) == {"top1"}
    assert sr4ir["mean"].tolist() == [57.0] * 3 and (sr4ir["n"] == 3).all()
    assert sr4ir["ci95"].iloc[0] == pytest.approx(T95_2 / math.sqrt(3))
    assert df[df["method"] == "l2t"]["ci95"].iloc[0] == 0.0  # the same value every seed: no spread
    assert markdown_table(df, "top1", "x").startswith("Paper columns: x.\n\nTask metric: mean over the n = 3 seeds ±")
    one = results_table("cls", _metrics("top1", (0,))[0], "top1")  # one seed: no interval
    assert (one["n"] == 1).all() and one["ci95"].isna().all() and (one["mean"] == one["top1"]).all()


def test_verdicts_are_paired_over_seeds_and_say_holds_reversed_or_not_resolved():
    params = Params()  # seg: the paper's VOC x8 numbers, for orderings
    df = study_table("seg", _metrics("miou"), "miou", params)
    checks = ordering_check(df, "miou")
    assert len(checks.orderings) == 15 and checks.n == 3
    pairs = _by_pair(checks)
    not_resolved, reversed_, holds = pairs["sr4ir", "l2t"], pairs["sr4ir", "t2s"], pairs["sr4ir", "s2t"]
    half = T95_2 / math.sqrt(3)
    assert (not_resolved.diff, not_resolved.word) == (2.0, "not resolved")
    assert not_resolved.low == pytest.approx(2.0 - half) and not_resolved.high == pytest.approx(2.0 + half)
    assert (reversed_.diff, reversed_.word) == (-6.0, "reversed") and reversed_.high == pytest.approx(-6.0 + half)
    assert (holds.diff, holds.word) == (5.0, "holds") and holds.low == pytest.approx(5.0 - half)
    assert pairs["h2t", "t2s"].word == "holds" and pairs["l2t", "t2s"].word == "reversed"  # the paper's direction
    md = "\n".join(render_markdown(params, [("seg", df, checks, {})], {}).splitlines())
    assert "- Of 15 paper orderings: 8 hold, 6 reversed, 1 not resolved (paired over 3 seeds)." in md
    assert ("- Headline (SR4IR above every LR-only method): holds on 2 of 4 / reversed vs T→S / not resolved vs L2T."
            in md)
    assert "| SR4IR > L2T | paper, headline | +5.7 | +2.0 | [-0.5, +4.5] | not resolved |" in md
    assert "| SR4IR > T→S | paper, headline | +5.8 | -6.0 | [-8.5, -3.5] | reversed |" in md
    assert "| S→T > S+T | paper | +2.3 | +5.0 | [+2.5, +7.5] | holds |" in md
    assert "**holds**: the interval lies above 0" in md and "one thread count" in md  # the note on the words
    html = render_html(params, [("seg", df, checks, {})], {}, ROOT)
    assert "<td>SR4IR &gt; T→S</td><td>paper, headline</td><td>+5.8</td><td>-6.0</td><td>[-8.5, -3.5]</td><td>reversed</td>" in html
    assert "<b>63.0 ± 5.0</b>" in html and "8 hold, 6 reversed, 1 not resolved" in html


def test_a_tie_is_not_resolved_even_with_no_spread():
    params = Params()  # seg: the paper's VOC x8 numbers, for orderings
    tied = {m: [40.0, 41.0, 42.0] for m in SEEDS}  # every method the same, seed by seed: differences exactly 0
    checks = ordering_check(study_table("seg", _metrics("miou", values=tied), "miou", params), "miou")
    assert {c.word for c in checks.orderings} == {"not resolved"}
    assert all(c.diff == 0.0 and c.low == 0.0 == c.high for c in checks.orderings)


def test_a_headline_pair_the_paper_orders_the_other_way_gets_its_own_row():
    df = study_table("cls", _metrics("top1"), "top1")
    df.loc[df["method"] == "l2t", "paper_top1"] = 99.0  # the paper now has L2T above SR4IR
    checks = ordering_check(df, "top1")
    pairs = _by_pair(checks)
    assert ("l2t", "sr4ir") in pairs and pairs["l2t", "sr4ir"].word == "not resolved"
    md = render_markdown(Params(), [("cls", df, checks, {})], {})
    assert "| L2T > SR4IR | paper | +27.6 | -2.0 | [-4.5, +0.5] | not resolved |" in md
    assert "| SR4IR > L2T | headline | -27.6 | +2.0 | [-0.5, +4.5] | not resolved |" in md


def test_one_seed_says_verdicts_cannot_be_given():
    params = Params(seeds=[0])
    df = results_table("seg", _metrics("miou", (0,))[0], "miou", params)
    checks = ordering_check(df, "miou")
    assert checks.n == 1 and {c.word for c in checks.orderings} == {"not resolved"}
    assert all(math.isnan(c.low) for c in checks.orderings)
    md = render_markdown(params, [("seg", df, checks, {})], {})
    assert "With one seed, verdicts over seeds cannot be given" in md and "seed 0 (n = 1)" in md
    assert "| SR4IR | 56.0 | 56.0 | 1 |" in md  # no interval to show
    assert "test-set" not in md  # no per-image scores given: no bootstrap either


# -- the report stage (pipeline/report.py) on hand-made per-seed files ------------------------------------------

def _write_study(root: Path, seeds: tuple[int, ...], values: dict | None = None) -> None:
    """Every file the report stage reads, for task cls and ``seeds`` (value i of each method is seed i's)."""
    from pipeline import paths

    values = values or SEEDS
    rng = np.random.default_rng(0)
    n, hr = 2, 16
    for i, seed in enumerate(seeds):
        (root / paths.pretrain_history(seed)).parent.mkdir(parents=True, exist_ok=True)
        (root / paths.pretrain_history(seed)).write_text(json.dumps({"seconds": 10.0 + seed}))
        for m, v in values.items():
            for path, data in ((paths.eval_metrics("cls", m, seed), _metrics("top1", seeds, values)[seed][m]),
                               (paths.train_history("cls", m, seed),
                                {"seconds": 100.0 + seed, "epochs": [{"epoch": 1, "val/top1": v[i] - 10.0},
                                                                     {"epoch": 2, "val/top1": v[i]}]})):
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text(json.dumps(data))
            for path, arrays in ((paths.eval_samples("cls", m, seed),
                                  {"lr": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
                                   "view": rng.integers(0, 256, (n, hr, hr, 3), dtype=np.uint8),
                                   "hr": rng.integers(0, 256, (n, hr, hr, 3), dtype=np.uint8),
                                   "pred": np.array([0, 1]), "target": np.array([0, 2]),
                                   "class_names": np.array(["a", "b", "c"])}),
                                 (paths.eval_scores("cls", m, seed), {"value": np.array([v[i]])})):
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                np.savez(root / path, **arrays)


def _csv(root: Path) -> list[dict[str, str]]:
    with open(root / "reports/results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_stage_reports_every_seed_of_params_and_no_other(tmp_path, monkeypatch):
    from pipeline.report import _report

    _write_study(tmp_path, (0, 1, 2))
    _write_study(tmp_path, (3,), {m: [1000.0] for m in SEEDS})  # a seed no longer in params.yaml: never read
    (tmp_path / "scores").rename(tmp_path / "no_scores")  # with >= 2 seeds the per-image scores are not needed
    monkeypatch.chdir(tmp_path)
    _report(Params(tasks=["cls"], seeds=[0, 1, 2]))
    rows = _csv(tmp_path)
    assert len(rows) == 18 and {r["seed"] for r in rows} == {"0", "1", "2"}
    for column in ("task", "method", "label", "seed", "metric", "value", "mean", "ci95", "n", "top1", "psnr", "lpips",
                   "paper_top1", "paper_lpips"):
        assert column in rows[0], column
    sr4ir = [r for r in rows if r["method"] == "sr4ir"]
    assert [r["value"] for r in sr4ir] == ["56.000", "57.000", "58.000"] == [r["top1"] for r in sr4ir]
    assert {(r["metric"], r["mean"], r["ci95"], r["n"]) for r in sr4ir} == {("top1", "57.000", "2.484", "3")}
    md = (tmp_path / "reports/report.md").read_text()
    assert "seeds 0, 1, 2 (n = 3)" in md and "| SR4IR | 57.0 ± 2.5 | 56.0 / 57.0 / 58.0 | 3 |" in md
    assert "| SR4IR > T→S | paper, headline | +14.5 | -6.0 | [-8.5, -3.5] | reversed |" in md
    assert "| pretrain_sr | 11 |" in md and "| train cls/sr4ir | 101 |" in md  # means over the three seeds
    html = (tmp_path / "reports/report.html").read_text()
    assert html.count("<img") == 2 and "reversed" in html
    for name in ("cls_results.png", "cls_qualitative.png"):
        assert (tmp_path / "reports/figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_metrics_file_names_the_file_and_its_stage(tmp_path, monkeypatch):
    from pipeline.report import _report

    _write_study(tmp_path, (0, 1, 2))
    (tmp_path / "metrics/eval/seed1/cls/sr4ir.json").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        _report(Params(tasks=["cls"], seeds=[0, 1, 2]))
    assert str(err.value) == "metrics/eval/seed1/cls/sr4ir.json is missing: run its stage first (dvc repro evaluate@cls-sr4ir-1)"
    (tmp_path / "metrics/train/seed2/cls/t2s.json").unlink()
    _write_study(tmp_path, (1,))
    with pytest.raises(FileNotFoundError, match=r"metrics/train/seed2/cls/t2s.json is missing: .*train_t2s@cls-2\)"):
        _report(Params(tasks=["cls"], seeds=[0, 1, 2]))


@dataclass(frozen=True)
class _Interval:  # src.bootstrap.BootstrapInterval's fields
    estimate: float
    low: float
    high: float
    resamples: int


def _stub_bootstrap(calls: list) -> types.ModuleType:
    """src.bootstrap's API with intervals that are easy to check: a method's value -1/+2, a difference ±1."""
    stub = types.ModuleType("src.bootstrap")

    def bootstrap_interval(task, scores, resamples, seed=0, level=0.95):
        calls.append(("interval", task, resamples, seed))
        v = float(scores["value"][0])
        return _Interval(v, v - 1.0, v + 2.0, resamples)

    def paired_bootstrap(task, scores_a, scores_b, resamples, seed=0, level=0.95):
        calls.append(("paired", task, resamples, seed))
        d = float(scores_a["value"][0] - scores_b["value"][0])
        return _Interval(d, d - 1.0, d + 1.0, resamples)

    stub.bootstrap_interval, stub.paired_bootstrap = bootstrap_interval, paired_bootstrap
    return stub


def test_one_seed_shows_test_set_bootstrap_intervals_over_val_images_instead(tmp_path, monkeypatch):
    # The intervals themselves are src/bootstrap.py's (its tests); here: the report asks for the right pairs with
    # params' resamples and seed 0, shows them as test-set uncertainty only, and gives no verdict over seeds.
    from pipeline.report import _report

    calls: list = []
    monkeypatch.setitem(sys.modules, "src.bootstrap", _stub_bootstrap(calls))
    _write_study(tmp_path, (0,))
    monkeypatch.chdir(tmp_path)
    params = Params(tasks=["cls"], seeds=[0])
    _report(params)
    resamples = getattr(params.eval, "bootstrap", 1000)
    assert {c[1:] for c in calls} == {("cls", resamples, 0)}
    assert sum(c[0] == "interval" for c in calls) == 6 and sum(c[0] == "paired" for c in calls) == 15 + 4
    md = (tmp_path / "reports/report.md").read_text()
    assert "seed 0 (n = 1)" in md and "With one seed, verdicts over seeds cannot be given" in md
    assert "test-set uncertainty only" in md and "it does not include training noise" in md
    assert "| SR4IR | 56.0 [55.0, 58.0] | 56.0 | 1 |" in md  # the method's bootstrap interval
    assert "| SR4IR > T→S | paper, headline | +14.5 | -5.0 | [-6.0, -4.0] | below 0 |" in md
    assert "| SR4IR > L2T | paper, headline | +10.4 | +1.0 | [+0.0, +2.0] | contains 0 |" in md
    assert "Headline (SR4IR above every LR-only method), test-set only: above 0 vs 2 of 4 / below 0 vs T→S / contains 0 vs L2T." in md
    assert "holds |" not in md and "reversed |" not in md  # no verdict words over seeds in the tables
    rows = _csv(tmp_path)
    assert len(rows) == 6 and {(r["n"], r["ci95"]) for r in rows} == {("1", "")}  # ci95 NaN with one seed
    assert (tmp_path / "reports/figures/cls_results.png").stat().st_size > 1000


@pytest.mark.skipif(not (ROOT / "src/bootstrap.py").is_file(), reason="src/bootstrap.py (another change) is not there yet")
def test_the_stub_has_the_real_bootstraps_signatures_and_fields():
    import dataclasses
    import inspect

    from src import bootstrap

    stub = _stub_bootstrap([])
    for name in ("bootstrap_interval", "paired_bootstrap"):
        real = list(inspect.signature(getattr(bootstrap, name)).parameters)
        assert real == list(inspect.signature(getattr(stub, name)).parameters), name
    assert [f.name for f in dataclasses.fields(bootstrap.BootstrapInterval)] == [f.name for f in dataclasses.fields(_Interval)]


def test_the_training_curves_band_is_the_t_interval_per_epoch_and_none_with_one_seed(tmp_path):
    from src.figures import epoch_band

    runs = [[{"epoch": 1, "val/top1": v}, {"epoch": 2, "val/top1": v + 10}] for v in (1.0, 2.0, 3.0)]
    epochs, mean, low, high = epoch_band(runs, "val/top1")
    assert epochs == [1, 2] and mean == [2.0, 12.0]
    assert low[0] == pytest.approx(2.0 - T95_2 / math.sqrt(3)) and high[1] == pytest.approx(12.0 + T95_2 / math.sqrt(3))
    _, mean, low, _ = epoch_band(runs[:1], "val/top1")
    assert mean == [1.0, 11.0] and all(math.isnan(x) for x in low)
    df = study_table("cls", _metrics("top1"), "top1")
    plot_results(df, {m: runs for m in SEEDS}, "top1", tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- drawing (src/report.py holds it; the task modules, deps of every training stage, do not) -------------------

def _axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    return fig, ax


def test_every_task_has_a_drawer_for_its_kind_of_target():
    assert {t.target_kind for t in TASKS.values()} == set(DRAW)
    for name in TASKS:
        assert not hasattr(TASKS[name], "draw")  # drawing is the report's, not the task's


def test_the_report_builds_its_task_from_the_samples_class_count_as_from_the_dataset(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    for name in TASKS:
        from_raw, from_count = build_task(name, Params(), tmp_path), build_task(name, Params(), num_classes=5)
        assert type(from_raw) is type(from_count) and from_raw.num_classes == from_count.num_classes
        assert from_raw.cfg == from_count.cfg
    for bad in ({}, {"raw": tmp_path, "num_classes": 5}):
        with pytest.raises(TypeError, match="raw"):
            build_task("cls", Params(), **bad)


def test_label_drawing_names_the_prediction_and_the_truth_when_wrong():
    import matplotlib.pyplot as plt

    fig, ax = _axis()
    image = np.zeros((8, 8, 3), np.uint8)
    draw_label(ax, image, np.int64(1), np.int64(1), ["cat", "dog"])
    assert ax.get_title() == "dog" and ax.title.get_color() == "#1a7f37"
    draw_label(ax, image, np.int64(1), np.int64(0), ["cat", "dog"])
    assert ax.get_title() == "dog\n(true: cat)" and ax.title.get_color() == "#c62828"
    plt.close(fig)


def test_mask_drawing_scores_only_pixels_that_are_not_ignored():
    import matplotlib.pyplot as plt

    fig, ax = _axis()
    pred = np.array([[0, 1], [2, 2]])
    target = np.array([[0, 2], [2, 255]])  # 2 of 3 scored pixels right; the 255 one is not scored
    draw_mask(ax, np.zeros((2, 2, 3), np.uint8), pred, target, ["a", "b"])
    assert ax.get_title() == "pixel acc 67%" and len(ax.images) == 2  # the image and the class overlay
    draw_mask(ax, np.zeros((2, 2, 3), np.uint8), pred, np.full((2, 2), 255), ["a", "b"])
    assert ax.get_title() == "pixel acc nan%"
    plt.close(fig)


def test_box_drawing_shows_true_boxes_and_confident_predictions():
    import matplotlib.pyplot as plt

    fig, ax = _axis()
    pred = np.array([[1, 1, 5, 5, 1, 0.9], [2, 2, 6, 6, 2, 0.3], [0, 0, 0, 0, -1, -1]], np.float32)
    target = np.array([[1, 1, 6, 6, 2, 1.0], [0, 0, 0, 0, -1, -1]], np.float32)
    draw_boxes(ax, np.zeros((8, 8, 3), np.uint8), pred, target, ["a", "b"])
    assert ax.get_title() == "1 boxes (score >= 0.5)"
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.texts] == ["a 0.90"]
    plt.close(fig)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_qualitative_figure_draws_every_method_and_sample(name, tmp_path):
    rng = np.random.default_rng(0)
    n, hr, scale, names = 2, 16, 4, np.array(["a", "b", "c"])
    if name == "cls":
        pred, target = rng.integers(0, 3, n), rng.integers(0, 3, n)
    elif name == "seg":
        pred, target = rng.integers(0, 4, (n, hr, hr)), rng.integers(0, 4, (n, hr, hr))
    else:
        pred = target = np.array([[[1, 1, 9, 9, 1, 0.8]]] * n, np.float32)
    samples = {m: {"lr": rng.integers(0, 256, (n, hr // scale, hr // scale, 3), dtype=np.uint8),
                   "view": rng.integers(0, 256, (n, hr, hr, 3), dtype=np.uint8),
                   "hr": rng.integers(0, 256, (n, hr, hr, 3), dtype=np.uint8),
                   "pred": pred, "target": target, "class_names": names} for m in ("l2t", "s2t", "sr4ir", "h2t")}
    out = tmp_path / "q.png"
    plot_qualitative(build_task(name, Params(), num_classes=len(names)), samples, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _histories(last_two: dict[str, list[tuple[float, float]]], key: str = "val/top1") -> dict[str, list[list[dict]]]:
    """method -> each seed's epoch records ending with the given (next-to-last, last) values."""
    return {m: [[{"epoch": 1, key: 10.0}, {"epoch": 2, key: a}, {"epoch": 3, key: b}] for a, b in runs]
            for m, runs in last_two.items()}


def test_the_convergence_table_judges_plateau_and_spread_against_the_calibration_targets():
    from src.report import convergence_table

    df = study_table("cls", _metrics("top1"), "top1")
    flat = [(50.0, 50.5), (60.0, 59.2), (70.0, 70.0)]  # moves by 0.5, 0.8, 0: a plateau on every seed
    histories = _histories({m: flat for m in SEEDS} | {"sr4ir": [(50.0, 50.5), (60.0, 61.0), (70.0, 70.0)]})
    table = convergence_table(df, histories, "top1").set_index("method")
    assert table.loc["h2t", "change"] == pytest.approx(0.8) and table.loc["h2t", "plateau"]
    assert table.loc["sr4ir", "change"] == pytest.approx(1.0) and not table.loc["sr4ir", "plateau"]  # 1 is not < 1
    # sd over seeds: [61, 63, 65] has sd 2 (stable at <= 3 points); [1, 2, 3]-spaced ones sd 1; constant 0
    assert table.loc["t2s", "sd"] == pytest.approx(2.0) and table.loc["t2s", "stable"]
    assert table.loc["l2t", "sd"] == 0.0
    wide = study_table("det", _metrics("map", values=SEEDS | {"t2s": [60.0, 63.0, 66.0]}), "map")
    det = convergence_table(wide, _histories({m: flat for m in SEEDS}, "val/map"), "map").set_index("method")
    assert det.loc["t2s", "sd"] == pytest.approx(3.0) and not det.loc["t2s", "stable"]  # mAP allows 2 points
    md = render_markdown(Params(), [("cls", df, [], {})], {}, {"cls": convergence_table(df, histories, "top1")})
    assert ("Convergence (|last − next-to-last epoch| < 1 point on every seed, on all of val): 5 of 6 "
            "methods; spread (sd over seeds ≤ 3 points): 6 of 6.") in md
    assert "| SR4IR | 1.0 | **not met** | 1.0 | met |" in md


def test_one_seed_or_one_epoch_leaves_spread_or_plateau_unjudged():
    from src.report import convergence_table

    df = study_table("cls", _metrics("top1", (0,)), "top1")
    one_epoch = {m: [[{"epoch": 1, "val/top1": 40.0}]] for m in SEEDS}
    table = convergence_table(df, one_epoch, "top1")
    assert table["sd"].isna().all() and table["change"].isna().all()
    assert all(v is None for v in table["plateau"]) and all(v is None for v in table["stable"])
    md = render_markdown(Params(), [("cls", df, [], {})], {}, {"cls": table})
    assert "0 of 6 methods; spread (sd over seeds ≤ 3 points): 0 of 6." in md and "| H2T | — | — | — | — |" in md
