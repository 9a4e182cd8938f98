"""Optimisers (SGD, LARS), parameter groups without weight decay on norms and biases, schedules."""

from __future__ import annotations

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio (You et al. 2017), as BYOL trains.

    Groups with `lars_exclude=True` (norms and biases) get plain SGD momentum, no adaptation.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"]:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d_p)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm,
                                        torch.ones_like(p_norm))
                    d_p = d_p.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d_p.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d_p)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float, fixed_lr_prefixes: tuple[str, ...] = ()) -> list[dict]:
    """Trainable parameters split so that norms and biases get no weight decay (and no LARS).

    Parameters whose name starts with one of `fixed_lr_prefixes` get `fixed_lr=True` (SimSiam's
    predictor keeps its initial learning rate).
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1  # BatchNorm weights/biases and all biases
        fixed = any(name.startswith(pref) for pref in fixed_lr_prefixes)
        groups.setdefault((no_decay, fixed), []).append(p)
    out = []
    for (no_decay, fixed), params in sorted(groups.items()):
        out.append(dict(params=params, weight_decay=0.0 if no_decay else weight_decay,
                        lars_exclude=no_decay, fixed_lr=fixed))
    return out


def build_optimizer(cfg, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    o = cfg.OPTIM
    fixed = ("predictor.",) if o.PREDICTOR_FIXED_LR else ()
    groups = param_groups(model, o.WEIGHT_DECAY, fixed)
    if o.NAME == "lars":
        return LARS(groups, lr=lr, momentum=o.MOMENTUM, weight_decay=o.WEIGHT_DECAY, eta=o.LARS_ETA)
    for g in groups:
        g.pop("lars_exclude")
    return torch.optim.SGD(groups, lr=lr, momentum=o.MOMENTUM, weight_decay=o.WEIGHT_DECAY)


def warmup_cosine(warmup_fraction: float, start_factor: float = 0.0, final_factor: float = 0.0) -> ParamScheduler:
    """Multiplier of the base LR over training progress in [0, 1): linear warmup, then cosine decay."""
    cosine = CosineParamScheduler(1.0, final_factor)
    if warmup_fraction <= 0:
        return cosine
    if warmup_fraction >= 1:
        return LinearParamScheduler(start_factor, 1.0)
    return CompositeParamScheduler(
        [LinearParamScheduler(start_factor, 1.0), cosine],
        lengths=[warmup_fraction, 1.0 - warmup_fraction],
        interval_scaling=["rescaled", "rescaled"],
    )


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Apply the scheduled LR to every group except those marked fixed_lr; returns the LR set."""
    lr = base_lr * factor
    for g in optimizer.param_groups:
        g["lr"] = base_lr if g.get("fixed_lr") else lr
    return lr

