"""The report prints the paper's numbers beside ours: of this very setting when published, otherwise the
task's published setting, labelled as another setting (orderings only)."""

from __future__ import annotations

import math
from pathlib import Path

from src import profile
from src.config import Params, parse_params
from src.report import markdown_table, ordering_check, paper_reference, render_markdown, results_table

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
    assert "Dataset **voc** (480 px HR)" in md and "edsr 16x64 from edsr_baseline_x8.pt" in md


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
