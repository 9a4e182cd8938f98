import numpy as np
import pytest
import torch
from torch import nn

from pretrain.method import ifm as ifm_ops
from pretrain.method.losses import byol_distance, mixed_target_loss, simsiam_distance
from pretrain.method.models import byol_predictor, byol_projector, simsiam_predictor, simsiam_projector
from pretrain.method.siamese import BYOL, IFMSettings, RIMSettings, SimSiam


class TinyBackbone(nn.Module):
    """A small conv net standing in for a ResNet (fast, with BatchNorm like the real one)."""

    def __init__(self, dim=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = dim

    def forward(self, x):
        return self.net(x)


def make(method="byol", ifm=None, rim=None, seed=0):
    torch.manual_seed(seed)
    bb = TinyBackbone()
    ifm = ifm or IFMSettings()
    rim = rim or RIMSettings()
    if method == "byol":
        return BYOL(bb, byol_projector(8, 16, 6), byol_predictor(6, 16), rim, ifm, 0.9, 1.0)
    return SimSiam(bb, simsiam_projector(8, 16, 6, layers=2), simsiam_predictor(6, 4), rim, ifm)


def test_lambda_range_and_partner_permutation():
    lam, perm = ifm_ops.sample_mixing(512, alpha=1.0, rng=np.random.default_rng(0))
    assert lam.min() >= 0.5 and lam.max() <= 1.0
    assert lam.min() < 0.55 and lam.max() > 0.95  # the max() folds Beta(1,1) onto [0.5, 1]
    assert sorted(perm.tolist()) == list(range(512))
    _, rev = ifm_ops.sample_mixing(5, partner="reverse", rng=np.random.default_rng(0))
    assert rev.tolist() == [4, 3, 2, 1, 0]


def test_sampling_is_seeded():
    a = ifm_ops.sample_mixing(16, rng=np.random.default_rng(7))
    b = ifm_ops.sample_mixing(16, rng=np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_batch_of_one_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        ifm_ops.sample_mixing(1)


def test_mix_rowwise():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    lam = torch.tensor([1.0, 0.75, 0.5])
    perm = torch.tensor([1, 2, 0])
    out = ifm_ops.mix(x, lam, perm)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.5, 1.25], [1.5, 1.0]]))


def test_mixed_target_loss_weights_both_targets():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    lam = torch.tensor([0.75, 0.5])
    perm = torch.tensor([1, 0])
    # sample 0: 0.75*D(p0,z0) + 0.25*D(p0,z1) = 0.75*0 + 0.25*4 ; sample 1: 0.5*2 + 0.5*2
    out = mixed_target_loss(byol_distance, p, z, lam, perm)
    assert torch.allclose(out, torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("method", ["byol", "simsiam"])
@pytest.mark.parametrize("level", ["backbone", "projector"])
@pytest.mark.parametrize("target", ["feature", "output", "loss"])
def test_ifm_loss_matches_the_definition(method, level, target):
    """Recompute L_IFM by hand: same lambda and partner for both views, target from the other view."""
    model = make(method, IFMSettings(True, level=level, target=target))
    v1, v2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    out = model(v1, v2, ifm_seed=11)
    lam, perm = ifm_ops.sample_mixing(6, 1.0, "permute", np.random.default_rng(11))
    D = byol_distance if method == "byol" else simsiam_distance
    scale = 1.0 if method == "byol" else 0.5  # BYOL sums its two directions, SimSiam averages them
    tb, tp = model.target_nets()
    with torch.no_grad():
        h1, h2 = model.backbone(v1), model.backbone(v2)
        z1, z2 = model.projector(h1), model.projector(h2)
        th1, th2 = tb(v1), tb(v2)
        tz1, tz2 = tp(th1), tp(th2)
        if level == "backbone":
            ph1 = model.predictor(model.projector(ifm_ops.mix(h1, lam, perm)))
            ph2 = model.predictor(model.projector(ifm_ops.mix(h2, lam, perm)))
        else:
            ph1, ph2 = model.predictor(ifm_ops.mix(z1, lam, perm)), model.predictor(ifm_ops.mix(z2, lam, perm))
        if target == "loss":
            expect = scale * ((lam * D(ph1, tz2) + (1 - lam) * D(ph1, tz2[perm])).mean()
                              + (lam * D(ph2, tz1) + (1 - lam) * D(ph2, tz1[perm])).mean())
        else:
            if target == "output":
                nz1, nz2 = torch.nn.functional.normalize(tz1, dim=1), torch.nn.functional.normalize(tz2, dim=1)
                t1, t2 = ifm_ops.mix(nz1, lam, perm), ifm_ops.mix(nz2, lam, perm)
            elif level == "backbone":
                t1, t2 = tp(ifm_ops.mix(th1, lam, perm)), tp(ifm_ops.mix(th2, lam, perm))
            else:
                t1, t2 = ifm_ops.mix(tz1, lam, perm), ifm_ops.mix(tz2, lam, perm)
            expect = scale * (D(ph1, t2).mean() + D(ph2, t1).mean())
    assert torch.allclose(out["ifm_loss"], expect, atol=1e-6)
    assert torch.allclose(out["loss"], out["base_loss"] + expect, atol=1e-6)


def test_no_gradient_into_the_target_simsiam():
    """SimSiam shares weights with its target: gradients must equal those with explicitly detached targets."""
    model = make("simsiam", IFMSettings(True, target="feature"))
    v1, v2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    out = model(v1, v2, ifm_seed=3)
    model.zero_grad()
    loss = out["loss"]
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    lam, perm = ifm_ops.sample_mixing(6, 1.0, "permute", np.random.default_rng(3))
    h1, h2 = model.backbone(v1), model.backbone(v2)
    z1, z2 = model.projector(h1), model.projector(h2)
    p1, p2 = model.predictor(z1), model.predictor(z2)
    base = 0.5 * (simsiam_distance(p1, z2.detach()).mean() + simsiam_distance(p2, z1.detach()).mean())
    ph1 = model.predictor(model.projector(ifm_ops.mix(h1, lam, perm)))
    ph2 = model.predictor(model.projector(ifm_ops.mix(h2, lam, perm)))
    t1 = model.projector(ifm_ops.mix(h1.detach(), lam, perm)).detach()
    t2 = model.projector(ifm_ops.mix(h2.detach(), lam, perm)).detach()
    ifm = 0.5 * (simsiam_distance(ph1, t2).mean() + simsiam_distance(ph2, t1).mean())
    (base + ifm).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-6), n


def test_no_gradient_into_the_target_byol():
    model = make("byol", IFMSettings(True))
    out = model(torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8), ifm_seed=1)
    out["loss"].backward()
    for p in list(model.target_backbone.parameters()) + list(model.target_projector.parameters()):
        assert p.grad is None and not p.requires_grad
    assert all(p.grad is not None for p in model.predictor.parameters())


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_weight_zero_gives_the_base_loss(method):
    v1, v2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    off = make(method, IFMSettings(False))(v1, v2, ifm_seed=5)
    zero = make(method, IFMSettings(True, weight=0.0))(v1, v2, ifm_seed=5)
    assert torch.equal(off["loss"], zero["loss"])
    assert "ifm_loss" not in zero


def test_ifm_inactive_before_start_epoch():
    v1, v2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    model = make("byol", IFMSettings(True, start_epoch=3))
    assert "ifm_loss" not in model(v1, v2, ifm_active=False)
    assert "ifm_loss" in model(v1, v2, ifm_active=True)


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_rim_masks_online_inputs_only(method):
    """With RIM the online backbone sees masked views, the target branch the clean ones."""
    model = make(method, rim=RIMSettings(True, ratio=0.5, patch_size=4, prob=1.0))
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    if method == "byol":
        model.target_backbone.register_forward_pre_hook(lambda m, args: seen.append(("target", args[0].clone())))
    v1, v2 = torch.randn(4, 3, 16, 16) + 3, torch.randn(4, 3, 16, 16) + 3
    model(v1, v2, rim_seed=9)
    online = [s for s in seen if not isinstance(s, tuple)][:2]
    targets = [s[1] for s in seen if isinstance(s, tuple)] if method == "byol" else \
        [s for s in seen if not isinstance(s, tuple)][2:4]
    for o, v in zip(online, (v1, v2)):
        frac = (o == 0).float().mean().item()
        assert abs(frac - 0.5) < 1e-6  # exactly half the pixels zeroed, the rest untouched
        assert torch.equal(o[o != 0], v[o != 0])
    assert torch.equal(targets[0], v1) and torch.equal(targets[1], v2)


def test_rim_branch_both_masks_target_too():
    model = make("byol", rim=RIMSettings(True, ratio=0.5, patch_size=4, prob=1.0, branch="both"))
    seen = []
    model.target_backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    model(torch.randn(4, 3, 16, 16) + 3, torch.randn(4, 3, 16, 16) + 3, rim_seed=1)
    assert abs((seen[0] == 0).float().mean().item() - 0.5) < 1e-6
