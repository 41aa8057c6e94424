"""The report prints the paper's numbers beside ours: of this very setting when published, otherwise the
task's published setting, labelled as another setting (orderings only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from src import profile
from src.config import Params, parse_params
from src.report import (DRAW, draw_boxes, draw_label, draw_mask, markdown_table, ordering_check, paper_reference,
                        plot_qualitative, render_markdown, results_table)
from src.tasks import TASKS, build_task

ROOT = Path(__file__).resolve().parents[1]
OURS = {"h2t": 70.0, "l2t": 50.0, "s2t": 53.0, "t2s": 48.0, "joint": 51.0, "sr4ir": 56.0}


def _metrics(primary: str) -> dict[str, dict[str, float]]:
    return {m: {primary: v, **({} if m == "h2t" else {"psnr": 25.0, "lpips": 0.4})} for m, v in OURS.items()}


def _profile(name: str, scale: int, sr: str) -> Params:
    root = ROOT / "configs/paper"
    return parse_params(profile.resolve(root / f"{name}.yaml", scale, sr, root))


def test_a_published_setting_gets_its_own_numbers_and_lpips():
    params = _profile("seg_voc", 8, "edsr")
    ref, same = paper_reference("seg", params)
    assert same and ref["values"]["sr4ir"] == 55.0
    df = results_table("seg", _metrics("miou"), "miou", params)
    assert df.set_index("method").loc["sr4ir", "paper_lpips"] == 0.380
    assert math.isnan(df.set_index("method").loc["h2t", "paper_lpips"])  # H2T has none by definition
    md = render_markdown(params, [("seg", df, ordering_check(df, "miou"), {})], {})
    assert "Paper columns: VOC2012, x8, EDSR-baseline." in md and "another setting" not in md
    assert "| SR4IR | **56.0** | 25.00 | 0.400 | 55.0 | 0.380 |" in md
    assert "Dataset **voc** (HR short side 520 px, random train crop 480 px)" in md and "edsr 16x64 from edsr_baseline_x8.pt" in md


def test_any_other_setting_is_compared_for_orderings_only():
    for params, task in ((Params(), "det"), (_profile("cls_cub", 8, "edsr"), "cls"), (_profile("det_voc", 4, "swinir"), "det")):
        ref, same = paper_reference(task, params)
        assert not same and ref  # the task's published x8 EDSR numbers
        df = results_table(task, _metrics(ref and {"cls": "top1", "det": "map"}[task]), {"cls": "top1", "det": "map"}[task], params)
        assert df["paper_lpips"].isna().all()  # LPIPS of another setting is not shown
        md = render_markdown(params, [(task, df, [], {})], {})
        assert "another setting: compare orderings only" in md


def test_the_ordering_check_counts_pairs_that_hold():
    params = _profile("seg_voc", 8, "edsr")
    df = results_table("seg", _metrics("miou"), "miou", params)
    lines = ordering_check(df, "miou")
    assert lines[0] == "- 15 of 15 pairwise orderings of the paper's methods hold here."
    assert "SR4IR − S→T: +3.0 points (paper: +2.7)" in lines[-1]
    assert markdown_table(df, "miou", "x").startswith("Paper columns: x.")


def test_a_tie_is_no_reproduced_ordering():
    params = _profile("seg_voc", 8, "edsr")
    tied = {m: {"miou": 0.0, **({} if m == "h2t" else {"psnr": 20.0})} for m in OURS}
    lines = ordering_check(results_table("seg", tied, "miou", params), "miou")
    assert lines[0] == "- 0 of 15 pairwise orderings of the paper's methods hold here."
    assert "- differs: the paper has H2T > L2T; here both 0.0" in lines


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
