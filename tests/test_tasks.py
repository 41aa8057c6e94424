"""Every task behind the one interface (parametrised over the registry), and the segmentation metric."""

import math

import numpy as np
import pytest
import torch
import torchvision

from src.config import ClsConfig, Params, SRConfig, parse_params
from src.data.dataset import PairedDataset, make_loader
from src.data.targets import targets_for
from src.errors import ConfigError
from src.experiment import build_setup
from src.loop import evaluate, train_one_epoch
from src.losses import tdp_loss
from src.methods import METHODS
from src.models.sr import build_sr
from src.tasks import TASKS, build_task
from src.tasks.seg import ConfusionIoU

# At 64-px input: ResNet-10's (and ResNet-18's) layer4 at stride 32; the dilated DeepLab backbone's C5 at stride 16; the detector's
# FPN levels '0' (MobileNetV3 features[4], stride 8) and '1' (features[7], stride 16) with det.fpn_channels.
FEATURE_SHAPES = {"cls": {"layer4": (2, 512, 2, 2)}, "seg": {"C5": (2, 960, 4, 4)},
                  "det": {"0": (2, 64, 8, 8), "1": (2, 64, 4, 4)}}


def _task(name: str):
    return TASKS[name](Params().task_config(name), num_classes=8)


def _target(name: str):
    if name == "cls":
        return torch.tensor([1, 5])
    if name == "det":
        return [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([3])},
                {"boxes": torch.tensor([[5.0, 20.0, 25.0, 60.0], [30.0, 30.0, 50.0, 50.0]]), "labels": torch.tensor([1, 8])}]
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 10:40, 10:40] = 3
    mask[:, 9, 10:40] = 255
    return mask


@pytest.mark.parametrize("name", sorted(TASKS))
def test_loss_terms_are_named_as_params_expect_and_finite(name):
    task = _task(name)
    terms = task.losses(task.build_model().train(), torch.rand(2, 3, 64, 64), _target(name))
    assert set(terms) == set(Params().task_config(name).loss_weights)
    assert all(math.isfinite(v.item()) for v in terms.values())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tdp_features_have_the_documented_shapes(name):
    task = _task(name)
    rec = task.build_model().eval()
    feats = task.features(rec, torch.rand(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == FEATURE_SHAPES[name]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_sr_phase_gradients_reach_sr_and_not_the_frozen_recogniser(name):
    task = _task(name)
    rec, sr = task.build_model(), build_sr(SRConfig(n_blocks=1, n_feats=8), 4)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    with task.frozen(rec):
        out = sr(lr)
        with torch.no_grad():
            f_hr = task.features(rec, hr)
        loss = tdp_loss(task.features(rec, out), f_hr, Params().task_config(name).tdp_layers)
        loss = loss + sum(task.losses(rec, out, _target(name)).values())
    loss.backward()
    assert all(p.grad is None for p in rec.parameters())
    assert all(p.grad is not None for p in sr.parameters() if p.requires_grad)
    assert rec.training  # restored after the critic context


@pytest.mark.parametrize("arch, blocks", [("resnet10", 1), ("resnet18", 2)])
def test_cls_arch_builds_torchvisions_resnet_with_its_blocks_per_stage(arch, blocks):
    """The embedded default resnet10 is torchvision's ResNet with one BasicBlock a stage; resnet18 has two.
    Both end in the same 512-channel layer4, so the TDP layers and the head do not change with the arch."""
    net = TASKS["cls"](ClsConfig(arch=arch), num_classes=8).build_model().net
    assert isinstance(net, torchvision.models.ResNet)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [blocks] * 4
    assert isinstance(net.layer1[0], torchvision.models.resnet.BasicBlock) and net.fc.out_features == 8


def test_resnet10_with_imagenet_weights_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"params.yaml: cls: pretrained: torchvision has no ImageNet weights for resnet10"):
        parse_params({"cls": {"pretrained": True}}, "params.yaml")
    assert parse_params({"cls": {"arch": "resnet18", "pretrained": True}}).cls.pretrained  # the paper's network may


def test_miou_matches_a_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    preds = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    m = ConfusionIoU(4)
    m.update(preds, target)
    # Kept pixels (target != 255): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,2)
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 1 -> 1/2;
    # class 2: TP 1, FP 1, FN 1 -> 1/3; class 3: absent everywhere -> left out.
    expected = 100 * (1 / 3 + 1 / 2 + 1 / 3) / 3
    out = m.compute()
    assert math.isclose(out["miou"], expected, rel_tol=1e-9)
    assert math.isclose(out["pixel_acc"], 100 * 4 / 7, rel_tol=1e-9)


def test_masks_with_unknown_class_ids_are_rejected_naming_the_file(tmp_path):
    from PIL import Image

    path = tmp_path / "masks" / "000000.png"
    path.parent.mkdir()
    Image.fromarray(np.full((8, 8), 42, np.uint8)).save(path)
    task = _task("seg")
    with pytest.raises(ValueError, match="000000.png: class id 42"):
        targets = targets_for(task)
        targets.collate(targets.load(tmp_path, ["000000"]))


@pytest.mark.parametrize("name", ["seg", "det"])
@pytest.mark.parametrize("method", ["h2t", "t2s", "sr4ir"])
def test_every_task_trains_through_the_same_loop(name, method, tiny_data, tiny_params):
    raw, lr = tiny_data
    task = build_task(name, tiny_params, raw)
    ds = PairedDataset(raw, lr, "train", task)
    loader = make_loader(ds, 8, True, 0, seed=0)
    s = build_setup(METHODS[method], tiny_params, task)
    before = {k: v.clone() for k, v in (s.sr or s.rec).state_dict().items()}
    terms = train_one_epoch(s, loader, torch.device("cpu"), [], tdp_on=True, desc="t")
    assert all(math.isfinite(v) for v in terms.values())
    assert set(terms) >= {"train/loss_tdp"} if method == "sr4ir" else terms
    trained = s.sr if METHODS[method].trains_sr else s.rec
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items() if v.is_floating_point())
    metrics = evaluate(s, make_loader(PairedDataset(raw, lr, "val", task), 8, False, 0), torch.device("cpu"), 2)
    assert 0.0 <= metrics[task.primary_metric] <= 100.0


def test_detection_map_equals_pycocotools_on_the_split_json(tmp_path):
    """CocoMAP over targets read from instances.json gives the numbers COCOeval prints for that file."""
    import contextlib
    import io
    import json

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for i in range(1, 7):
        images.append({"id": 10 * i, "file_name": f"{i:06d}.png", "height": 64, "width": 64})
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 30, 2)
            w, h = rng.uniform(4, 30, 2)
            cat = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": 10 * i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            # A noisy detection of this object, sometimes with the wrong class, plus a spurious one.
            dets.append({"image_id": 10 * i, "category_id": cat if rng.random() < 0.8 else 1,
                         "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w, h], "score": float(rng.random())})
        dets.append({"image_id": 10 * i, "category_id": 2, "bbox": [1.0, 1.0, 10.0, 10.0], "score": 0.3})
    coco = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "instances.json"))
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    task = TASKS["det"](Params().det, num_classes=3)
    names = [f"{i:06d}" for i in range(1, 7)]
    targets = targets_for(task).load(tmp_path, names)
    metric = task.new_metric()
    for t in targets:  # one image per update, the detections in the detector's output format
        mine = [d for d in dets if d["image_id"] == int(t["image_id"])]
        boxes = torch.tensor([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]] for d in mine])
        pred = {"boxes": boxes, "labels": torch.tensor([d["category_id"] for d in mine]),  # category c is label c here
                "scores": torch.tensor([d["score"] for d in mine])}
        metric.update([pred], [t])
    out = metric.compute()
    assert out["map"] == pytest.approx(100 * ev.stats[0], abs=1e-4)
    assert out["ap50"] == pytest.approx(100 * ev.stats[1], abs=1e-4)
    assert out["ap75"] == pytest.approx(100 * ev.stats[2], abs=1e-4)
    assert 0 < out["map"] < out["ap50"] < 100


def test_detector_sees_the_image_at_its_own_size():
    """No silent rescale: the detector's transform keeps a 64-px SR output at 64 px (only normalised)."""
    task = _task("det")
    det = task.build_model().eval()
    x = torch.rand(2, 3, 64, 48)
    batch, _ = det.net.transform(list(x))
    assert batch.image_sizes == [(64, 48), (64, 48)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(batch.tensors[:, :, :64, :48], (x - mean) / std)


@pytest.mark.parametrize("bad, message", [
    ({"bbox": [10, 10, 0, 5]}, "zero area"),
    ({"bbox": [50, 10, 20, 5]}, "outside the 64x64 image"),
    ({"category_id": 99}, "unknown category 99"),
])
def test_bad_boxes_are_rejected_naming_the_file_and_annotation(tmp_path, bad, message):
    import json

    ann = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0, **bad}
    coco = {"images": [{"id": 1, "file_name": "000000.png", "height": 64, "width": 64}], "annotations": [ann],
            "categories": [{"id": c} for c in range(1, 9)]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=f"instances.json: image '000000', annotation 7: .*{message}"):
        targets_for(_task("det")).load(tmp_path, ["000000"])


def test_detection_hflip_moves_boxes_with_the_image():
    task = _task("det")
    t = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0]]), "labels": torch.tensor([2])}
    assert targets_for(task).hflip(t, 64)["boxes"].tolist() == [[34.0, 5.0, 54.0, 20.0]]
