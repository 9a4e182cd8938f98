import math

import pytest
import torch

from pretrain.method.losses import byol_distance, simsiam_distance, symmetric_loss
from pretrain.method.models import ema_update
from pretrain.method.siamese import BYOL
from pretrain.optim import LARS, param_groups, warmup_cosine


def test_byol_and_simsiam_distances_hand_computed():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [3.0, 4.0]])
    z = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0], [4.0, 3.0]])
    # cosines: 0, 1, -1, 24/25
    assert torch.allclose(byol_distance(p, z), torch.tensor([2.0, 0.0, 4.0, 2 - 2 * 0.96]), atol=1e-6)
    assert torch.allclose(simsiam_distance(p, z), torch.tensor([0.0, -1.0, 1.0, -0.96]))


def test_symmetric_loss_pairs_each_view_with_the_other():
    p1, p2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    t1, t2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # p1 vs t2 (orthogonal) = 2, p2 vs t1 (orthogonal) = 2
    assert symmetric_loss(byol_distance, p1, p2, t1, t2).item() == pytest.approx(2.0)
    assert symmetric_loss(byol_distance, p1, p2, t2, t1).item() == pytest.approx(0.0)
    assert symmetric_loss(byol_distance, p1, p2, t1, t2, scale=1.0).item() == pytest.approx(4.0)


@pytest.mark.parametrize("method", ["byol", "simsiam", "byol-mean"])
def test_base_loss_has_the_published_scale(method):
    """BYOL's loss is L + L~ (its eq. 2, and solo-learn @ 9187ea3, solo/methods/byol.py: the sum of the two
    directions); SimSiam's is their mean. BYOL.LOSS_SCALE mean is solo-learn's BYOL when its README's CIFAR
    numbers were committed (fca55e3, models/byol.py: `byol_loss_func(p1, z2_momentum) / 2 +
    byol_loss_func(p2, z1_momentum) / 2`; summed from 365f2aa)."""
    from pretrain.config import load_config
    from pretrain.method.siamese import build_method

    scale = ["BYOL.LOSS_SCALE", "mean"] if method == "byol-mean" else []
    method = method.removesuffix("-mean")
    cfg = load_config(None, ["METHOD", method, "MODEL.PROJ_HIDDEN_DIM", "32", "MODEL.PROJ_OUTPUT_DIM", "16",
                             "MODEL.PRED_HIDDEN_DIM", "8", *scale])
    torch.manual_seed(0)
    model = build_method(cfg).eval()  # eval: BN uses running stats, so one pass per view is reproducible
    v1, v2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    out = model(v1, v2)
    tb, tp = model.target_nets()
    with torch.no_grad():
        p1, p2 = model.predictor(model.projector(model.backbone(v1))), model.predictor(model.projector(model.backbone(v2)))
        z1, z2 = tp(tb(v1)), tp(tb(v2))
    dist = byol_distance if method == "byol" else simsiam_distance
    directions = dist(p1, z2).mean() + dist(p2, z1).mean()
    expected = directions if method == "byol" and not scale else 0.5 * directions
    assert out["base_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ema_update_averages_params_and_keeps_the_target_buffers():
    online = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    target = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in online.parameters():
            p.fill_(1.0)
        for p in target.parameters():
            p.fill_(0.0)
        online[1].running_mean.fill_(3.0)
    ema_update(target, online, 0.9)
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.1))
    assert torch.equal(target[1].running_mean, torch.zeros(2))  # its own statistics, not the online 3.0


def test_byol_target_bn_statistics_come_from_its_own_clean_views():
    """With RIM the online BN sees masked views; the target's running statistics must be those of the
    clean views it is fed, after a step and its EMA update (BYOL keeps the target's own BN state)."""
    import copy

    from pretrain.config import load_config
    from pretrain.method.siamese import build_method

    cfg = load_config(None, ["METHOD", "byol", "MODEL.PROJ_HIDDEN_DIM", "32", "MODEL.PROJ_OUTPUT_DIM", "16",
                             "MODEL.PRED_HIDDEN_DIM", "8", "RIM.ENABLED", "true", "RIM.PROB", "1.0",
                             "RIM.RATIO", "0.75"])
    torch.manual_seed(0)
    model = build_method(cfg).train()
    fresh_target = copy.deepcopy(model.target_backbone)
    v1, v2 = torch.rand(6, 3, 16, 16) + 0.5, torch.rand(6, 3, 16, 16) + 0.5
    model(v1, v2, rim_seed=1)
    model.after_step(0.0)
    with torch.no_grad():
        fresh_target(v1), fresh_target(v2)  # the target's two clean-view calls, replayed
    got, want = model.target_backbone.bn1.running_mean, fresh_target.bn1.running_mean
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(model.backbone.bn1.running_mean, want, atol=1e-3)  # online saw masked views


def test_byol_momentum_schedule_is_cosine():
    m = BYOL.__new__(BYOL)
    m.base_momentum, m.final_momentum = 0.99, 1.0
    assert m.momentum_at(0.0) == pytest.approx(0.99)
    assert m.momentum_at(0.5) == pytest.approx(0.995)
    assert m.momentum_at(1.0) == pytest.approx(1.0)
    assert m.momentum_at(0.25) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_warmup_cosine_schedule():
    s = warmup_cosine(0.1, start_factor=0.0, final_factor=0.0)
    assert s(0.0) == pytest.approx(0.0)
    assert s(0.05) == pytest.approx(0.5)
    assert s(0.1) == pytest.approx(1.0)
    assert s(0.55) == pytest.approx(0.5)
    assert s(0.999) < 1e-4
    plain = warmup_cosine(0.0, final_factor=0.1)
    assert plain(0.0) == pytest.approx(1.0) and plain(0.5) == pytest.approx(0.55)


def test_no_weight_decay_on_norms_and_biases():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    groups = param_groups(net, 0.5)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net[0].weight), id(net[2].weight)}
    assert all(g["lars_exclude"] == (g["weight_decay"] == 0) for g in groups)


def test_lars_trust_ratio_and_exclusion():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([dict(params=[w], weight_decay=0.0, lars_exclude=False),
                dict(params=[b], weight_decay=0.0, lars_exclude=True)], lr=1.0, momentum=0.0, eta=0.1)
    w.grad = torch.tensor([0.0, 10.0])  # norm 10 -> trust = 0.1 * 5 / 10 = 0.05
    b.grad = torch.tensor([2.0])
    opt.step()
    assert torch.allclose(w, torch.tensor([3.0, 3.5]))
    assert torch.allclose(b, torch.tensor([-1.0]))
