"""DATA.VIEWS batch: whole views made on batches of tensors on the training device, crop and flip included.

The loader only gathers a batch's source images (uint8, as stored) and draws its views' parameters at
once, keyed by (seed, epoch, view, sample index); the training device then crops, resizes and flips the
whole batch, applies the colour ops batched (device_views.batched_colour_ops) and normalises. For small images (Fashion-MNIST, CIFAR) this takes the
view pipeline off the critical path on a CPU too: the model, not PIL, is the cost (see
`benchmarks/pretrain_throughput.py --config fmnist_cpu_byol.yaml`).

A view equals the cpu path's view with the same parameters up to rounding: the crop is resized with PIL's
own resampling weights (bilinear or bicubic, antialiased when shrinking) as two per-sample matrix
products, in float, never rounded to uint8 in between. The matrices grow with the image side, so this
path suits small images (Fashion-MNIST, CIFAR); for full-size photos DATA.VIEWS device is the batched
choice. All source images must have one size (one stacked batch).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from pretrain.data.datasets import TwoViewDataset, source_array
from pretrain.data.device_views import batched_colour_ops, params_to_tensor
from pretrain.data.views import ViewParams, ViewSpec
from rimifm.errors import UserError

#: columns of a batch view's parameter vector: the crop box (top, left, h, w), the flip, then device_views' columns
BOX, FLIP, COLOUR = slice(0, 4), 4, slice(5, None)


def geometry_to_tensor(p: ViewParams) -> torch.Tensor:
    """One view's crop box and flip, then its colour parameters (device_views.params_to_tensor), float64."""
    return torch.cat([torch.tensor([*p.box, float(p.flip)], dtype=torch.float64), params_to_tensor(p)])


def _pil_filter(x: torch.Tensor, mode: str) -> torch.Tensor:
    """PIL's resampling kernels: the triangle (bilinear) and the cubic with a = -0.5 (bicubic)."""
    x = x.abs()
    if mode == "bilinear":
        return (1.0 - x).clamp_min(0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                   mode: str = "bilinear") -> torch.Tensor:
    """(B, out_size, in_size) matrices that resize the span [start, start + length) of each row to out_size,
    with PIL's resampling weights (ImagingResample: kernel support widened by the scale when shrinking, the
    window cut to the span, weights normalised), so upsampling and antialiased downsampling both match it."""
    support = 1.0 if mode == "bilinear" else 2.0
    start, length = start.double()[:, None, None], length.double()[:, None, None]
    scale = length / out_size
    filterscale = scale.clamp_min(1.0)
    centre = (torch.arange(out_size, dtype=torch.float64)[None, :, None] + 0.5) * scale  # in span coordinates
    x = torch.arange(in_size, dtype=torch.float64)[None, None, :] - start  # input pixels in span coordinates
    lo = torch.trunc(centre - support * filterscale + 0.5).clamp_min(0.0)
    hi = torch.minimum(torch.trunc(centre + support * filterscale + 0.5), length)
    w = _pil_filter((x - centre + 0.5) / filterscale, mode) * ((x >= lo) & (x < hi))
    return (w / w.sum(-1, keepdim=True).clamp_min(1e-12)).float()


def crop_resize_flip(images: torch.Tensor, params: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Random-resized crops of a batch: (B, C, H, W) float images -> (B, C, size, size).

    params[:, BOX] are (top, left, h, w) in source pixels and params[:, FLIP] > 0.5 mirrors the output.
    The crop is resized as torchvision's resized_crop does it on a PIL image (PIL's resampling weights,
    pixels outside the crop unused), as two per-sample matrix products: rows (H -> size), then columns.
    """
    _, _, height, width = images.shape
    p = params.detach().to("cpu", torch.float64)
    rows = resize_weights(p[:, 0], p[:, 2], height, size, mode)
    cols = resize_weights(p[:, 1], p[:, 3], width, size, mode)
    flip = p[:, FLIP] > 0.5
    cols[flip] = cols[flip].flip(1)  # output column j takes input column size - 1 - j's weights
    rows, cols = rows.to(images.device), cols.to(images.device)
    out = torch.matmul(torch.matmul(rows[:, None], images), cols.transpose(1, 2)[:, None])
    return out.clamp_(0.0, 1.0) if mode == "bicubic" else out


def batch_views(batch: dict, device: torch.device, size: int, mean, std, mode: str = "bilinear") -> torch.Tensor:
    """A collated batch of one view ({"image": uint8 (B, C, H, W) sources, "params": (B, 17)}) made on
    `device`: crop, resize and flip, colour ops, grey replicated to RGB, normalised."""
    x = batch["image"].to(device, non_blocking=True).float().div_(255)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    params = batch["params"]
    x = crop_resize_flip(x, params, size, mode)
    x = batched_colour_ops(x, params[:, COLOUR])
    return TF.normalize(x, list(mean), list(std))


#: random numbers one view draws per sample: 10 crop tries x 4, flip, jitter, 4 factors, 4 order keys, gray,
#: blur (2), solarize
_SLOTS = 54
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters nearby inputs (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_uniforms(seed: int, epoch: int, view: int, indices, count: int) -> np.ndarray:
    """(N, count) floats in [0, 1), a fixed function of (seed, epoch, view, sample index, slot): the same
    numbers for a sample whatever batch it is drawn in, so views survive a resume or another batch size."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(epoch))
        key = _mix(key ^ (np.uint64(view + 1) * _GOLDEN))
        base = _mix(key ^ (np.asarray(indices, dtype=np.uint64) * _GOLDEN))[:, None]
        bits = _mix(base + np.arange(1, count + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def draw_batch_params(seed: int, epoch: int, view: int, indices, width: int, height: int,
                      spec: ViewSpec) -> torch.Tensor:
    """Every random parameter of one view of many samples at once, as (N, 17) rows in geometry_to_tensor's layout,
    with the distributions of views.draw_view_params (random-resized crop with 10 tries and its centred
    fallback, flip, jitter factors in a random order, grayscale, blur sigma, solarize), from keyed_uniforms."""
    idx = np.asarray(indices, dtype=np.int64)
    n = len(idx)
    u = keyed_uniforms(seed, epoch, view, idx, _SLOTS)
    tries = u[:, :40].reshape(n, 10, 4)
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    target = width * height * (spec.crop_min_scale + (1.0 - spec.crop_min_scale) * tries[..., 0])
    aspect = np.exp(lo + (hi - lo) * tries[..., 1])
    w, h = np.rint(np.sqrt(target * aspect)), np.rint(np.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first, rows = ok.argmax(axis=1), np.arange(n)
    w, h, t = w[rows, first], h[rows, first], tries[rows, first]
    top, left = np.floor(t[:, 2] * (height - h + 1)), np.floor(t[:, 3] * (width - w + 1))
    missed = ~ok.any(axis=1)  # no try fits: the largest centred crop within the ratio range, as crop_box
    if missed.any():
        ratio = width / height
        fw, fh = ((width, round(width / (3 / 4))) if ratio < 3 / 4 else
                  (round(height * (4 / 3)), height) if ratio > 4 / 3 else (width, height))
        w[missed], h[missed], top[missed], left[missed] = fw, fh, (height - fh) // 2, (width - fw) // 2
    jitter = u[:, 41] < spec.jitter_prob
    spans = [(max(0.0, 1 - spec.brightness), 1 + spec.brightness), (max(0.0, 1 - spec.contrast), 1 + spec.contrast),
             (max(0.0, 1 - spec.saturation), 1 + spec.saturation), (-spec.hue, spec.hue)]
    factors = np.stack([a + (b - a) * u[:, 42 + k] for k, (a, b) in enumerate(spans)], axis=1)
    factors[~jitter] = (1.0, 1.0, 1.0, 0.0)
    order = np.argsort(u[:, 46:50], axis=1).astype(np.float64)  # a uniformly random order of the 4 ops
    order[~jitter] = (0, 1, 2, 3)
    sigma = np.where(u[:, 51] < spec.blur_prob, 0.1 + 1.9 * u[:, 52], 0.0)
    cols = [top, left, h, w, u[:, 40] < spec.flip_prob, jitter, *factors.T, *order.T, u[:, 50] < spec.gray_prob,
            sigma, u[:, 53] < spec.solarize_prob]
    return torch.from_numpy(np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1))


def _collated(batch):
    """collate_fn of BatchViewDataset: its __getitems__ returns whole batches already."""
    return batch


class BatchViewDataset(TwoViewDataset):
    """TwoViewDataset for DATA.VIEWS batch: a batch is its uint8 source images and each view's parameters.

    The loader asks for whole batches (`__getitems__`): the images come straight from memory for sources that
    keep them (IDX, CIFAR), else one by one; a batch's parameters are drawn at once (draw_batch_params),
    keyed by (seed, epoch, view, index) as the other paths key theirs, but not from the same generator:
    the same settings give views of the same distributions, not the same views. `to_device` makes them.
    """

    collate_fn = staticmethod(_collated)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.array = source_array(self.source)
        self.mode = "bicubic" if self.specs[0].interpolation == "bicubic" else "bilinear"

    def _images(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.array is not None:
            idx = np.asarray(indices, dtype=np.int64)
            a = self.array[idx]
            images = torch.from_numpy(a[:, None] if a.ndim == 3 else np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
            return images, torch.as_tensor(np.asarray(self.source.targets)[idx], dtype=torch.long)
        pairs = [self.source[i] for i in indices]
        tensors = [TF.pil_to_tensor(img.convert("RGB")) for img, _ in pairs]
        shapes = sorted({tuple(t.shape) for t in tensors})
        if len(shapes) > 1:
            raise UserError(f"DATA.VIEWS batch stacks whole source images, but a batch holds images of sizes "
                            f"{shapes}; use DATA.VIEWS device or cpu for images of different sizes")
        return torch.stack(tensors), torch.tensor([label for _, label in pairs])

    def __getitems__(self, indices: list[int]) -> tuple:
        images, labels = self._images(list(indices))
        height, width = images.shape[-2:]
        views = tuple({"image": images, "params": draw_batch_params(self.seed, self.epoch, v, indices, width, height,
                                                                     spec)} for v, spec in enumerate(self.specs))
        return (*views, labels) if self.with_labels else views

    def __getitem__(self, index: int) -> tuple:
        """One sample, as a batch of one would give it (for inspection; the loader asks for batches)."""
        batch = self.__getitems__([index])
        views = tuple({k: t[0] for k, t in v.items()} for v in batch[:2])
        return (*views, int(batch[2][0])) if self.with_labels else views

    def to_device(self, views: dict, device: torch.device) -> torch.Tensor:
        return batch_views(views, device, self.specs[0].size, self.mean, self.std, self.mode)


__all__ = ["BatchViewDataset", "batch_views", "crop_resize_flip", "draw_batch_params", "geometry_to_tensor",
           "keyed_uniforms"]
