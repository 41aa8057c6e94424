"""Bad params: any invalid params.yaml value or CLI flag fails before any work, naming the key or flag.

A hypothesis fuzz mutates one place of the default params (wrong type, out of range, unknown enum,
unknown, missing or misspelt key): ``parse_params`` must accept the result or raise ``ConfigError``
naming a key on the mutated path, never anything else. The stage CLIs are checked in-process (argparse
exits with 2) plus one real subprocess for the exit code a shell sees.
"""

from __future__ import annotations

import copy
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from src.config import ConfigError, Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = Params().model_dump(mode="json", exclude={"seed"})  # the file keys (seed is derived from seeds)

Path_ = tuple[str | int, ...]


def _places(node: Any, path: Path_ = ()) -> list[Path_]:
    """Every key and list index in the mapping, depth first (the root excluded)."""
    out: list[Path_] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append((*path, k))
        out.extend(_places(v, (*path, k)))
    return out


def _at(root: Any, path: Path_) -> Any:
    for k in path:
        root = root[k]
    return root


def _choices(path: Path_) -> tuple | None:
    """The allowed values of a Literal key; None for free text (paths, URLs) or a non-model place."""
    model: Any = Params
    for k in path:
        field = getattr(model, "model_fields", {}).get(k)
        if field is None:
            return None
        model = field.annotation
    return get_args(model) if get_origin(model) is Literal else None


PLACES = _places(DEFAULT)
MAPPINGS = [()] + [p for p in PLACES if isinstance(_at(DEFAULT, p), dict)]  # where a key can be added

# Values of every kind YAML can produce, including the awkward ones.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from([-1, 0, 1, 2, 3, 7, 65, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1.0, -1e-9, 0.0, 0.5, 1.0, 1.5, 1e300]),
    st.text(max_size=12),
    st.sampled_from(["", "auto", "cls", "sgd", "yes", "1", "1e-3", "nope", "ERROR", "skip"]),
    st.lists(st.one_of(st.integers(-3, 20), st.text(max_size=4)), max_size=4),
    st.dictionaries(st.text(max_size=6), st.one_of(st.integers(), st.floats(), st.text(max_size=4)), max_size=3),
)
KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


def _parent(root: dict, path: Path_) -> Any:
    node = root
    for k in path[:-1]:
        node = node[k]
    return node


def _dotted(path: Path_) -> str:
    return ".".join(str(k) for k in path)


@st.composite
def mutations(draw) -> tuple[dict, Path_, str]:
    """(mutated params, the path changed, what was done)."""
    raw = copy.deepcopy(DEFAULT)
    kind = draw(st.sampled_from(["replace", "replace", "replace", "add_key", "delete", "rename"]))
    if kind == "add_key":
        where = draw(st.sampled_from(MAPPINGS))
        node = _parent(raw, (*where, None))
        key = draw(KEY.filter(lambda k: k not in node))
        node[key] = draw(ANY_VALUE)
        return raw, (*where, key), kind
    path = draw(st.sampled_from(PLACES))
    parent = _parent(raw, path)
    if kind == "replace":
        parent[path[-1]] = draw(ANY_VALUE)
    elif kind == "delete":
        del parent[path[-1]]
    else:  # a typo: the key under another name (lists have no keys: replace the item instead)
        if isinstance(parent, dict):
            new = draw(KEY.filter(lambda k: k not in parent))
            parent[new] = parent.pop(path[-1])
            return raw, (*path[:-1], new), kind
        parent[path[-1]] = draw(ANY_VALUE)
    return raw, path, kind


def _names_a_key_on(msg: str, path: Path_) -> bool:
    prefixes = [_dotted(path[:i]) for i in range(1, len(path) + 1)]
    if any(f"params.yaml: {p}" in msg for p in prefixes):
        return True
    # Cross-field checks on the whole file report at the top level and name the keys in their text.
    return "params.yaml: (top level): " in msg and any(p in msg for p in prefixes)


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_a_mutated_params_file_is_accepted_or_names_the_key(mutation):
    raw, path, kind = mutation
    try:
        parse_params(raw, "params.yaml")
    except ConfigError as err:
        msg = str(err)
        assert _names_a_key_on(msg, path), f"{kind} {_dotted(path)}: {msg}"
        assert all(line.startswith("params.yaml: ") for line in msg.split("\n")), msg  # one line per problem


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(st.sampled_from([p for p in PLACES if isinstance(_at(DEFAULT, p), str) and isinstance(p[-1], str) and _choices(p)]),
       st.text(min_size=1, max_size=10))
def test_an_unknown_enum_value_lists_the_allowed_ones(path, value):
    assume(value not in _choices(path))  # another allowed choice is no unknown value
    raw = copy.deepcopy(DEFAULT)
    _parent(raw, path)[path[-1]] = value
    try:
        parse_params(raw, "params.yaml")
    except ConfigError as err:
        msg = str(err)
        key = _dotted(path)
        assert f"params.yaml: {key}: Input should be " in msg, msg
        assert repr(_at(DEFAULT, path)) in msg, msg  # the allowed values are listed (the default among them)
    else:
        assert value == _at(DEFAULT, path)


# -- command lines ---------------------------------------------------------------------------------

STAGE_FLAGS = [
    ("pipeline.train", ["--task", "nope", "--method", "h2t"], ["--task", "invalid choice: 'nope'", "'cls'", "'det'", "'seg'"]),
    ("pipeline.train", ["--task", "cls", "--method", "sr"], ["--method", "invalid choice: 'sr'", "'h2t'", "'sr4ir'"]),
    ("pipeline.train", ["--task", "cls"], ["the following arguments are required: --method"]),
    ("pipeline.evaluate", ["--task", "cls", "--method", "sr_pretrain"], ["--method", "invalid choice", "'t2s'"]),
    ("pipeline.evaluate", ["--method", "h2t", "--task", "CLS"], ["--task", "invalid choice: 'CLS'"]),
    ("pipeline.download", ["--seed", "3"], ["unrecognized arguments: --seed 3"]),
    ("pipeline.degrade", ["--scale", "4"], ["unrecognized arguments: --scale 4"]),
    ("pipeline.pretrain_sr", ["--seed", "0", "--epochs=1"], ["unrecognized arguments: --epochs=1"]),
    ("pipeline.pretrain_sr", [], ["the following arguments are required: --seed"]),
    ("pipeline.evaluate", ["--task", "cls", "--method", "h2t", "--seed", "first"], ["--seed", "invalid int value: 'first'"]),
    ("pipeline.report", ["extra"], ["unrecognized arguments: extra"]),
    ("pipeline.track", ["--key"], ["--key", "expected one argument"]),
]


@pytest.mark.parametrize(("module", "argv", "fragments"), STAGE_FLAGS, ids=lambda x: x if isinstance(x, str) else None)
def test_stage_flags_fail_with_2_naming_the_flag_and_choices(module, argv, fragments, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, *argv])
    monkeypatch.delitem(sys.modules, module, raising=False)  # run_module executes it afresh as __main__
    with pytest.raises(SystemExit) as info:
        runpy.run_module(module, run_name="__main__")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(f in err for f in fragments), err


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--n-trials", "-1"], ["--n-trials: must be >= 0, got -1"]),
    (["--workers", "0"], ["--workers: must be >= 1, got 0"]),
    (["--heartbeat", "0"], ["--heartbeat: must be >= 1 second"]),
    (["--max-trials", "0"], ["--max-trials: must be >= 1"]),
    (["--n-trials", "two"], ["--n-trials", "invalid int value: 'two'"]),
    (["--objectives", "psnr"], ["--objectives", "invalid choice: 'psnr'", "'task'", "'task,psnr'"]),
    (["--task", "nope"], ["--task", "invalid choice: 'nope'", "'cls'"]),
])
def test_tune_flags_fail_with_2_naming_the_flag_and_allowed_values(argv, fragments, capsys):
    from src import tune

    try:
        code = tune.main([*argv, "--params", str(ROOT / "params.yaml"), "--no-mlflow"])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert all(f in err for f in fragments), err


def test_a_bad_params_file_stops_a_stage_before_any_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("data:\n  on_bad_sample: ignore\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline.download"])
    monkeypatch.delitem(sys.modules, "pipeline.download", raising=False)
    with pytest.raises(SystemExit) as info:
        runpy.run_module("pipeline.download", run_name="__main__")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: params.yaml: data.on_bad_sample: Input should be 'error' or 'skip'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_a_real_stage_process_exits_2_with_one_line():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pipeline.train", "--task", "nope", "--method", "h2t"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "argument --task: invalid choice: 'nope' (choose from" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("raw", [
    {"cls": {"loss_weights": {"loss_ce": 1.0, "loss_typo": 1.0}}},  # KeyError at the first training step
    {"cls": {"tdp_layers": {"layer9": 1.0}}},  # ValueError from build_task, without "params.yaml:"
    {"cls": {"tdp_layers": {}}},  # ValueError (max() of an empty sequence) at the first TDP step
    {"det": {"anchor_sizes": [[], [16], [32]]}},  # an FPN level without anchors
], ids=["loss-weight-key", "cls-tdp-layer", "empty-tdp-layers", "empty-anchor-level"])
def test_task_specific_keys_are_checked_at_parse_time(raw):
    with pytest.raises(ConfigError, match="params.yaml: "):
        parse_params(raw, "params.yaml")
