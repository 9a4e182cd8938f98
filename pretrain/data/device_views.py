"""DATA.VIEWS device: the loader workers crop and flip (uint8), the training device does the colour ops batched.

The random parameters are the cpu path's (`draw_view_params` on the RNG keyed by (seed, epoch, index)),
so both paths make the same views up to uint8 rounding, and resume stays exact. Each sample keeps its own
parameters, including the random order of its colour-jitter ops; the batch is processed op by op on the
subsets of samples that have that op at that position, with kornia's per-sample-factor functions.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
    solarize,
)

from pretrain.data.blur import gaussian_blur
from pretrain.data.datasets import TwoViewDataset
from pretrain.data.views import ViewParams, crop_and_flip, draw_view_params, sample_rng

# columns of a view's parameter vector
JITTER, FACTORS, ORDER, GRAY, SIGMA, SOLARIZE = 0, slice(1, 5), slice(5, 9), 9, 10, 11
N_PARAMS = 12


def params_to_tensor(p: ViewParams) -> torch.Tensor:
    """One view's parameters (after the crop and flip, which the workers apply) as a float64 vector."""
    return torch.tensor([float(p.jitter), *p.factors, *p.order, float(p.gray), p.blur_sigma, float(p.solarize)],
                        dtype=torch.float64)


# PIL's conventions (torchvision on PIL images): brightness scales, contrast blends with the mean luma,
# saturation with the luma image; the hue factor is a fraction of a turn, kornia's an angle in radians.
_JITTER = (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
    lambda x, f: adjust_hue(x, f * (2 * math.pi)),
)
#: the factors at which each jitter op changes nothing (AUG.SATURATION 0 / AUG.HUE 0 draw exactly these)
_IDENTITY = (1.0, 1.0, 1.0, 0.0)


def _on(x: torch.Tensor, rows: torch.Tensor, fn, *factors: torch.Tensor) -> torch.Tensor:
    """Apply fn to the samples `rows` (CPU indices) of x, with their per-sample factors, in place."""
    if rows.numel() == 0:
        return x
    args = [f[rows].to(x.dtype) for f in factors]  # on the CPU: kornia moves them without waiting on the device
    if rows.numel() == x.shape[0]:
        return fn(x, *args)
    idx = rows.to(x.device, non_blocking=True)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx), *args))


def batched_colour_ops(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Colour jitter (per-sample order), grayscale, Gaussian blur, solarize on a batch of float RGB in [0, 1].

    x: (B, 3, H, W) on any device; params: (B, N_PARAMS) as made by `params_to_tensor` (indices are taken
    on the CPU, so no step waits on the device).
    """
    p = params.detach().to("cpu", torch.float64)
    x = x.clone()  # the subsets are written in place
    jitter = p[:, JITTER] > 0.5
    order = p[:, ORDER].long()
    factors = p[:, FACTORS]
    changes = factors != torch.tensor(_IDENTITY, dtype=factors.dtype)  # an op at its identity factor is skipped
    for position in range(4):
        for k, fn in enumerate(_JITTER):
            rows = torch.nonzero(jitter & (order[:, position] == k) & changes[:, k]).flatten()
            x = _on(x, rows, fn, factors[:, k])
    x = _on(x, torch.nonzero(p[:, GRAY] > 0.5).flatten(), lambda t: rgb_to_grayscale(t).expand_as(t).contiguous())
    x = _on(x, torch.nonzero(p[:, SIGMA] > 0).flatten(), gaussian_blur, p[:, SIGMA])  # PIL's, in float
    return _on(x, torch.nonzero(p[:, SOLARIZE] > 0.5).flatten(), lambda t: solarize(t, 128 / 255))


def device_views(batch: dict, device: torch.device, mean, std) -> torch.Tensor:
    """A collated batch of one view ({"image": uint8 (B, 3, H, W), "params": (B, N_PARAMS)}) finished on
    `device`: colour ops, then normalised with the dataset mean/std."""
    x = batch["image"].to(device, non_blocking=True).float().div_(255)
    x = batched_colour_ops(x, batch["params"])
    return TF.normalize(x, list(mean), list(std))


class DeviceViewDataset(TwoViewDataset):
    """TwoViewDataset for DATA.VIEWS device: per view the uint8 crop (flipped) and the other parameters.

    Same RNG stream as the cpu path, keyed by (seed, epoch, index); `to_device` finishes a batch.
    """

    def __getitem__(self, index: int) -> tuple:
        img, label = self.source[index]
        img = img.convert("RGB")
        rng = sample_rng(self.seed, self.epoch, index)
        views = []
        for spec in self.specs:  # view 1's draws, then view 2's, as in make_view
            p = draw_view_params(rng, img.width, img.height, spec)
            views.append({"image": TF.pil_to_tensor(crop_and_flip(img, spec, p)), "params": params_to_tensor(p)})
        return (*views, label) if self.with_labels else tuple(views)

    def to_device(self, views: dict, device: torch.device) -> torch.Tensor:
        return device_views(views, device, self.mean, self.std)
