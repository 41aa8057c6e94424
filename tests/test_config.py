import copy
from pathlib import Path

import pytest
import yaml

from src.config import ConfigError, Params, load_params, parse_params, unset_keys

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_load_and_match_the_documented_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params == Params()  # params.yaml spells out every default, so nothing is hidden in code


def test_params_yaml_sets_every_key():
    """No default of src/config.py reaches a stage: what makes config.py output-neutral (tests/test_dvc_deps.py)."""
    assert unset_keys(Params, yaml.safe_load((ROOT / "params.yaml").read_text())) == []
    assert unset_keys(Params, {"seeds": [0], "train": {"epochs": 2}})[:2] == ["device", "tasks"]  # the check can fail


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ({"degrade": {"scale": 3}}, "degrade.scale", "2, 4 or 8"),
        ({"train": {"sr4ir": {"tdp_weight": -0.5}}}, "train.sr4ir.tdp_weight", "greater than or equal to 0"),
        ({"train": {"sr4ir": {"cqmix_p": 1.5}}}, "train.sr4ir.cqmix_p", "less than or equal to 1"),
        ({"train": {"epochs": "many"}}, "train.epochs", "integer"),
        ({"cls": {"optim": {"name": "sgd", "lr": 0.1, "eta_min": 0.5}}}, "cls.optim", "eta_min"),
        ({"trian": {"epochs": 3}}, "trian", "unknown key"),
        ({"train": {"sr4ir": {"tdp_wieght": 1.0}}}, "train.sr4ir.tdp_wieght", "unknown key"),
        ({"tasks": ["classification"]}, "tasks.0", "'cls'"),
        ({"tasks": ["cls", "cls"]}, "(top level)", "names a task twice"),
        ({"seg": {"arch": "deeplabv3_mobilenet_v3_large"}}, "seg", "['loss_aux', 'loss_ce']"),
        ({"seg": {"loss_weights": {"loss_ce": 1.0, "loss_aux": 0.5}}}, "seg", "must name exactly the loss terms"),
        ({"det": {"anchor_sizes": [[8], [16]]}}, "det", "the FPN has 3"),
        ({"det": {"tdp_layers": {"C5": 1.0}}}, "det", "are not FPN levels"),
        ({"det": {"fpn_stages": [7, 4]}}, "det", "distinct and increasing"),
        ({"det": {"fpn_stages": [4, 17]}}, "det.fpn_stages.1", "less than or equal to 16"),
    ],
)
def test_invalid_values_fail_naming_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        parse_params(override, "params.yaml")
    msg = str(info.value)
    assert f"params.yaml: {key}" in msg
    assert fragment in msg


def test_crop_not_divisible_by_scale_is_rejected():
    with pytest.raises(ConfigError, match=r"image_size \(66\) must be divisible by degrade.scale \(4\)"):
        parse_params({"data": {"synthetic": {"image_size": 66}}})


def test_warmup_must_leave_epochs_for_tdp():
    with pytest.raises(ConfigError, match=r"warmup_epochs \(3\) must be below train.epochs \(3\)"):
        parse_params({"train": {"epochs": 3, "sr4ir": {"warmup_epochs": 3}}})
    with pytest.raises(ConfigError, match=r"warmup_epochs \(2\) must be below det.epochs \(2\)"):
        parse_params({"det": {"epochs": 2}, "train": {"sr4ir": {"warmup_epochs": 2}}})
    # a task's own epochs count only when the study trains that task
    assert parse_params({"tasks": ["cls"], "det": {"epochs": 1}}).train_epochs("cls") == (8, "cls.epochs")


def test_tuning_budget_is_validated():
    with pytest.raises(ConfigError, match="n_warmup_steps"):
        parse_params({"tune": {"warmup_epochs": 2, "pruner": {"n_warmup_steps": 2}}})
    with pytest.raises(ConfigError, match="tune.tdp_weight: .*log-scale"):
        parse_params({"tune": {"tdp_weight": {"low": 0.0, "high": 1.0, "log": True}}})


def test_params_are_frozen():
    params = Params()
    with pytest.raises(Exception):
        params.seed = 3  # type: ignore[misc]


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def test_digest_changes_with_any_value():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    changed = copy.deepcopy(raw)
    changed["train"]["sr4ir"]["tdp_weight"] = 0.5
    assert parse_params(raw).digest() != parse_params(changed).digest()


def test_the_paper_segmenter_is_one_arch_switch_away():
    """DeepLabV3 with its auxiliary head, as the paper, with the aux weight beside it."""
    from src.tasks import TASKS
    import torch

    p = parse_params({"seg": {"arch": "deeplabv3_mobilenet_v3_large", "loss_weights": {"loss_ce": 1.0, "loss_aux": 0.5}}})
    task = TASKS["seg"](p.seg, num_classes=8)
    terms = task.losses(task.build_model().train(), torch.rand(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long))
    assert set(terms) == {"loss_ce", "loss_aux"}


def test_a_task_trains_with_its_own_batch_when_it_sets_one_and_with_train_batch_size_otherwise(tiny_data, monkeypatch):
    """det.batch_size (the embedded default: 8) reaches the det loaders; 0 falls back to train.batch_size."""
    from src import experiment

    params = parse_params({"train": {"batch_size": 16}, "det": {"batch_size": 4}, "cls": {"batch_size": 0}})
    assert params.train_batch("det") == (4, "det.batch_size")
    assert params.train_batch("cls") == (16, "train.batch_size")
    assert parse_params({}).train_batch("det") == (8, "det.batch_size")
    seen = []

    class Stop(Exception):
        pass

    def loaders(params, task, raw, lr, batch_size, *args, batch_key="train.batch_size"):
        seen.append((batch_size, batch_key))
        raise Stop

    monkeypatch.setattr(experiment, "_loaders", loaders)
    for task in ("det", "cls"):
        with pytest.raises(Stop):
            experiment.train_method(params.model_copy(update={"device": "cpu"}), task, "h2t", *tiny_data)
    assert seen == [(4, "det.batch_size"), (16, "train.batch_size")]


def test_a_task_trains_for_its_own_epochs_when_it_sets_them_and_for_train_epochs_otherwise(tiny_data, monkeypatch):
    """det.epochs is the length of the det runs; 0 falls back to train.epochs (the embedded default: cls 8, the rest 6)."""
    from src import experiment
    from tests.conftest import TINY

    params = parse_params({**TINY, "train": {**TINY["train"], "epochs": 3}, "det": {"epochs": 5}, "cls": {"epochs": 0}})
    assert params.train_epochs("det") == (5, "det.epochs")
    assert params.train_epochs("cls") == (3, "train.epochs")
    assert parse_params({}).train_epochs("cls") == (8, "cls.epochs")
    assert parse_params({}).train_epochs("seg") == parse_params({}).train_epochs("det") == (6, "train.epochs")
    seen = []

    class Stop(Exception):
        pass

    def fit(setup, train_loader, val_loader, epochs, *args, **kwargs):
        seen.append(epochs)
        raise Stop

    monkeypatch.setattr(experiment, "fit", fit)
    for task in ("det", "cls"):
        with pytest.raises(Stop):
            experiment.train_method(params, task, "h2t", *tiny_data)
    assert seen == [5, 3]
