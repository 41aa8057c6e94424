"""The seed axis at the command line: a stage trains and evaluates only a seed that params.yaml lists.

(params.yaml's own seeds key: tests/test_bad_inputs.py; the seed axis of the DAG: tests/test_pipeline_e2e.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [
    ["train", "--task", "cls", "--method", "h2t", "--seed", "7"],
    ["evaluate", "--task", "seg", "--method", "sr4ir", "--seed", "7"],
    ["pretrain_sr", "--seed", "7"],
], ids=lambda argv: argv[0])
def test_a_seed_not_in_params_seeds_exits_2_in_one_line_before_any_work(tmp_path, argv):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))  # seeds: [0, 1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr == "error: params.yaml: seed 7 is not one of seeds [0, 1]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing trained, written or tracked
