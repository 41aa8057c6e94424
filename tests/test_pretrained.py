"""ImageNet-pretrained task networks (the paper's setting) are a params switch; when torchvision cannot fetch
the weights the error names the switch and how to do without them."""

from __future__ import annotations

import urllib.error

import pytest
import torchvision

from src.config import parse_params
from src.data.fetch import DownloadError
from src.tasks import build_task
from tests.conftest import TINY

SWITCHES = {"cls": ("pretrained", "cls.pretrained"), "seg": ("pretrained_backbone", "seg.pretrained_backbone"),
            "det": ("pretrained_backbone", "det.pretrained_backbone")}
NETWORK = {"cls": {"arch": "resnet18"}}  # ImageNet weights exist for the paper's ResNet-18, not the default resnet10


@pytest.mark.parametrize("task_name", sorted(SWITCHES))
def test_unfetchable_imagenet_weights_name_the_switch(task_name, tiny_data, monkeypatch, tmp_path):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network for {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    field, key = SWITCHES[task_name]
    params = parse_params({**TINY, task_name: {**TINY.get(task_name, {}), **NETWORK.get(task_name, {}), field: True}}, "tiny")
    task = build_task(task_name, params, tiny_data[0])
    with pytest.raises(DownloadError, match=rf"{key}: could not load ImageNet weights .*no network for https://download.pytorch.org"
                                            rf".*set {key}: false, or place torchvision's weights file in {tmp_path}/hub/checkpoints"):
        task.build_model()


def test_a_stage_reports_unfetchable_weights_in_one_line(tiny_data, monkeypatch, capsys):
    """The stages print a DownloadError as one line naming the switch and exit 2 (no traceback)."""
    import argparse

    from pipeline import _stage

    def main(args):
        raise DownloadError("cls.pretrained: could not load ImageNet weights (offline)")

    monkeypatch.setattr("sys.argv", ["pipeline.train"])
    with pytest.raises(SystemExit) as exit_info:
        _stage.run(main, argparse.ArgumentParser())
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: cls.pretrained: could not load ImageNet weights (offline)"


@pytest.mark.parametrize("task_name", sorted(SWITCHES))
def test_the_default_never_downloads(task_name, tiny_data, monkeypatch):
    def forbidden(url, *args, **kwargs):
        raise AssertionError(f"downloaded {url}")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", forbidden)
    params = parse_params(TINY, "tiny")
    assert build_task(task_name, params, tiny_data[0]).build_model() is not None
