"""The views' Gaussian blur, as PIL computes `ImageFilter.GaussianBlur(radius=sigma)`, on batches of tensors.

The recipes' sources blur with PIL (solo-learn's and MoCo v2 / SimSiam's `GaussianBlur` augmentation call
`ImageFilter.GaussianBlur(radius=sigma)`, sigma ~ U(0.1, 2)). PIL does not convolve with a sampled Gaussian:
it runs three passes of an "extended box" filter along each axis (Gwosdek et al., SSVM 2011), the box's
radius chosen so that the three passes have variance sigma^2 exactly, and clamps each pass at the border
(the edge pixel repeats). Its support grows with sigma (+-3 pixels below sigma = sqrt 2, +-6 up to sqrt 6),
which a fixed kernel size cannot give: a 3-tap Gaussian at 32 px blurs sigma = 2 like a 3x3 box.

The per-sample (cpu) path calls PIL itself. This module is the same filter in float for the batched paths
(DATA.VIEWS batch / device), each sample with its own sigma; it differs from PIL only by PIL's rounding to
uint8 after each of its six passes (at most a few levels, tests/pretrain/data/test_blur.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PASSES = 3


def box_radius(sigma: torch.Tensor, passes: int = PASSES) -> torch.Tensor:
    """The extended box's (fractional) radius whose `passes` passes have standard deviation sigma: PIL's
    `_gaussian_blur_radius` (libImaging/BoxBlur.c), in float32 as PIL computes it."""
    sigma2 = sigma.to(torch.float32) ** 2 / passes
    length = torch.sqrt(12.0 * sigma2 + 1.0)
    inner = torch.floor((length - 1.0) / 2.0)
    a = (2 * inner + 1) * (inner * (inner + 1) - 3 * sigma2)
    a = a / (6 * (sigma2 - (inner + 1) ** 2))
    return inner + a


def box_weights(sigma: torch.Tensor) -> torch.Tensor:
    """(B, 2K+1) taps of one pass for each sample's sigma, K the largest reach in the batch: 1/(2r+1) within
    the integer radius floor(r), the fractional rest (r - floor(r))/(2r+1) on the two taps just beyond it."""
    r = box_radius(sigma).to(torch.float64)
    whole = torch.floor(r)
    reach = int(whole.max().item()) + 1 if r.numel() else 1
    d = torch.arange(-reach, reach + 1, dtype=torch.float64).abs()[None, :]
    inside = (d <= whole[:, None]).to(torch.float64) / (2 * r[:, None] + 1)
    edge = (d == whole[:, None] + 1).to(torch.float64) * ((r - whole) / (2 * r + 1))[:, None]
    return inside + edge


def _passes_along_width(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    reach = taps.shape[1] // 2
    w = taps.to(x.dtype)[:, None, None, :]  # (B, 1, 1, 2K+1)
    width = x.shape[-1]
    for _ in range(PASSES):
        padded = F.pad(x, (reach, reach, 0, 0), mode="replicate")  # PIL clamps at the border on every pass
        x = sum(w[..., k:k + 1] * padded[..., k:k + width] for k in range(taps.shape[1]))
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """PIL's GaussianBlur(radius=sigma) of each image of a float batch (B, C, H, W), sigma of shape (B,)
    (a sigma of 0 leaves its image as it is): three passes along the width, then three along the height."""
    if x.ndim != 4 or sigma.shape != (x.shape[0],):
        raise ValueError(f"gaussian_blur takes (B, C, H, W) images and B sigmas, got {tuple(x.shape)} and "
                         f"{tuple(sigma.shape)}")
    if x.shape[0] == 0:
        return x
    taps = box_weights(sigma.detach().to("cpu")).to(x.device)
    x = _passes_along_width(x, taps)
    return _passes_along_width(x.transpose(-1, -2), taps).transpose(-1, -2).contiguous()


__all__ = ["PASSES", "box_radius", "box_weights", "gaussian_blur"]
