"""LARS in both published forms against values computed by hand from their formulas, and the groups."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.config import load_config
from pretrain.optim import LARS, build_optimizer, param_groups, set_lr


def _two_params():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    return w, b


def _grads(w, b):
    w.grad = torch.tensor([0.0, 10.0])  # ||g|| = 10
    b.grad = torch.tensor([2.0])


def test_byol_form_uses_the_norm_of_the_decayed_gradient():
    """optax/BYOL: u = g + wd w; trust = eta ||w|| / ||u||; excluded params: plain SGD, no decay."""
    w, b = _two_params()
    wd, eta, lr = 0.1, 0.02, 0.5
    opt = LARS([dict(params=[w], weight_decay=wd, lars_exclude=False),
                dict(params=[b], weight_decay=wd, lars_exclude=True)], lr=lr, momentum=0.9, eta=eta, form="byol")
    _grads(w, b)
    opt.step()
    u = torch.tensor([0.0, 10.0]) + wd * torch.tensor([3.0, 4.0])  # [0.3, 10.4]
    trust = eta * 5.0 / math.hypot(0.3, 10.4)
    expect_w = torch.tensor([3.0, 4.0]) - lr * trust * u
    assert torch.allclose(w, expect_w, atol=1e-7)
    assert torch.allclose(b, torch.tensor([1.0 - lr * 2.0]))  # no trust ratio, no weight decay
    # second step: momentum buffer = 0.9 * previous update + new update
    w_before = w.detach().clone()
    _grads(w, b)
    u2 = torch.tensor([0.0, 10.0]) + wd * w_before
    trust2 = eta * w_before.norm() / u2.norm()
    buf = 0.9 * trust * u + trust2 * u2
    opt.step()
    assert torch.allclose(w, w_before - lr * buf, atol=1e-7)


@pytest.mark.parametrize("clip", [False, True])
def test_solo_learn_form_sum_of_norms_and_clip(clip):
    """solo-learn: r = eta ||w|| / (||g|| + wd ||w|| + eps), clipped to min(r / lr, 1); u = (g + wd w) r."""
    w, b = _two_params()
    wd, eta, lr = 0.1, 0.02, 0.005
    opt = LARS([dict(params=[w], weight_decay=wd, lars_exclude=False),
                dict(params=[b], weight_decay=wd, lars_exclude=True)], lr=lr, momentum=0.9, eta=eta,
               form="solo-learn", clip_lr=clip)
    _grads(w, b)
    opt.step()
    r = eta * 5.0 / (10.0 + wd * 5.0 + 1e-8)  # 0.0095238
    if clip:
        r = min(r / lr, 1.0)  # 1.905 -> 1: the parameter's LR may not exceed the global LR
    u = (torch.tensor([0.0, 10.0]) + wd * torch.tensor([3.0, 4.0])) * r
    assert torch.allclose(w, torch.tensor([3.0, 4.0]) - lr * u, atol=1e-7)
    assert torch.allclose(b, torch.tensor([1.0 - lr * 2.0]))


def test_solo_learn_form_clip_inactive_when_the_ratio_is_small():
    w, _ = _two_params()
    opt = LARS([dict(params=[w], weight_decay=0.0, lars_exclude=False)], lr=1.0, momentum=0.0, eta=0.02,
               form="solo-learn", clip_lr=True)
    w.grad = torch.tensor([0.0, 10.0])
    opt.step()
    r = 0.02 * 5.0 / (10.0 + 1e-8)  # 0.01 < lr = 1: min(0.01 / 1, 1) = 0.01
    assert torch.allclose(w, torch.tensor([3.0, 4.0 - 10.0 * r]), atol=1e-7)


def test_solo_learn_form_skips_weight_decay_when_a_norm_is_zero():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = LARS([dict(params=[w], weight_decay=0.5, lars_exclude=False)], lr=0.1, momentum=0.0, form="solo-learn")
    w.grad = torch.tensor([1.0, -2.0])
    opt.step()
    assert torch.allclose(w, torch.tensor([-0.1, 0.2]))


def test_groups_follow_the_exclusion_switches():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    one_d = {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[2].bias)}
    for wd_ex, lars_ex in [(True, True), (False, True), (True, False), (False, False)]:
        groups = param_groups(net, 0.5, exclude_bias_n_norm_wd=wd_ex, lars_exclude_bias_n_norm=lars_ex)
        for g in groups:
            for p in g["params"]:
                is_1d = id(p) in one_d
                assert g["weight_decay"] == (0.0 if (is_1d and wd_ex) else 0.5)
                assert g["lars_exclude"] == (is_1d and lars_ex)


def test_recipe_optimizer_classifier_group_and_fixed_predictor():
    """The online classifier has its own LR (scaled like the base LR) and no weight decay; SimSiam's
    predictor keeps the base LR while the schedule moves the rest."""
    from pretrain.method.siamese import build_method

    cfg = load_config("cifar10_simsiam.yaml", ["MODEL.PROJ_HIDDEN_DIM", "16", "MODEL.PROJ_OUTPUT_DIM", "8",
                                                "MODEL.PRED_HIDDEN_DIM", "4", "DATA.BATCH_SIZE", "512"])
    model = build_method(cfg)
    model.attach_classifier(10)
    base_lr = cfg.OPTIM.BASE_LR * 512 / 256
    opt = build_optimizer(cfg, model, base_lr, {"classifier.": {"weight_decay": 0.0, "lr_scale": 0.1 / 0.5}})
    set_lr(opt, base_lr, 0.5)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_id[id(model.classifier.weight)]["lr"] == pytest.approx(0.1 * 2 * 0.5)
    assert by_id[id(model.classifier.weight)]["weight_decay"] == 0.0
    assert by_id[id(model.predictor[0].weight)]["lr"] == pytest.approx(base_lr)
    assert by_id[id(model.backbone.conv1.weight)]["lr"] == pytest.approx(base_lr * 0.5)
    # solo-learn's SimSiam recipe decays every parameter, BN and biases included
    assert by_id[id(model.backbone.bn1.weight)]["weight_decay"] == cfg.OPTIM.WEIGHT_DECAY
