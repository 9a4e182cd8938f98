"""Optimisers (SGD; AdamW; LARS in BYOL's and solo-learn's forms), their parameter groups (bias/norm exclusions), schedules."""

from __future__ import annotations

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)
from torch import nn

#: the two published LARS trust ratios (`OPTIM.LARS_FORM`)
LARS_FORMS = ("byol", "solo-learn")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017), in either published form.

    * `form="byol"` (deepmind-research byol/utils/optimizers.py, optax's LARS): u = g + wd*w, then
      u *= eta * ||w|| / ||u|| (the norm of the *sum*), a factor 1 when either norm is 0.
    * `form="solo-learn"` (solo-learn solo/utils/lars.py, apex LARC): when ||w|| and ||g|| are both
      non-zero, r = eta * ||w|| / (||g|| + wd * ||w|| + eps) (a *sum of norms*), clipped to
      min(r / lr, 1) with `clip_lr`, and u = (g + wd*w) * r; otherwise u = g, without weight decay.

    Then buf = momentum * buf + u (buf = u at the first step) and w -= lr * buf, as torch SGD.
    Parameters of a group with `lars_exclude=True` (biases and norms, when `exclude_bias_n_norm`) get
    neither the trust ratio nor weight decay, in both forms: plain momentum SGD at the group's LR.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001,
                 form: str = "byol", clip_lr: bool = False, eps: float = 1e-8):
        if form not in LARS_FORMS:
            raise ValueError(f"unknown LARS form {form!r}; choose one of {', '.join(LARS_FORMS)}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, form=form,
                                      clip_lr=clip_lr, eps=eps, lars_exclude=False))

    @staticmethod
    def _update(p: torch.Tensor, group: dict) -> torch.Tensor:
        """The LARS-scaled update u of one parameter (before momentum)."""
        g, wd = p.grad, group["weight_decay"]
        if group["lars_exclude"]:
            return g
        if group["form"] == "byol":
            u = g.add(p, alpha=wd) if wd else g
            w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
            trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, torch.ones_like(w_norm))
            return u.mul(trust)
        w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
        if w_norm == 0 or g_norm == 0:
            return g
        ratio = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
        if group["clip_lr"]:
            ratio = torch.clamp(ratio / group["lr"], max=1.0)
        return g.add(p, alpha=wd).mul(ratio)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                u = self._update(p, group)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = u.clone()
                else:
                    buf.mul_(group["momentum"]).add_(u)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float, fixed_lr_prefixes: tuple[str, ...] = (),
                 exclude_bias_n_norm_wd: bool = True, lars_exclude_bias_n_norm: bool = True,
                 group_overrides: dict[str, dict] | None = None) -> list[dict]:
    """Trainable parameters in groups by (no-decay, fixed LR, override prefix).

    Biases and norm parameters (every tensor with ndim <= 1) get no weight decay when
    `exclude_bias_n_norm_wd`, and `lars_exclude=True` (no trust ratio, no weight decay under LARS) when
    `lars_exclude_bias_n_norm`. Parameters whose name starts with one of `fixed_lr_prefixes` get
    `fixed_lr=True` (SimSiam's predictor keeps its initial learning rate). `group_overrides` maps a name
    prefix to settings of its own group (the online classifier: its own base LR, no weight decay).
    """
    overrides = group_overrides or {}
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        one_d = p.ndim <= 1  # BatchNorm weights/biases and all biases
        fixed = any(name.startswith(pref) for pref in fixed_lr_prefixes)
        own = next((pref for pref in overrides if name.startswith(pref)), "")
        groups.setdefault((own, one_d and exclude_bias_n_norm_wd, one_d and lars_exclude_bias_n_norm, fixed),
                          []).append(p)
    out = []
    for (own, no_decay, lars_exclude, fixed), params in sorted(groups.items()):
        group = dict(params=params, weight_decay=0.0 if no_decay else weight_decay, lars_exclude=lars_exclude,
                     fixed_lr=fixed)
        group.update(overrides.get(own, {}))
        out.append(group)
    return out


def build_optimizer(cfg, model: nn.Module, lr: float, group_overrides: dict[str, dict] | None = None
                    ) -> torch.optim.Optimizer:
    """The OPTIM.* optimizer over the model's groups; each group's "base_lr_scale" is its LR / the base LR."""
    o = cfg.OPTIM
    fixed = ("predictor.",) if o.PREDICTOR_FIXED_LR else ()
    groups = param_groups(model, o.WEIGHT_DECAY, fixed, o.EXCLUDE_BIAS_N_NORM_WD, o.LARS_EXCLUDE_BIAS_N_NORM,
                          group_overrides)
    if o.NAME == "lars":
        return LARS(groups, lr=lr, momentum=o.MOMENTUM, weight_decay=o.WEIGHT_DECAY, eta=o.LARS_ETA,
                    form=o.LARS_FORM, clip_lr=o.LARS_CLIP_LR)
    for g in groups:
        g.pop("lars_exclude")
    if o.NAME == "adamw":  # decoupled weight decay (Loshchilov & Hutter), torch's AdamW
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(o.BETAS), weight_decay=o.WEIGHT_DECAY)
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
    """Apply the scheduled LR to every group except those marked fixed_lr; returns the LR set.

    A group with "lr_scale" (the online classifier) runs at base_lr * lr_scale on the same schedule.
    """
    lr = base_lr * factor
    for g in optimizer.param_groups:
        scale = g.get("lr_scale", 1.0)
        g["lr"] = base_lr * scale if g.get("fixed_lr") else lr * scale
    return lr

