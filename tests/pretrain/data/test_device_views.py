"""DATA.VIEWS device: the batched colour ops match the per-sample PIL ones for the same parameters, and the
views stay keyed by (seed, epoch, index) whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import default_collate

from pretrain.data.datasets import TwoViewDataset
from pretrain.data.device_views import DeviceViewDataset, batched_colour_ops, params_to_tensor
from pretrain.data.views import ViewParams, ViewSpec, crop_and_flip, draw_view_params, make_view, sample_rng
from pretrain.data.views import colour_ops as pil_colour_ops

# Tolerance in uint8 levels, per view: the cpu path rounds to uint8 after every op and PIL quantises HSV (and
# the hue shift) to 256 levels; the device path stays in float32. Measured: mean <= 2.2, 99th percentile <= 9.
MEAN_TOL, P99_TOL = 3.0, 12.0
BOX = (0, 0, 32, 32)


def smooth_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    """Photo-like test images: a smooth random colour field plus noise (flat noise would hide a blur)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        a = np.asarray(coarse, dtype=np.float64) + rng.normal(0, 12, (size, size, 3))
        out.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return out


def levels(cpu: torch.Tensor, dev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view: mean and 99th percentile of |cpu - device| in uint8 levels (inputs in [0, 1] or 0..255)."""
    d = (cpu.float() - dev.float()).abs().flatten(1)
    return d.mean(1), d.quantile(0.99, dim=1)


def both_paths(images, cpu_params, dev_params) -> tuple[torch.Tensor, torch.Tensor]:
    """(PIL path, batched path) on the same uint8 images, in 0..255."""
    cpu = torch.stack([TF.pil_to_tensor(pil_colour_ops(im, p)) for im, p in zip(images, cpu_params)])
    x = torch.stack([TF.pil_to_tensor(im) for im in images]).float() / 255
    dev = batched_colour_ops(x, torch.stack([params_to_tensor(p) for p in dev_params])) * 255
    return cpu.float(), dev


def assert_close(mean: torch.Tensor, p99: torch.Tensor) -> None:
    assert mean.max() <= MEAN_TOL and p99.max() <= P99_TOL, (mean.max().item(), p99.max().item())


def assert_far(mean: torch.Tensor, p99: torch.Tensor) -> None:
    """Well outside the tolerance (over the batch): what a wrong parameter or a skipped op gives."""
    assert mean.mean() > 1.2 * MEAN_TOL or p99.median() > 1.5 * P99_TOL, (mean.mean().item(), p99.median().item())


def jitter(b=1.0, c=1.0, s=1.0, h=0.0, order=(0, 1, 2, 3)) -> ViewParams:
    return ViewParams(BOX, False, True, (b, c, s, h), order)


OPS = {  # op: (parameters, a deliberately wrong version of them)
    "brightness": (jitter(b=1.35), jitter(b=1.0)),  # a skipped op
    "contrast": (jitter(c=0.65), jitter(c=1.0)),
    "saturation": (jitter(s=1.2), jitter(s=0.8)),
    "hue": (jitter(h=0.08), jitter(h=-0.08)),  # a wrong hue sign
    "hue-small": (jitter(h=0.02), jitter(h=-0.02)),
    "grayscale": (ViewParams(BOX, False, False, gray=True), ViewParams(BOX, False, False)),
    "blur": (ViewParams(BOX, False, False, blur_sigma=1.3), ViewParams(BOX, False, False, blur_sigma=0.3)),
    "solarize": (ViewParams(BOX, False, False, solarize=True), ViewParams(BOX, False, False)),
    "chain": (ViewParams(BOX, False, True, (1.3, 0.7, 1.2, -0.09), (3, 1, 0, 2), True, 1.1, True),
              ViewParams(BOX, False, True, (1.3, 0.7, 1.2, -0.09), (0, 1, 2, 3), True, 1.1, True)),  # order
    "chain-no-gray": (ViewParams(BOX, False, True, (0.7, 1.3, 0.8, 0.09), (2, 3, 1, 0), True, 0.8, False),
                      ViewParams(BOX, False, True, (0.7, 1.3, 0.8, 0.09), (2, 3, 1, 0), False, 0.8, False)),
}


@pytest.mark.parametrize("op", OPS)
def test_each_op_matches_the_pil_path_and_a_wrong_parameter_does_not(op):
    images = smooth_images(8)
    right, wrong = OPS[op]
    cpu, dev = both_paths(images, [right] * 8, [right] * 8)
    assert_close(*levels(cpu, dev))
    cpu, dev = both_paths(images, [right] * 8, [wrong] * 8)
    assert_far(*levels(cpu, dev))


def test_per_sample_parameters_in_one_batch():
    """Every sample its own ops, factors and jitter order, in one batched call."""
    images = smooth_images(16, seed=1)
    spec = ViewSpec(size=32, blur_prob=0.5, solarize_prob=0.5, gray_prob=0.3)
    params = [draw_view_params(sample_rng(0, 0, i), 32, 32, spec) for i in range(16)]
    assert len({p.order for p in params if p.jitter}) > 3 and len({p.solarize for p in params}) == 2
    cpu, dev = both_paths(images, params, params)
    assert_close(*levels(cpu, dev))
    shifted = params[1:] + params[:1]  # each image with its neighbour's parameters
    assert_far(*levels(*both_paths(images, params, shifted)))


def test_the_draws_are_the_cpu_paths():
    """make_view is crop_and_flip then colour_ops on the parameters that draw_view_params takes from the RNG."""
    img = smooth_images(1, size=40)[0]
    spec = ViewSpec(size=24, solarize_prob=0.5)
    for i in range(8):
        a, b = sample_rng(1, 2, i), sample_rng(1, 2, i)
        p = draw_view_params(b, 40, 40, spec)
        assert np.array_equal(np.asarray(make_view(img, spec, a)),
                              np.asarray(pil_colour_ops(crop_and_flip(img, spec, p), p)))
        assert a.random() == b.random()  # the stream is left at the same place


def _datasets(n=12, seed=5, size=32):
    src = [(im, i % 3) for i, im in enumerate(smooth_images(n, size=size + 8, seed=2))]
    specs = (ViewSpec(size=size), ViewSpec(size=size, blur_prob=0.1, solarize_prob=0.2))
    return (TwoViewDataset(src, specs, [0.0] * 3, [1.0] * 3, seed=seed, with_labels=True),
            DeviceViewDataset(src, specs, [0.0] * 3, [1.0] * 3, seed=seed, with_labels=True))


def _device_batch(ds, indices, device="cpu"):
    v1, v2, labels = default_collate([ds[i] for i in indices])
    assert v1["image"].dtype == torch.uint8
    return ds.to_device(v1, torch.device(device)).cpu(), ds.to_device(v2, torch.device(device)).cpu(), labels


def test_full_chain_datasets_agree_and_are_keyed_by_seed_epoch_index():
    cpu, dev = _datasets()
    for epoch in (0, 3):
        cpu.set_epoch(epoch)
        dev.set_epoch(epoch)
        c1, c2, cl = default_collate([cpu[i] for i in range(12)])
        d1, d2, dl = _device_batch(dev, range(12))
        assert torch.equal(cl, dl)
        assert_close(*levels(c1 * 255, d1 * 255))
        assert_close(*levels(c2 * 255, d2 * 255))
    dev.set_epoch(0)
    assert_far(*levels(c1 * 255, _device_batch(dev, range(12))[0] * 255))  # another epoch, other views


def test_device_views_do_not_depend_on_the_batch():
    _, dev = _datasets()
    dev.set_epoch(1)
    a1, a2, _ = _device_batch(dev, range(12))
    order = [7, 3, 11, 0, 5, 9, 1, 10, 2, 8, 4, 6]
    b1, b2, _ = _device_batch(dev, order)
    torch.testing.assert_close(b1, a1[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(b2, a2[order], atol=1e-5, rtol=0)
    c1, _, _ = _device_batch(dev, [7, 3])  # another batch size and company
    torch.testing.assert_close(c1, a1[[7, 3]], atol=1e-5, rtol=0)
    dev.set_epoch(2)
    assert not torch.allclose(_device_batch(dev, range(12))[0], a1, atol=0.05)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    _, dev = _datasets(n=8, size=64)
    c1, c2, _ = _device_batch(dev, range(8))
    g1, g2, _ = _device_batch(dev, range(8), "cuda")
    torch.testing.assert_close(g1, c1, atol=2e-3, rtol=0)
    torch.testing.assert_close(g2, c2, atol=2e-3, rtol=0)


def test_config_switch():
    from pretrain.config import load_config
    from rimifm.errors import UserError

    assert load_config().DATA.VIEWS == "cpu"  # today's path unless asked
    assert load_config(None, ["DATA.VIEWS", "device"]).DATA.VIEWS == "device"
    with pytest.raises(UserError, match="DATA.VIEWS"):
        load_config(None, ["DATA.VIEWS", "gpu"])
