import pytest
import torch

from pretrain.method.rim import cell_masks, default_patch_size, random_image_masking


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_exact_ratio_per_sample():
    x = torch.randn(16, 3, 32, 32)
    out, mask = random_image_masking(x, ratio=0.3, patch_size=4, prob=1.0, generator=_gen())
    cells = (32 // 4) ** 2
    expected = round(0.3 * cells) * 16  # masked cells x pixels per cell
    assert mask.shape == (16, 1, 32, 32)
    assert mask.sum(dim=(1, 2, 3)).tolist() == [expected] * 16


def test_exact_count_with_edge_cells():
    cells = cell_masks(5, 3, 5, ratio=0.4, prob=1.0, generator=_gen())
    assert cells.sum(dim=(1, 2)).tolist() == [6] * 5  # round(0.4 * 15)


def test_masks_differ_across_samples_and_are_cell_aligned():
    x = torch.randn(8, 3, 32, 32)
    _, mask = random_image_masking(x, ratio=0.5, patch_size=8, prob=1.0, generator=_gen())
    flat = mask.view(8, -1)
    assert len({tuple(row.tolist()) for row in flat}) == 8
    # every 8x8 cell is either fully masked or fully visible
    blocks = mask.view(8, 1, 4, 8, 4, 8).float().mean(dim=(3, 5))
    assert torch.all((blocks == 0) | (blocks == 1))


def test_zero_fill_only_touches_masked_pixels():
    x = torch.randn(4, 3, 32, 32)
    out, mask = random_image_masking(x, ratio=0.3, fill="zero", prob=1.0, generator=_gen())
    m = mask.expand_as(x)
    assert torch.all(out[m] == 0)
    assert torch.equal(out[~m], x[~m])


def test_noise_fill_is_standard_normal():
    x = torch.full((16, 3, 64, 64), 5.0)
    out, mask = random_image_masking(x, ratio=0.5, fill="noise", prob=1.0, generator=_gen())
    vals = out[mask.expand_as(x)]
    assert abs(vals.mean().item()) < 0.05 and abs(vals.std().item() - 1.0) < 0.05
    assert torch.all(out[~mask.expand_as(x)] == 5.0)


def test_blur_fill_uses_a_blurred_copy():
    x = torch.randn(4, 3, 32, 32)
    out, mask = random_image_masking(x, ratio=0.5, fill="blur", prob=1.0, generator=_gen())
    m = mask.expand_as(x)
    assert not torch.allclose(out[m], x[m])
    assert out[m].std() < 0.6 * x[m].std()  # blurred values are much smoother than white noise
    assert torch.equal(out[~m], x[~m])


def test_deterministic_under_seed_and_different_across_seeds():
    x = torch.randn(6, 3, 32, 32)
    a, _ = random_image_masking(x, fill="noise", prob=1.0, generator=_gen(3))
    b, _ = random_image_masking(x, fill="noise", prob=1.0, generator=_gen(3))
    c, _ = random_image_masking(x, fill="noise", prob=1.0, generator=_gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_apply_probability():
    x = torch.randn(2000, 1, 8, 8)
    _, mask = random_image_masking(x, ratio=0.5, patch_size=2, prob=0.5, generator=_gen())
    applied = mask.view(2000, -1).any(dim=1).float().mean().item()
    assert 0.45 < applied < 0.55
    _, none = random_image_masking(x, ratio=0.5, patch_size=2, prob=0.0, generator=_gen())
    assert not none.any()


def test_default_patch_is_one_eighth():
    assert default_patch_size(224, 224) == 28
    assert default_patch_size(32, 32) == 4


def test_unknown_fill_rejected():
    with pytest.raises(ValueError, match="fill"):
        random_image_masking(torch.zeros(1, 3, 8, 8), fill="mean")
