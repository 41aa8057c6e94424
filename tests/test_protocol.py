"""The paper's data protocol and training details (shared/SR4IR_METHOD.md sections 3, 7-9, 11, 12) on tiny
VOC-format fixtures with images of odd sizes: crops, padding, flips, LR bytes, canvases, aspect-ratio groups,
evaluation sizes, the seg aux head's lr, the detector's BatchNorm and TDP features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.config import DegradeConfig, parse_params
from src.data.dataset import make_loader, split_dataset
from src.data.degrade import degrade, degrade_folder, quantize
from src.data.grouping import GroupedBatchSampler, aspect_ratio_groups
from src.data.dataset import EpochSampler
from src.data.prepare import prepare_dataset
from src.data.targets import IGNORE
from src.data.transforms import pad_to, split_views
from src.experiment import build_setup
from src.loop import evaluate
from src.methods import METHODS
from src.metrics import PSNR
from src.steps import per_image
from src.tasks import build_task
from tests.test_sources import _palette_mask, _png_bytes, _rgb, _voc_xml

SCALE = 4
# (stem, width, height, objects as (class, x0, y0, x1, y1, truncated, difficult))
SAMPLES = {
    "train": [
        ("2007_000032", 333, 517, [("aeroplane", 20, 30, 300, 400, 0, 0)]),
        ("2007_000039", 517, 333, [("tvmonitor", 300, 10, 500, 200, 0, 0), ("person", 5, 5, 60, 300, 0, 0)]),
        ("2008_000008", 250, 250, [("dog", 40, 40, 200, 230, 0, 0)]),
        ("2008_000010", 131, 97, [("cat", 10, 10, 120, 90, 0, 0)]),
        ("2008_000011", 97, 131, [("bird", 10, 20, 80, 120, 0, 0)]),
        ("2008_000012", 300, 170, [("car", 100, 20, 280, 160, 0, 0)]),
    ],
    "val": [
        ("2007_000033", 333, 517, [("dog", 10, 2, 255, 400, 0, 1)]),
        ("2007_000042", 201, 150, [("bird", 2, 2, 180, 140, 0, 0)]),
    ],
}


def _voc(root: Path) -> Path:
    base = root / "VOCdevkit/VOC2012"
    for sub in ("ImageSets/Segmentation", "ImageSets/Main", "JPEGImages", "SegmentationClass", "Annotations"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for split, samples in SAMPLES.items():
        (base / f"ImageSets/Segmentation/{split}.txt").write_text("".join(f"{s[0]}\n" for s in samples))
        for k, (stem, w, h, objs) in enumerate(samples):
            (base / f"JPEGImages/{stem}.jpg").write_bytes(_png_bytes(_rgb(w, h, k), "JPEG"))
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1 + k
            (base / f"SegmentationClass/{stem}.png").write_bytes(_palette_mask(mask))
            (base / f"Annotations/{stem}.xml").write_bytes(_voc_xml(stem, w, h, objs))
    (base / "ImageSets/Main/train.txt").write_text("ignored\n")
    return root


TINY_NETS = {
    "sr": {"n_blocks": 1, "n_feats": 8},
    "seg": {"arch": "deeplabv3_mobilenet_v3_large", "loss_weights": {"loss_ce": 1.0, "loss_aux": 0.5}},
    "det": {"batch_size": 0, "epochs": 0, "fpn_channels": 16, "representation_size": 32, "anchor_sizes": [[16], [32], [64]],
            "rpn_post_nms_top_n_train": 16, "rpn_post_nms_top_n_test": 8, "box_batch_size_per_image": 8},  # batch, epochs: train's
    "train": {"epochs": 2, "batch_size": 2, "sr4ir": {"warmup_epochs": 1}},
}
SEG = {"tasks": ["seg"], "device": "cpu", "degrade": {"scale": SCALE}, **TINY_NETS,
       "data": {"name": "voc", "voc_md5": "", "image_size": 72, "resize": "short_side", "train_crop": 64,
                "eval_crop": 0, "pad": "replicate", "hflip": True},
       "eval": {"batch_size": 1, "psnr_crop_border": 2}}
DET = {"tasks": ["det"], "device": "cpu", "degrade": {"scale": SCALE}, **TINY_NETS,
       "data": {"name": "voc", "voc_md5": "", "image_size": 0, "resize": "short_side", "aspect_groups": 3,
                "pad": "reflect", "hflip": True},
       "train": {**TINY_NETS["train"], "linear_warmup": True, "sr4ir": {"warmup_epochs": 0}},
       "eval": {"batch_size": 1, "psnr_crop_border": 2, "psnr_on": "canvas"}}


def _study(tmp_path: Path, raw_params: dict) -> tuple:
    cache = _voc(tmp_path / "cache")
    raw_params = {**raw_params, "data": {**raw_params["data"], "cache_dir": str(cache)}}
    params = parse_params(raw_params, "test")
    raw, lr = tmp_path / "raw", tmp_path / "lr"
    prepare_dataset(params.data, raw, params.tasks)
    splits = tuple(s for s, on in params.data.lr_on_disk.items() if on)
    degrade_folder(raw, lr, params.degrade, splits, views=split_views(params.data))
    return params, raw, lr


@pytest.fixture(scope="module")
def seg_study(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("seg"), SEG)


@pytest.fixture(scope="module")
def det_study(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("det"), DET)


def _lr_of(hr: torch.Tensor) -> torch.Tensor:
    """The official LR: quantize(interpolate(HR, 1/s, bicubic)), PyTorch defaults."""
    return quantize(F.interpolate(hr[None], scale_factor=1 / SCALE, mode="bicubic", align_corners=False))[0]


# -------------------------------------------------------------------------------------------------
# What the download and degrade stages store


def test_short_side_resize_keeps_each_images_aspect_ratio(seg_study, det_study):
    params, raw, lr = seg_study
    coco = json.loads((raw / "val/instances.json").read_text())
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    # 333x517 -> short side 72: 72x111 (torchvision's Resize(72) truncates the long side); 201x150 -> 96x72
    assert sorted(sizes.values()) == [(72, 111), (96, 72)]
    for name, (w, h) in sizes.items():
        from PIL import Image
        assert Image.open(raw / "val/images" / name).size == (w, h)
        assert Image.open(raw / "val/masks" / name).size == (w, h)
    # det keeps the source size (image_size 0)
    _, det_raw, _ = det_study
    det_sizes = sorted((im["width"], im["height"]) for im in json.loads((det_raw / "val/instances.json").read_text())["images"])
    assert det_sizes == [(201, 150), (333, 517)]


def test_degrade_stage_writes_the_val_lr_of_each_image_padded_to_the_scale(seg_study, det_study):
    from src.data.degrade import read_rgb

    for (params, raw, lr), mode in ((seg_study, "replicate"), (det_study, "reflect")):
        assert not (lr / "train").exists()  # training LRs are made per batch (random crops, batch canvases)
        for f in sorted((raw / "val/images").glob("*.png")):
            hr = read_rgb(f)
            h, w = hr.shape[-2:]
            padded = pad_to(hr, -(-h // SCALE) * SCALE, -(-w // SCALE) * SCALE, mode)
            assert padded.shape[-2:] != hr.shape[-2:] or h % SCALE == 0
            assert torch.equal(read_rgb(lr / "val" / f.name), _lr_of(padded))


def test_pad_rules_replicate_and_reflect_where_it_fits():
    img = torch.arange(12.0).reshape(1, 3, 4)
    rep = pad_to(img, 5, 6, "replicate")
    assert rep[0, 4].tolist() == rep[0, 2].tolist() and rep[0, :3, 4:].tolist() == [[3.0, 3.0], [7.0, 7.0], [11.0, 11.0]]
    ref = pad_to(img, 5, 6, "reflect")  # padding (2, 2) smaller than the image (3, 4): mirrored
    assert ref[0, 3].tolist() == ref[0, 1].tolist() and ref[0, 0, 4:].tolist() == [2.0, 1.0]
    big = pad_to(img, 8, 6, "reflect")  # 5 rows of padding on 3 rows: replicate (the official det rule)
    assert torch.equal(big, pad_to(img, 8, 6, "replicate"))


# -------------------------------------------------------------------------------------------------
# Training samples: crops, pads, flips and the LR made of each crop


def test_seg_train_crops_pad_and_flip_together_and_their_lr_is_the_crop_degraded(seg_study):
    params, raw, lr = seg_study
    task = build_task("seg", params, raw)
    ds = split_dataset(params, raw, lr, "train", task)
    assert not ds.lr_on_disk
    flipped = 0
    for i in range(len(ds)):
        for trial in range(4):
            torch.manual_seed(100 * i + trial)
            lr_img, hr, mask = ds[i]
            assert hr.shape == (3, 64, 64) and mask.shape == (64, 64)
            assert torch.equal(lr_img, _lr_of(hr))  # byte for byte the official LR of this crop
            # The mask stays aligned with its image through crop and flip: the object square's edges agree
            torch.manual_seed(100 * i + trial)
            win = ds.view.window(*ds.sizes[i])
            flip = bool(torch.rand(()) < 0.5)
            flipped += flip
            full = ds.target_io.read(ds.targets[i])
            want = full[win.top:win.top + 64, win.left:win.left + 64]
            assert torch.equal(mask, want.flip(-1) if flip else want)
    assert 0 < flipped < 4 * len(ds)


def test_a_crop_larger_than_the_image_pads_image_0_and_mask_255(seg_study):
    params, raw, lr = seg_study
    big = parse_params({**SEG, "data": {**SEG["data"], "cache_dir": params.data.cache_dir, "train_crop": 96, "hflip": False}}, "t")
    ds = split_dataset(big, raw, lr, "train", build_task("seg", big, raw))
    i = next(k for k, (h, w) in enumerate(ds.sizes) if w < 96)  # a 72-wide image
    h, w = ds.sizes[i]
    torch.manual_seed(0)
    lr_img, hr, mask = ds[i]
    assert hr.shape == (3, 96, 96)
    assert (hr[:, :, w:] == 0).all() and (mask[:, w:] == IGNORE).all()
    assert torch.equal(lr_img, _lr_of(hr))


def test_a_flipped_samples_lr_is_the_flipped_image_degraded(tmp_path):
    """Bicubic + rounding does not commute with a flip exactly: on 8-bit images degrade-then-flip differs from
    flip-then-degrade by one level in a few LR values per 10^4 (measured: 13 of 49,152 for 64 random 64-px
    images at x4). A flipped sample's LR must be the flipped HR degraded, as the official code makes it."""
    from PIL import Image

    from src.data.dataset import PairedDataset
    from src.data.transforms import SampleView

    cfg = DegradeConfig(scale=SCALE)
    imgs = torch.randint(0, 256, (32, 3, 64, 64), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    (tmp_path / "raw/train/images").mkdir(parents=True)
    for i, img in enumerate(imgs):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / f"raw/train/images/{i:03d}.png")
    degrade_folder(tmp_path / "raw", tmp_path / "lr", cfg, ("train",))
    hr_all = imgs.float() / 255
    shortcut = degrade(hr_all, cfg).flip(-1) != degrade(hr_all.flip(-1), cfg)
    assert 0 < int(shortcut.sum()) < 1e-3 * shortcut.numel()  # the shortcut is wrong somewhere in this set

    ds = PairedDataset(tmp_path / "raw", tmp_path / "lr", "train", None, SampleView(hflip=True), degrade=cfg)
    flips = 0
    for i in range(len(ds)):
        for seed in range(3):
            torch.manual_seed(seed)
            lr_img, hr, _ = ds[i]
            if torch.equal(hr, hr_all[i].flip(-1)):
                flips += 1
                assert torch.equal(lr_img, degrade(hr_all[i].flip(-1)[None], cfg)[0])
            else:
                assert torch.equal(hr, hr_all[i]) and torch.equal(lr_img, degrade(hr_all[i][None], cfg)[0])
    assert 0 < flips < 3 * len(ds)


def test_eval_centre_crop_and_its_precomputed_lr(tmp_path):
    """The cls protocol's eval view (resize 256, centre crop 224), here 72 -> 64: torchvision's CenterCrop
    rounding, and the degrade stage's LR is that crop's."""
    params, raw, lr = _study(tmp_path, {**SEG, "data": {**SEG["data"], "eval_crop": 64}, "eval": {"batch_size": 2, "psnr_crop_border": 2}})
    ds = split_dataset(params, raw, lr, "val", build_task("seg", params, raw))
    batch = next(iter(make_loader(ds, 2, False, 0)))
    assert batch.sizes is None and batch.hr.shape == (2, 3, 64, 64) and batch.target.shape == (2, 64, 64)
    for i, (h, w) in enumerate(ds.sizes):
        full = ds._read(i)[0]
        top, left = int(round((h - 64) / 2.0)), int(round((w - 64) / 2.0))
        want = full[:, top:top + 64, left:left + 64]
        assert torch.equal(batch.hr[i], want) and torch.equal(batch.lr[i], _lr_of(want))


# -------------------------------------------------------------------------------------------------
# Detection: groups, canvases, padded LR


def test_aspect_ratio_groups_follow_torchvisions_bins():
    # k = 3: edges 2**linspace(-1, 1, 7) = 0.5, 0.63, 0.79, 1, 1.26, 1.59, 2 -> 8 groups
    sizes = [(517, 333), (333, 517), (250, 250), (97, 131), (131, 97), (170, 300), (100, 300), (300, 100)]
    assert aspect_ratio_groups(sizes, 3) == [2, 5, 4, 5, 2, 6, 7, 0]  # width/height: 0.64, 1.55, 1, 1.35, 0.74, 1.76, 3, 0.33


def test_grouped_batches_share_a_group_and_every_epoch_has_len_batches():
    groups = [0, 1, 0, 1, 0, 1, 0, 2, 2]
    sampler = EpochSampler(len(groups), seed=0, batch_size=2)
    gb = GroupedBatchSampler(sampler, groups, 2)
    assert len(gb) == 4
    for epoch in range(3):
        gb.set_epoch(epoch)
        batches = list(gb)
        assert len(batches) == 4 and all(len(b) == 2 for b in batches)
        full = [b for b in batches[:3]]
        assert all(len({groups[i] for i in b}) == 1 for b in full)
    gb.set_epoch(0)
    first = list(gb)
    gb.set_epoch(1)
    assert list(gb) != first  # the order changes with the epoch


def test_det_batches_sit_on_a_reflect_padded_canvas_whose_lr_is_degraded_whole(det_study):
    params, raw, lr = det_study
    task = build_task("det", params, raw)
    ds = split_dataset(params, raw, lr, "train", task)
    loader = make_loader(ds, 2, True, 0, seed=0, aspect_groups=3)
    groups = aspect_ratio_groups(ds.sizes, 3)
    batches = list(loader.batch_sampler)
    assert len(batches) == len(ds) // 2
    for b in batches[:-1]:
        assert len({groups[i] for i in b}) == 1
    torch.manual_seed(0)
    for batch in loader:
        h_max, w_max = max(h for h, _ in batch.sizes), max(w for _, w in batch.sizes)
        assert batch.hr.shape[-2:] == (-(-h_max // SCALE) * SCALE, -(-w_max // SCALE) * SCALE)
        assert torch.equal(batch.lr, quantize(F.interpolate(batch.hr, scale_factor=1 / SCALE, mode="bicubic")))
        for img, (h, w), t in zip(batch.hr, batch.sizes, batch.target):
            canvas = pad_to(img[:, :h, :w], *batch.hr.shape[-2:], "reflect")
            assert torch.equal(canvas, img)  # the padding is the rule's, from the image itself
            assert (t["boxes"][:, 2] <= w).all() and (t["boxes"][:, 3] <= h).all()
        crops = per_image(batch.hr, batch.sizes)
        assert [tuple(c.shape[-2:]) for c in crops] == list(batch.sizes)


def test_det_flip_moves_boxes_with_the_full_size_image(det_study):
    params, raw, lr = det_study
    ds = split_dataset(params, raw, lr, "train", build_task("det", params, raw))
    i = 0
    hr0 = ds._read(i)[0]
    w = hr0.shape[-1]
    for seed in range(8):
        torch.manual_seed(seed)
        _, hr, t = ds[i]
        if torch.equal(hr, hr0.flip(-1)):
            boxes0 = ds.targets[i]["boxes"]
            assert torch.allclose(t["boxes"][:, [0, 2]], w - boxes0[:, [2, 0]])
            return
    pytest.fail("no flip in 8 draws")


# -------------------------------------------------------------------------------------------------
# Evaluation at each image's size


def test_seg_eval_is_each_whole_image_with_the_sr_cut_back(seg_study):
    params, raw, lr = seg_study
    task = build_task("seg", params, raw)
    ds = split_dataset(params, raw, lr, "val", task)
    loader = make_loader(ds, 1, False, 0)
    s = build_setup(METHODS["sr4ir"], params, task)
    psnr = PSNR(2)
    for batch, size in zip(loader, ds.sizes):
        assert batch.sizes in (None, [size])
        sr = s.sr(batch.lr)
        view = per_image(sr, batch.sizes)
        assert tuple(view.shape[-2:]) == size and tuple(batch.target.shape[-2:]) == size  # mIoU at 520-scale size
        psnr.update(view.detach(), per_image(batch.hr, batch.sizes))
    metrics = evaluate(s, loader, torch.device("cpu"), psnr_crop=2)
    assert metrics["psnr"] == pytest.approx(psnr.compute()["psnr"], rel=1e-6)


def test_det_psnr_on_the_canvas_counts_the_padding(det_study):
    params, raw, lr = det_study
    task = build_task("det", params, raw)
    ds = split_dataset(params, raw, lr, "val", task)
    loader = make_loader(ds, 1, False, 0)
    s = build_setup(METHODS["l2t"], params, task)
    canvas = evaluate(s, loader, torch.device("cpu"), 2, psnr_on="canvas")["psnr"]
    image = evaluate(s, loader, torch.device("cpu"), 2, psnr_on="image")["psnr"]
    assert canvas != image and np.isfinite(canvas) and np.isfinite(image)


# -------------------------------------------------------------------------------------------------
# Networks and optimisers


def test_seg_aux_head_trains_at_ten_times_the_lr(seg_study):
    params, raw, _ = seg_study
    s = build_setup(METHODS["h2t"], params, build_task("seg", params, raw))
    lrs = [g["lr"] for g in s.opt_rec.param_groups]
    assert lrs == [pytest.approx(params.seg.optim.lr), pytest.approx(10 * params.seg.optim.lr)]
    aux = {id(p) for p in s.rec.net.aux_classifier.parameters()}
    assert {id(p) for p in s.opt_rec.param_groups[1]["params"]} == aux
    assert not aux & {id(p) for p in s.opt_rec.param_groups[0]["params"]}


def test_from_scratch_detector_batchnorm_has_torchvisions_detection_eps(det_study):
    params, raw, _ = det_study
    model = build_task("det", params, raw).build_model()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-5 for m in bns)


def test_det_tdp_features_come_from_the_resized_batch_the_detector_sees(det_study):
    params, raw, _ = det_study
    resizing = parse_params({**DET, "data": {**DET["data"], "cache_dir": params.data.cache_dir},
                             "det": {**TINY_NETS["det"], "min_size": 96}}, "t")
    task = build_task("det", resizing, raw)
    model = task.build_model().eval()
    feats = task.features(model, torch.rand(2, 3, 64, 64))
    assert feats["0"].shape[-2:] == (12, 12)  # 64 px resized to 96, FPN level 0 at stride 8 (unresized: 8x8)
    keep = build_task("det", params, raw)
    assert keep.features(keep.build_model().eval(), torch.rand(2, 3, 64, 64))["0"].shape[-2:] == (8, 8)


def test_det_warmup_lrs_of_the_first_steps(det_study):
    """Both optimisers of S+T ramp as LinearLR(1/N) over epoch 1 (N = batches per epoch)."""
    from src.loop import fit

    params, raw, lr = det_study
    task = build_task("det", params, raw)
    ds = split_dataset(params, raw, lr, "train", task)
    loader = make_loader(ds, 2, True, 0, seed=0, aspect_groups=3)
    n = len(loader)
    s = build_setup(METHODS["joint"], params, task)
    seen: list[tuple[float, float]] = []
    s.opt_sr.register_step_pre_hook(
        lambda *_: seen.append((s.opt_sr.param_groups[0]["lr"], s.opt_rec.param_groups[0]["lr"])))
    fit(s, loader, None, 2, torch.device("cpu"), linear_warmup=True)
    base_sr, base_rec = params.train.sr_optim.lr, params.det.optim.lr
    for k in range(n):
        f = 1 / n + (1 - 1 / n) * k / n
        assert seen[k] == (pytest.approx(base_sr * f), pytest.approx(base_rec * f))
    assert seen[n] == (pytest.approx(base_sr), pytest.approx(base_rec))  # epoch 2 starts the cosine at its top


def test_cqmix_mask_covers_the_padded_canvas():
    from src.cqmix import cqmix

    sr, hr = torch.ones(1, 3, 20, 36), torch.zeros(1, 3, 20, 36)
    mixed = cqmix(sr, hr, 4, 0.5, torch.Generator().manual_seed(1))
    cells = mixed[0, 0, ::5, ::9]  # 4x4 cells of 5x9 px on the 20x36 canvas
    assert cells.shape == (4, 4) and 0 < cells.sum() < 16
    assert torch.equal(mixed[0, 0], cells.repeat_interleave(5, 0).repeat_interleave(9, 1))
