"""BYOL's asymmetric view augmentations, with every random parameter drawn from an explicit RNG.

Each sample gets its own parameters (never one draw for a whole batch). The RNG is seeded from
(run seed, epoch, sample index), so views are the same whatever the number of workers and after
a resume, which is what makes an interrupted run end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class ViewSpec:
    """Augmentation strengths of one view; BYOL uses two specs differing in blur and solarize."""

    size: int = 224
    crop_min_scale: float = 0.08
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_prob: float = 0.2
    blur_prob: float = 1.0
    solarize_prob: float = 0.0
    interpolation: str = "bilinear"  # resize of the crop: bilinear | bicubic


def byol_view_specs(cfg) -> tuple[ViewSpec, ViewSpec]:
    """The two view specs from a pretraining config (AUG.* and DATA.IMAGE_SIZE)."""
    a = cfg.AUG
    common = dict(size=cfg.DATA.IMAGE_SIZE, crop_min_scale=a.CROP_MIN_SCALE, flip_prob=a.FLIP_PROB,
                  jitter_prob=a.JITTER_PROB, brightness=a.BRIGHTNESS, contrast=a.CONTRAST,
                  saturation=a.SATURATION, hue=a.HUE, gray_prob=a.GRAY_PROB, interpolation=a.INTERPOLATION)
    return (ViewSpec(**common, blur_prob=a.BLUR_PROB[0], solarize_prob=a.SOLARIZE_PROB[0]),
            ViewSpec(**common, blur_prob=a.BLUR_PROB[1], solarize_prob=a.SOLARIZE_PROB[1]))


def crop_box(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float],
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Random-resized-crop box (top, left, h, w): area fraction in `scale`, log-uniform aspect ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # fall back to the largest centred crop within the ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class ViewParams:
    """Every random parameter of one view, drawn by `draw_view_params` in a fixed order.

    DATA.VIEWS cpu applies them all with PIL in the loader workers (`make_view`); DATA.VIEWS device applies
    the crop and flip there and the rest batched on the training device (pretrain/data/device_views.py).
    """

    box: tuple[int, int, int, int]  # crop (top, left, h, w) in the source image
    flip: bool
    jitter: bool
    factors: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue
    order: tuple[int, int, int, int] = (0, 1, 2, 3)  # the jitter ops (indices into `factors`) in applied order
    gray: bool = False
    blur_sigma: float = 0.0  # 0: no blur
    solarize: bool = False


def draw_view_params(rng: np.random.Generator, width: int, height: int, spec: ViewSpec) -> ViewParams:
    """The parameters of one view of a width x height image; the draws (and their order) define the views."""
    box = crop_box(rng, width, height, (spec.crop_min_scale, 1.0))
    flip = bool(rng.random() < spec.flip_prob)
    jitter = bool(rng.random() < spec.jitter_prob)
    factors, order = (1.0, 1.0, 1.0, 0.0), (0, 1, 2, 3)
    if jitter:
        factors = (float(rng.uniform(max(0.0, 1 - spec.brightness), 1 + spec.brightness)),
                   float(rng.uniform(max(0.0, 1 - spec.contrast), 1 + spec.contrast)),
                   float(rng.uniform(max(0.0, 1 - spec.saturation), 1 + spec.saturation)),
                   float(rng.uniform(-spec.hue, spec.hue)))
        order = tuple(int(k) for k in rng.permutation(4))
    gray = bool(rng.random() < spec.gray_prob)
    blur_sigma = float(rng.uniform(0.1, 2.0)) if rng.random() < spec.blur_prob else 0.0
    solarize = bool(rng.random() < spec.solarize_prob)
    return ViewParams(box, flip, jitter, factors, order, gray, blur_sigma, solarize)


def crop_and_flip(img: Image.Image, spec: ViewSpec, p: ViewParams) -> Image.Image:
    """The geometric part of a view: random-resized crop to spec.size, then the horizontal flip."""
    mode = TF.InterpolationMode.BICUBIC if spec.interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    img = TF.resized_crop(img.convert("RGB"), *p.box, [spec.size, spec.size], interpolation=mode, antialias=True)
    return TF.horizontal_flip(img) if p.flip else img


JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def colour_ops(img: Image.Image, p: ViewParams) -> Image.Image:
    """The photometric part of a view on PIL: colour jitter in p.order, grayscale, blur, solarize."""
    if p.jitter:
        for k in p.order:
            img = JITTER_OPS[k](img, p.factors[k])
    if p.gray:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if p.blur_sigma > 0:  # the sources' blur: PIL's, whose extent grows with sigma (pretrain/data/blur.py)
        img = img.filter(ImageFilter.GaussianBlur(radius=p.blur_sigma))
    if p.solarize:
        img = TF.solarize(img, 128)
    return img


def make_view(img: Image.Image, spec: ViewSpec, rng: np.random.Generator) -> Image.Image:
    """One augmented view of a PIL image: crop, flip, colour jitter, grayscale, blur, solarize."""
    img = img.convert("RGB")
    p = draw_view_params(rng, img.width, img.height, spec)
    return colour_ops(crop_and_flip(img, spec, p), p)


def to_normalised_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    """PIL RGB -> float (3, H, W) tensor normalised with the dataset mean/std."""
    t = TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)
    return TF.normalize(t, list(mean), list(std))


def eval_transform(img: Image.Image, size: int, mean, std) -> torch.Tensor:
    """Deterministic evaluation view: resize (and centre-crop 87.5% for large images), normalise."""
    img = img.convert("RGB")
    if size >= 96:
        img = TF.resize(img, [int(round(size / 0.875))], antialias=True)
        img = TF.center_crop(img, [size, size])
    else:
        img = TF.resize(img, [size, size], antialias=True)
    return to_normalised_tensor(img, mean, std)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The RNG of one sample in one epoch: independent streams from (seed, epoch, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))
