"""python -m src.evaluate_only: given checkpoints (ours or with the official key names) through src.loop.evaluate,
no training; missing or unfitting checkpoints fail with exit 2 and one line naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from src.evaluate_only import NO_REC_NOTE, default_out, evaluate_checkpoints, main
from src.models.sr import build_sr
from src.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_lpips_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # LPIPS: unavailable, whatever this machine has


def _basicsr_name(key: str, n_blocks: int) -> str:
    """Our (EDSR-PyTorch) EDSR key -> BasicSR's name for it (the layout of BasicSR/SR4IR-style releases)."""
    parts = key.split(".")
    if parts[0] == "head":
        return "conv_first." + parts[-1]
    if parts[0] == "body" and parts[1] == str(n_blocks):
        return "conv_after_body." + parts[-1]
    if parts[0] == "body":
        return f"body.{parts[1]}.conv{1 if parts[3] == '0' else 2}.{parts[-1]}"
    if key.startswith("tail.0."):
        return "upsample." + key.removeprefix("tail.0.")
    if key.startswith("tail.1."):
        return "conv_last." + parts[-1]
    raise KeyError(key)


@pytest.fixture()
def checkpoints(tmp_path, tiny_params):
    """One set of EDSR weights saved three ways: ours, BasicSR names under 'params', and an SR4IR training
    checkpoint (net_sr with DDP's module. prefix, beside optimiser state)."""
    torch.manual_seed(5)
    sd = build_sr(tiny_params.sr, tiny_params.degrade.scale).state_dict()
    n = tiny_params.sr.n_blocks
    paths = {"ours": tmp_path / "ours" / "sr.pt", "basicsr": tmp_path / "edsr_basicsr.pth", "sr4ir": tmp_path / "checkpoint_9.pth"}
    paths["ours"].parent.mkdir()
    torch.save(sd, paths["ours"])
    torch.save({"params": {_basicsr_name(k, n): v for k, v in sd.items() if "mean" not in k}}, paths["basicsr"])
    torch.save({"epoch": 9, "net_sr": {f"module.{k}": v for k, v in sd.items()},
                "optimizer_sr": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, paths["sr4ir"])
    return paths


def test_official_key_names_evaluate_to_the_same_psnr_as_ours(checkpoints, tiny_params, tiny_data):
    raw, lr = tiny_data
    ours = evaluate_checkpoints(tiny_params, "cls", checkpoints["ours"], None, raw, lr)
    assert set(ours["metrics"]) == {"psnr"} and ours["task_metric_unavailable"] == NO_REC_NOTE
    assert "vgg16" in ours["lpips_unavailable"] and ours["data"]["n_val"] == 8
    for name in ("basicsr", "sr4ir"):
        other = evaluate_checkpoints(tiny_params, "cls", checkpoints[name], None, raw, lr)
        assert other["metrics"]["psnr"] == ours["metrics"]["psnr"], name


def test_cli_writes_metrics_and_report_with_a_recogniser(checkpoints, tiny_params, tiny_data, tmp_path):
    raw, lr = tiny_data
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params.model_dump(mode="json", exclude={"seed"})))
    torch.manual_seed(0)
    rec = tmp_path / "rec.pt"
    torch.save(build_task("cls", tiny_params, raw).build_model().state_dict(), rec)
    out = tmp_path / "out"
    main(["--task", "cls", "--sr", str(checkpoints["sr4ir"]), "--rec", str(rec), "--out", str(out),
          "--params", str(params), "--raw", str(raw), "--lr", str(lr)])
    record = json.loads((out / "metrics.json").read_text())
    assert {"top1", "psnr"} == set(record["metrics"]) and "task_metric_unavailable" not in record
    assert record["rec_checkpoint"] == str(rec) and record["recogniser"] == tiny_params.cls.arch == "resnet10"
    ours = evaluate_checkpoints(tiny_params, "cls", checkpoints["ours"], None, raw, lr)
    assert record["metrics"]["psnr"] == ours["metrics"]["psnr"]
    md = (out / "report.md").read_text()
    assert "| top-1 (%) ↑ |" in md and "| PSNR (dB) ↑ |" in md and "| LPIPS ↓ | n/a¹ |" in md
    assert "¹ LPIPS not computed:" in md and "vgg16-397923af.pth" in md
    assert not list(out.glob(".*"))  # atomic writes leave no temporaries


def test_without_rec_the_report_says_why_there_is_no_task_metric(checkpoints, tiny_params, tiny_data, tmp_path):
    from src.evaluate_only import render_markdown

    raw, lr = tiny_data
    md = render_markdown(evaluate_checkpoints(tiny_params, "cls", checkpoints["ours"], None, raw, lr))
    assert "| task metric | n/a¹ |" in md and f"¹ {NO_REC_NOTE}" in md and "| LPIPS ↓ | n/a² |" in md


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_wrong_architecture_exits_2_naming_the_file(tmp_path, tiny_params, tiny_data, capsys):
    raw, lr = tiny_data
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params.model_dump(mode="json", exclude={"seed"})))
    wide = tmp_path / "wide_edsr.pt"
    torch.save(build_sr(tiny_params.sr.model_copy(update={"n_feats": 16}), tiny_params.degrade.scale).state_dict(), wide)
    base = ["--task", "cls", "--params", str(params), "--raw", str(raw), "--lr", str(lr), "--out", str(tmp_path / "o")]
    err = _fails(base + ["--sr", str(wide)], capsys)
    assert str(wide) in err and "wrong architecture or scale" in err and "sr.n_feats 8" in err
    err = _fails(base + ["--sr", str(wide), "--rec", str(tmp_path / "missing_rec.pt")], capsys)
    assert "missing_rec.pt: recogniser checkpoint not found" in err
    good = tmp_path / "sr.pt"
    torch.save(build_sr(tiny_params.sr, tiny_params.degrade.scale).state_dict(), good)
    bad_rec = tmp_path / "rec_of_another_net.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad_rec)
    err = _fails(base + ["--sr", str(good), "--rec", str(bad_rec)], capsys)
    assert str(bad_rec) in err and "do not fit" in err
    assert not (tmp_path / "o").exists()  # nothing written on failure


def test_missing_checkpoint_exits_2_naming_it(tmp_path):
    missing = tmp_path / "no_such_sr.pth"
    out = subprocess.run([sys.executable, "-m", "src.evaluate_only", "--task", "seg", "--sr", str(missing)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {missing}: SR checkpoint not found"


def test_help_documents_the_no_rec_behaviour(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--rec" in text and "Without --rec no task metric" in text and "--sr" in text


def test_default_out_is_named_after_task_and_checkpoint():
    assert default_out("cls", Path("models/cls/sr4ir/sr.pt")) == Path("reports/evaluate_only/cls_sr4ir_sr")
