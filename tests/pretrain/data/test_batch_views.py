"""DATA.VIEWS batch: whole views made on batches equal the per-sample PIL views for the same parameters, the
parameters drawn a batch at once have the views' distributions and are keyed per sample, and in-memory
sources are read without PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pretrain.data.batch_views import (
    BatchViewDataset,
    crop_resize_flip,
    draw_batch_params,
    geometry_to_tensor,
)
from pretrain.data.idx import IDXSource
from pretrain.data.views import (
    ViewParams,
    ViewSpec,
    colour_ops,
    crop_and_flip,
    draw_view_params,
    sample_rng,
    to_normalised_tensor,
)
from rimifm.errors import UserError
from tests.helpers import make_idx_dataset
from tests.pretrain.data.test_device_views import assert_close, assert_far, levels, smooth_images

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SPEC = ViewSpec(size=32, crop_min_scale=0.2, saturation=0.0, hue=0.0, gray_prob=0.0, blur_prob=0.0,
                solarize_prob=0.3)


class ListSource(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 3


def pil_geometry(images, boxes, flips, size):
    """The cpu path's crop, resize and flip (uint8, PIL) as floats in 0..255."""
    spec = ViewSpec(size=size)
    return torch.stack([TF.pil_to_tensor(crop_and_flip(im, spec, ViewParams(box, flip, False)))
                        for im, box, flip in zip(images, boxes, flips)]).float()


def batch_geometry(images, boxes, flips, size):
    x = torch.stack([TF.pil_to_tensor(im) for im in images]).float() / 255
    params = torch.stack([geometry_to_tensor(ViewParams(box, flip, False)) for box, flip in zip(boxes, flips)])
    return crop_resize_flip(x, params, size) * 255


@pytest.mark.parametrize("size", [32, 16])
def test_crop_resize_flip_equals_pil_for_the_same_boxes(size):
    """PIL's resampling weights, up (32) and antialiased down (16): equal up to PIL's uint8 rounding."""
    images = smooth_images(6, size=28)
    boxes = [(0, 0, 28, 28), (3, 5, 12, 14), (10, 2, 18, 11), (0, 14, 20, 14), (7, 7, 9, 9), (1, 0, 27, 20)]
    flips = [False, True, False, True, True, False]
    diff = (pil_geometry(images, boxes, flips, size) - batch_geometry(images, boxes, flips, size)).abs()
    assert diff.max() <= 1.0 + 1e-3, diff.max()
    # what a wrong box or a lost flip gives is well outside that tolerance
    shifted = [(top + 4, max(0, left - 3), h - 4, w) for top, left, h, w in boxes]
    assert_far(*levels(pil_geometry(images, boxes, flips, 32), batch_geometry(images, shifted, flips, 32)))
    assert_far(*levels(pil_geometry(images, boxes, flips, 32),
                       batch_geometry(images, boxes, [not f for f in flips], 32)))


def _view_params(row: torch.Tensor) -> ViewParams:
    """A batch parameter row as the cpu path's ViewParams."""
    r = row.tolist()
    return ViewParams(tuple(int(v) for v in r[:4]), r[4] > 0.5, r[5] > 0.5, tuple(r[6:10]),
                      tuple(int(v) for v in r[10:14]), r[14] > 0.5, r[15], r[16] > 0.5)


@pytest.mark.parametrize("grey", [False, True])
def test_whole_views_equal_the_cpu_path_for_the_same_parameters(grey):
    """The batch path's crop, flip and colour ops against PIL's (views.colour_ops) on the same parameters."""
    images = smooth_images(12, size=28, seed=3)
    if grey:
        images = [im.convert("L").convert("RGB") for im in images]
    batch = BatchViewDataset(ListSource(images), (SPEC, SPEC), MEAN, STD, seed=5)
    batch.set_epoch(2)
    v1, v2 = batch.__getitems__(list(range(len(images))))
    scale = torch.tensor(STD).view(1, 3, 1, 1) * 255  # back to 0..255 levels for the tolerance
    for view in (v1, v2):
        made = batch.to_device(view, torch.device("cpu"))
        want = torch.stack([to_normalised_tensor(colour_ops(crop_and_flip(im, SPEC, _view_params(row)),
                                                            _view_params(row)), MEAN, STD)
                            for im, row in zip(images, view["params"])])
        assert_close(*levels(want * scale, made * scale))


def test_batch_parameters_have_the_view_distributions_and_are_keyed_per_sample():
    spec = ViewSpec(size=28, crop_min_scale=0.2, jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.0,
                    hue=0.0, gray_prob=0.2, blur_prob=0.5, solarize_prob=0.2)
    n = 4000
    p = draw_batch_params(7, 1, 0, np.arange(n), 28, 28, spec).numpy()
    top, left, h, w = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    area = h * w / 28 ** 2
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    # the crop areas of the per-sample path (random-resized crop with its rejections, rounded to pixels)
    ref = [draw_view_params(sample_rng(7, 1, i), 28, 28, spec).box for i in range(n)]
    ref_area = np.array([bh * bw / 28 ** 2 for _, _, bh, bw in ref])
    assert np.allclose(np.quantile(area, [0.1, 0.5, 0.9]), np.quantile(ref_area, [0.1, 0.5, 0.9]), atol=0.03)
    assert area.min() >= 0.19 and area.max() <= 1.0 and (w / h).min() > 0.7 and (w / h).max() < 1.4
    for col, prob in ((4, 0.5), (5, 0.8), (14, 0.2), (16, 0.2)):  # flip, jitter, gray, solarize
        assert abs(p[:, col].mean() - prob) < 4 * np.sqrt(prob * (1 - prob) / n), col
    jit = p[:, 5] > 0.5
    assert (p[jit, 6] >= 0.6).all() and (p[jit, 6] <= 1.4).all() and (p[~jit, 6:10] == (1, 1, 1, 0)).all()
    assert (p[:, 8] == 1).all() and (p[:, 9] == 0).all()  # saturation and hue off: identity factors
    assert (np.sort(p[:, 10:14], axis=1) == (0, 1, 2, 3)).all()  # the order is a permutation
    assert len({tuple(r) for r in p[jit, 10:14]}) == 24
    sigma = p[:, 15]
    assert abs((sigma > 0).mean() - 0.5) < 0.05 and sigma[sigma > 0].min() >= 0.1 and sigma.max() <= 2.0
    # keyed by (seed, epoch, view, index): any batch order gives a sample the same row; anything else changes it
    again = draw_batch_params(7, 1, 0, [3, 2999, 0], 28, 28, spec).numpy()
    assert np.array_equal(again, p[[3, 2999, 0]])
    for other in ((8, 1, 0), (7, 2, 0), (7, 1, 1)):
        assert not np.array_equal(draw_batch_params(*other, np.arange(50), 28, 28, spec).numpy(), p[:50])


def test_in_memory_source_gives_the_same_batches_as_the_pil_path(tmp_path):
    make_idx_dataset(tmp_path, train=16, test=4, classes=4)
    source = IDXSource(tmp_path, train=True)
    spec = ViewSpec(size=28, crop_min_scale=0.3)
    fast = BatchViewDataset(source, (spec, spec), MEAN, STD, seed=1, with_labels=True)
    assert fast.array is not None and fast.collate_fn is not None
    slow = BatchViewDataset(source, (spec, spec), MEAN, STD, seed=1, with_labels=True)
    slow.array = None  # the generic path: PIL image, converted to RGB
    a, b = fast.__getitems__([5, 0, 11]), slow.__getitems__([5, 0, 11])
    assert a[0]["image"].shape == (3, 1, 28, 28) and b[0]["image"].shape == (3, 3, 28, 28)
    assert torch.equal(a[0]["image"].expand(-1, 3, -1, -1), b[0]["image"])
    assert torch.equal(a[0]["params"], b[0]["params"]) and torch.equal(a[1]["params"], b[1]["params"])
    assert a[2].tolist() == b[2].tolist() == [int(source.targets[i]) for i in (5, 0, 11)]
    va, vb = (d.to_device(x[0], torch.device("cpu")) for d, x in ((fast, a), (slow, b)))
    assert va.shape == (3, 3, 28, 28) and torch.allclose(va, vb, atol=1e-5)
    one = fast[11]  # a single sample, as a batch of one gives it
    assert torch.equal(one[0]["params"], a[0]["params"][2]) and one[2] == a[2][2]


def test_images_of_different_sizes_are_one_clear_error():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)) for s in (28, 28, 30)]
    ds = BatchViewDataset(ListSource(images), (SPEC, SPEC), MEAN, STD)
    ds.__getitems__([0, 1])
    with pytest.raises(UserError, match=r"DATA.VIEWS batch stacks whole source images, but a batch holds images of "
                                        r"sizes \[\(3, 28, 28\), \(3, 30, 30\)\]"):
        ds.__getitems__([0, 1, 2])
