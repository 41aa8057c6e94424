"""sr.init: the paper's SR networks start from released DIV2K weights (downloaded when a known release)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from src.config import parse_params
from src.data.fetch import ChecksumError
from src.experiment import build_setup
from src.experiment import pretrain_sr, train_method
from src.methods import METHODS
from src.models import official
from src.models.official import fetch_release
from src.models.sr import build_sr
from tests.conftest import TINY


@pytest.fixture
def served(tmp_path):
    """A local HTTP server over tmp_path/www; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _params(**sr):
    raw = {**TINY, "sr": {**TINY["sr"], **sr}}
    return parse_params(raw, "tiny")


def _release(tmp_path: Path, name: str, seed: int = 7) -> tuple[Path, dict[str, torch.Tensor]]:
    """An EDSR-PyTorch-layout release file (our EDSR uses its names) with weights of a known seed."""
    torch.manual_seed(seed)
    sd = build_sr(_params().sr, 4).state_dict()
    path = tmp_path / name
    torch.save(sd, path)
    return path, sd


def test_only_the_methods_the_paper_starts_from_div2k_do():
    assert {m for m, meth in METHODS.items() if meth.sr_start == "div2k"} == {"t2s", "joint", "sr4ir"}
    assert METHODS["s2t"].sr_start == "pretrain_sr"  # S->T: the task-pretrained SR


def test_a_known_release_is_downloaded_and_its_hub_hash_checked(tmp_path, served):
    www, base = served
    src, sd = _release(www, "tiny.pt")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    good, bad = f"edsr_tiny-{digest[:8]}.pt", "edsr_tiny-00000000.pt"
    src.rename(www / good)
    (www / bad).write_bytes((www / good).read_bytes())
    releases = {good: f"{base}/{good}", bad: f"{base}/{bad}"}

    dest = tmp_path / "weights" / good
    assert fetch_release(dest, releases) == dest and dest.read_bytes() == (www / good).read_bytes()
    (www / good).unlink()
    assert fetch_release(dest, releases) == dest  # present: no request (the served file is gone)

    with pytest.raises(ChecksumError, match="does not start with 00000000"):
        fetch_release(tmp_path / "weights" / bad, releases)
    assert not (tmp_path / "weights" / bad).exists() and (tmp_path / "weights" / (bad + ".bad")).exists()


def test_a_file_published_by_hand_only_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"edsr_baseline_x8.pt: SR initial weights \(sr.init\) missing.*Google Drive"):
        fetch_release(tmp_path / "edsr_baseline_x8.pt")
    with pytest.raises(FileNotFoundError, match="mine.pt.*place it at"):
        fetch_release(tmp_path / "mine.pt")
    assert set(official.RELEASES) >= {"edsr_baseline_x4-6b446fab.pt", "001_classicalSR_DIV2K_s48w8_SwinIR-M_x4.pth"}


def test_pretraining_and_the_div2k_methods_start_from_sr_init(tmp_path, tiny_data, monkeypatch):
    raw, lr = tiny_data
    path, sd = _release(tmp_path, "release.pt")
    params = _params(init=str(path))
    seen = []
    real = build_setup

    def spy(method, params, task, sr_init=None, *args, sr_init_release=False, **kwargs):
        setup = real(method, params, task, sr_init, *args, sr_init_release=sr_init_release, **kwargs)
        if setup.sr is not None:
            seen.append((method.name, sr_init, sr_init_release,
                         all(torch.equal(v, sd[k]) for k, v in setup.sr.state_dict().items())))
        return setup

    monkeypatch.setattr("src.experiment.build_setup", spy)
    pretrain_sr(params, raw, lr)
    ours = tmp_path / "ours.pt"
    torch.save(build_sr(params.sr, 4).state_dict(), ours)  # stands for models/seed<N>/sr_pretrained.pt
    train_method(params, "cls", "sr4ir", raw, lr, sr_init=ours)
    train_method(params, "cls", "s2t", raw, lr, sr_init=ours)
    assert seen[0] == ("sr_pretrain", path, True, True)  # the paper's 0s0 starts from DIV2K
    assert seen[1] == ("sr4ir", path, True, True)
    assert seen[2][:3] == ("s2t", ours, False) and not seen[2][3]  # S->T: the task-pretrained SR

    without = _params()
    seen.clear()
    train_method(without, "cls", "sr4ir", raw, lr, sr_init=ours)
    assert seen[0][:3] == ("sr4ir", ours, False)  # no sr.init: pretrain_sr stands in for DIV2K


def test_a_wrong_release_names_the_keys(tmp_path, tiny_data):
    raw, lr = tiny_data
    path = tmp_path / "wrong.pt"
    torch.save({"conv_first.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="wrong.pt"):
        pretrain_sr(_params(init=str(path)), raw, lr)
