"""The embedded default dataset: gratings whose class lives in fine detail.

Every image holds one to ``max_objects`` elliptical objects of one class on a smooth, randomly coloured
background. An object's class is the orientation (0, 45, 90 or 135 degrees) and the kind (solid or
dashed) of the fine grating that fills it. The grating period (about 5 px at 64 px) sits above the
Nyquist limit of a x4 low-resolution image, so bicubic degradation aliases it: the evidence is weakened,
not erased, and a recogniser on low-resolution input does clearly worse than on the original. Because
the texture fills the whole object, a from-scratch network learns it in a few epochs on a CPU.

Annotations for all three tasks come from the same draw: a class label per image (classification), a
per-pixel class map with 255 on ambiguous object borders (segmentation) and boxes (detection, COCO JSON).
Everything is a pure function of ``seed``: the same seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORIENTATIONS = (0, 45, 90, 135)
KINDS = ("solid", "dashed")
CLASS_NAMES = tuple(f"{kind}_{angle}" for kind in KINDS for angle in ORIENTATIONS)
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Sample:
    """One generated image and its annotations (all in HR pixel coordinates)."""

    image: np.ndarray  # (H, W, 3) uint8
    label: int  # class index in [0, num_classes)
    mask: np.ndarray  # (H, W) uint8: 0 background, 1 + class for objects, 255 on ambiguous borders
    boxes: list[tuple[float, float, float, float]]  # (x, y, w, h) per object, COCO xywh
    box_labels: list[int]  # class index per box


def _smooth_noise(rng: np.random.Generator, size: int, n_waves: int = 4) -> np.ndarray:
    """(size, size) smooth field in [0, 1]: a sum of low-frequency waves (period >= size / 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    field = np.zeros((size, size), np.float32)
    for _ in range(n_waves):
        freq = rng.uniform(0.3, 3.0) / size
        theta = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        field += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in [0, 1]: two random colours blended by a smooth field, plus mild grain."""
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    t = _smooth_noise(rng, size)[..., None]
    img = c0 * (1 - t) + c1 * t
    img += rng.normal(0.0, 0.015, img.shape)  # sensor-like grain, far below the grating contrast
    return img


def _grating(rng: np.random.Generator, size: int, angle_deg: float, dashed: bool, period: float) -> np.ndarray:
    """(size, size) float in [0, 1]: an anti-aliased stripe pattern; dashed stripes are cut across."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    theta = np.deg2rad(angle_deg + rng.normal(0.0, 3.0))  # a few degrees of jitter
    across = np.cos(theta) * xx + np.sin(theta) * yy  # distance across the stripes
    along = -np.sin(theta) * xx + np.cos(theta) * yy  # distance along a stripe
    stripes = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * across / period + rng.uniform(0, 2 * np.pi)))
    if dashed:
        dash_period = 2.0 * period
        gaps = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * along / dash_period + rng.uniform(0, 2 * np.pi)))
        stripes = stripes * gaps
    return stripes


def generate_sample(rng: np.random.Generator, size: int, max_objects: int, period: float) -> Sample:
    """Draw one image; ``rng`` is consumed in a fixed order, so a seed gives identical output."""
    label = int(rng.integers(len(CLASS_NAMES)))
    dashed = CLASS_NAMES[label].startswith("dashed")
    angle = ORIENTATIONS[label % len(ORIENTATIONS)]

    img = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    boxes: list[tuple[float, float, float, float]] = []
    n_objects = int(rng.integers(1, max_objects + 1))
    for i in range(n_objects):
        # The first object is the large one; later ones are smaller and may overlap it.
        r_max = size * (0.36 if i == 0 else 0.22)
        ra, rb = rng.uniform(0.45 * r_max, r_max), rng.uniform(0.45 * r_max, r_max)
        cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
        rot = rng.uniform(0, np.pi)
        u = (np.cos(rot) * (xx - cx) + np.sin(rot) * (yy - cy)) / ra
        v = (-np.sin(rot) * (xx - cx) + np.cos(rot) * (yy - cy)) / rb
        radius = np.sqrt(u**2 + v**2)  # 1 on the ellipse's boundary
        inside = radius <= 1.0
        if inside.sum() < 16:
            continue
        # Object colours: two tones with enough contrast that the grating is visible at HR.
        lo = rng.uniform(0.0, 0.45, 3)
        hi = np.clip(lo + rng.uniform(0.35, 0.6, 3), 0, 1)
        pattern = _grating(rng, size, angle, dashed, period * rng.uniform(0.9, 1.1))[..., None]
        obj = lo * (1 - pattern) + hi * pattern
        # Soft edge (one pixel) so the boundary itself is not a hard aliasing cue.
        alpha = np.clip((1.0 - radius) * min(ra, rb), 0.0, 1.0)[..., None]
        img = img * (1 - alpha) + obj * alpha
        mask[inside] = 1 + label
        border = np.abs(radius - 1.0) * min(ra, rb) < 1.0  # within ~1 px of the boundary
        mask[border] = IGNORE_INDEX
        ys, xs = np.nonzero(inside)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        boxes.append((float(x0), float(y0), float(x1 - x0), float(y1 - y0)))
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Sample(image=image, label=label, mask=mask, boxes=boxes, box_labels=[label] * len(boxes))


def generate_split(seed: "int | np.random.SeedSequence", n: int, size: int, max_objects: int, period: float) -> list[Sample]:
    """``n`` samples from one seeded stream."""
    rng = np.random.default_rng(seed)
    return [generate_sample(rng, size, max_objects, period) for _ in range(n)]
