"""The batched blur is PIL's GaussianBlur(radius=sigma), the blur of the recipes' sources (solo-learn @ 9187ea3,
solo/data/pretrain_dataloader.py, GaussianBlur: `img.filter(ImageFilter.GaussianBlur(radius=sigma))`, sigma
~ U(0.1, 2.0)); PIL's filter is three extended-box passes per axis (Pillow src/libImaging/BoxBlur.c @ 4e5f09f)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from pretrain.data.blur import box_radius, gaussian_blur

SIGMAS = (0.1, 0.3, 0.7, 1.0, 1.41, 1.5, 2.0)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # the hardest case: every pixel its own value
    ramp = np.linspace(0, 255, 32)
    smooth = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, -ramp) / 2 + 128,
                       np.full((32, 32), 40.0)], axis=-1)
    return [noise, np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_the_batched_blur_is_pils_within_its_rounding(sigma):
    images = _images()
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    ours = gaussian_blur(x, torch.full((len(images),), sigma)).permute(0, 2, 3, 1).numpy()
    for a, got in zip(images, ours):
        pil = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.float64)
        diff = np.abs(pil - got)
        # PIL rounds to uint8 (in 8.24 fixed point) after each of its six passes; we stay in float. Measured:
        # max 2.9 levels, mean 1.03 on noise at sigma 0.1, below 0.5 elsewhere; a wrong sigma or a 3-tap
        # kernel is tens of levels off (up to 72 at sigma 2)
        assert diff.max() <= 3.0 and diff.mean() <= 1.2, (sigma, diff.max(), diff.mean())


def test_its_extent_follows_sigma_and_each_sample_keeps_its_own():
    """The impulse response's standard deviation is sigma (PIL's passes have variance sigma^2 exactly): a fixed
    3-tap kernel reaches at most 0.82 whatever sigma, which is what the 32 px blur used to be."""
    x = torch.zeros(3, 1, 1, 41, dtype=torch.float64)
    x[..., 20] = 1.0
    sigmas = torch.tensor([0.5, 1.0, 2.0])
    out = gaussian_blur(x.expand(3, 1, 41, 41).contiguous(), sigmas)[:, 0, 20]  # the middle row of each
    d = torch.arange(41, dtype=torch.float64) - 20
    std = torch.sqrt((out * d ** 2).sum(1) / out.sum(1))
    torch.testing.assert_close(std, sigmas.double(), atol=1e-4, rtol=0)
    assert torch.allclose(out.sum(1), torch.ones(3, dtype=torch.float64))
    assert (out[2].abs() > 1e-6).sum() == 13 and (out[0].abs() > 1e-6).sum() == 7  # +-6 and +-3 pixels
    # PIL's box radius for its default three passes (BoxBlur.c's _gaussian_blur_radius, evaluated by hand):
    # sigma 2: sigma^2/3 = 4/3, L = sqrt(17), l = 1, a = 3(2 - 4)/(6(4/3 - 4)) = 0.375 -> 1.375
    torch.testing.assert_close(box_radius(torch.tensor([2.0])), torch.tensor([1.375]))


def test_a_zero_sigma_leaves_the_image_and_bad_shapes_are_refused():
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(gaussian_blur(x, torch.zeros(2)), x)
    with pytest.raises(ValueError, match="B sigmas"):
        gaussian_blur(x, torch.zeros(3))
