"""python -m src.compare_verdicts: the cross-machine check of the study (verdicts, not digits)."""

from pathlib import Path

import pandas as pd
import pytest

from src.compare_verdicts import compare, main, read_results

PAPER = {"h2t": 80.0, "l2t": 50.0, "sr4ir": 70.0}  # the paper orders h2t > sr4ir > l2t


def _results(path: Path, values: dict[str, list[float]]) -> Path:
    rows = [{"task": "cls", "method": m, "label": m.upper(), "seed": s, "top1": v, "paper_top1": PAPER[m],
             "metric": "top1", "value": v} for m, vs in values.items() for s, v in enumerate(vs)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


BASE = {"h2t": [99.0, 98.0, 99.5], "l2t": [60.0, 62.0, 61.0], "sr4ir": [90.0, 91.0, 89.0]}


def test_the_same_verdicts_pass(tmp_path, capsys):
    first = _results(tmp_path / "a.csv", BASE)
    second = _results(tmp_path / "b.csv", {m: [v + 0.5 for v in vs] for m, vs in BASE.items()})  # other digits
    with pytest.raises(SystemExit) as ex:
        main([str(first), str(second)])
    assert ex.value.code == 0
    assert "3 comparisons: 3 same verdict, 0 changed within noise" in capsys.readouterr().out


def test_a_holds_that_becomes_not_resolved_is_noise_and_passes(tmp_path, capsys):
    first = _results(tmp_path / "a.csv", BASE)
    noisy = dict(BASE, sr4ir=[99.9, 91.0, 60.0])  # sr4ir − l2t: +39.9, +29, −1; h2t − sr4ir: −0.9, +7, +39.5
    changes, n = compare(read_results(first), read_results(_results(tmp_path / "b.csv", noisy)))
    assert n == 3 and {(c.ordering, c.first, c.second, c.contradicts) for c in changes} == {
        ("sr4ir > l2t", "holds", "not resolved", False), ("h2t > sr4ir", "holds", "not resolved", False)}
    with pytest.raises(SystemExit) as ex:
        main([str(first), str(tmp_path / "b.csv")])
    assert ex.value.code == 0 and "sr4ir > l2t: holds -> not resolved" in capsys.readouterr().out


def test_a_reversed_ordering_is_a_contradiction_and_exits_1(tmp_path, capsys):
    first = _results(tmp_path / "a.csv", BASE)
    second = _results(tmp_path / "b.csv", dict(BASE, sr4ir=[50.0, 51.0, 52.0]))  # now below l2t on every seed
    with pytest.raises(SystemExit) as ex:
        main([str(first), str(second)])
    out = capsys.readouterr().out
    assert ex.value.code == 1
    assert "cls: sr4ir > l2t: holds -> reversed  CONTRADICTS" in out and "1 contradicted" in out


def test_a_mean_that_moved_beyond_noise_is_listed_but_does_not_fail(tmp_path, capsys):
    first = _results(tmp_path / "a.csv", BASE)
    second = _results(tmp_path / "b.csv", dict(BASE, sr4ir=[80.0, 81.0, 79.0]))  # 10 lower, same orderings
    with pytest.raises(SystemExit) as ex:
        main([str(first), str(second)])
    out = capsys.readouterr().out
    assert ex.value.code == 0 and "3 comparisons: 3 same verdict" in out
    assert "cls: SR4IR mean 90.00 -> 80.00: -10.00" in out and "3 means: 2 within noise, 1 moved beyond it" in out


@pytest.mark.parametrize("content, says", [
    (None, "no such file"),
    ("task,method\ncls,h2t\n", "missing column(s) metric, seed, value"),
    ("", "not a CSV file"),
])
def test_a_missing_or_malformed_file_is_one_line_and_exit_2(tmp_path, capsys, content, says):
    good = _results(tmp_path / "a.csv", BASE)
    bad = tmp_path / "bad.csv"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(SystemExit) as ex:
        main([str(good), str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2 and len(err) == 1 and str(bad) in err[0] and says in err[0]
