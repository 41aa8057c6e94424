import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO

from src.config import DegradeConfig
from src.data import synthetic
from src.data.degrade import degrade, read_rgb
from src.data.prepare import prepare_dataset


def test_generator_is_deterministic_and_seed_dependent():
    a = synthetic.generate_split(7, 4, 32, 3, 5.0)
    b = synthetic.generate_split(7, 4, 32, 3, 5.0)
    c = synthetic.generate_split(8, 4, 32, 3, 5.0)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) for x, y in zip(a, b))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_annotations_agree_with_each_other():
    for s in synthetic.generate_split(1, 20, 64, 3, 5.0):
        values = set(np.unique(s.mask).tolist())
        assert values <= {0, 1 + s.label, synthetic.IGNORE_INDEX}
        assert 1 + s.label in values  # the object is visible
        assert synthetic.IGNORE_INDEX in values  # its border is marked ambiguous
        assert len(s.boxes) >= 1 and all(bl == s.label for bl in s.box_labels)
        for x, y, w, h in s.boxes:
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 64 and y + h <= 64


def test_prepared_dataset_layout_and_coco_json(tmp_path, tiny_params):
    raw = tmp_path / "raw"
    counts = prepare_dataset(tiny_params.data, raw)
    assert counts == {"train": 16, "val": 8}
    assert json.loads((raw / "classes.json").read_text()) == list(synthetic.CLASS_NAMES)
    assert len(list((raw / "train" / "images").glob("*.png"))) == 16
    coco = COCO(str(raw / "val" / "instances.json"))
    assert len(coco.getImgIds()) == 8
    assert {c["id"] for c in coco.loadCats(coco.getCatIds())} == set(range(1, len(synthetic.CLASS_NAMES) + 1))
    # Writing again gives byte-identical files (deterministic from data.seed).
    again = tmp_path / "again"
    prepare_dataset(tiny_params.data, again)
    assert (raw / "train/images/000003.png").read_bytes() == (again / "train/images/000003.png").read_bytes()


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_degrade_sizes_levels_and_determinism(scale):
    hr = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    cfg = DegradeConfig(scale=scale)
    lr = degrade(hr, cfg)
    assert lr.shape == (2, 3, 64 // scale, 48 // scale)
    levels = lr * 255
    assert torch.equal(levels, levels.round())  # 8-bit values
    assert lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(lr, degrade(hr, cfg))
    # It is PyTorch bicubic without antialiasing, then rounding (the official recipe).
    ref = (F.interpolate(hr, scale_factor=1 / scale, mode="bicubic") * 255).round().clamp(0, 255) / 255
    assert torch.equal(lr, ref)


def test_degrade_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="not divisible"):
        degrade(torch.rand(1, 3, 30, 30), DegradeConfig(scale=4))


def test_lr_pngs_on_disk_equal_degrading_the_hr_pngs(tiny_data, tiny_params):
    raw, lr = tiny_data
    hr = read_rgb(raw / "train/images/000000.png")
    assert torch.allclose(read_rgb(lr / "train/000000.png"), degrade(hr[None], tiny_params.degrade)[0], atol=1e-6)


def test_unreadable_image_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ValueError, match="broken.png: cannot decode image"):
        read_rgb(bad)
