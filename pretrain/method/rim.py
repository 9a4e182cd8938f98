"""RIM, random image masking: hide an exact fraction of grid cells of each online view.

Vectorised over the batch on whatever device it lives on (no Python loop over samples).
See docs/method.md, section "RIM: random image masking".
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

FILLS = ("zero", "noise", "blur")


def default_patch_size(height: int, width: int) -> int:
    """The default cell side: one eighth of the shorter image side (at least 1 pixel)."""
    return max(1, min(height, width) // 8)


def cell_masks(
    batch: int, grid_h: int, grid_w: int, ratio: float, prob: float, generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean (batch, grid_h, grid_w) masks: exactly round(ratio * cells) cells per applied sample.

    Cells are chosen by rand + argsort, so every masked sample has the exact count; each sample is
    masked with probability `prob` (the others get an all-False mask).
    """
    cells = grid_h * grid_w
    n_masked = int(round(ratio * cells))
    scores = torch.rand(batch, cells, generator=generator, device=device)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch, cells, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :n_masked], True)
    applied = torch.rand(batch, generator=generator, device=device) < prob
    mask &= applied[:, None]
    return mask.view(batch, grid_h, grid_w)


def pixel_masks(cells: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Expand (B, gh, gw) cell masks to (B, 1, H, W) pixel masks (edge cells cropped to the image)."""
    full = cells.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    return full[:, None, :height, :width]


def random_image_masking(
    images: torch.Tensor,
    ratio: float = 0.3,
    patch_size: int = 0,
    fill: str = "zero",
    prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a normalised (B, C, H, W) batch; returns (masked images, (B, 1, H, W) bool mask).

    fill: "zero" puts 0 (the dataset mean after normalisation), "noise" N(0, 1) values,
    "blur" a strongly blurred copy of the image.
    """
    if fill not in FILLS:
        raise ValueError(f"RIM fill {fill!r} is not one of {FILLS}")
    b, _, h, w = images.shape
    patch = patch_size or default_patch_size(h, w)
    if generator is None:
        generator = torch.Generator(device=images.device)
        generator.seed()
    cells = cell_masks(b, math.ceil(h / patch), math.ceil(w / patch), ratio, prob, generator, images.device)
    mask = pixel_masks(cells, h, w, patch)
    if fill == "zero":
        filler = torch.zeros((), dtype=images.dtype, device=images.device)
    elif fill == "noise":
        filler = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    else:
        kernel = 2 * (patch // 2) + 1
        filler = TF.gaussian_blur(images, [kernel, kernel], [max(patch / 3.0, 0.5)] * 2)
    return torch.where(mask, filler, images), mask
