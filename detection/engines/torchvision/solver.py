"""detectron2's solver for the torchvision engine: SGD with its parameter groups and the warmup +
multi-step learning rate, set every iteration (so that a resumed run follows the same schedule).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from detection.engines.torchvision.norms import NORM_TYPES


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.SGD:
    """SGD with detectron2's parameter groups: WEIGHT_DECAY_NORM on norms, BIAS_LR_FACTOR / WEIGHT_DECAY_BIAS on biases."""
    s = cfg.SOLVER
    bias_override: dict[str, float] = {}
    if s.BIAS_LR_FACTOR != 1.0:
        bias_override["lr"] = s.BASE_LR * s.BIAS_LR_FACTOR
    if s.WEIGHT_DECAY_BIAS is not None:
        bias_override["weight_decay"] = s.WEIGHT_DECAY_BIAS
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            hp = {"lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY}
            if isinstance(module, NORM_TYPES):
                hp["weight_decay"] = s.WEIGHT_DECAY_NORM
            if pname == "bias":
                hp.update(bias_override)
            groups[(hp["lr"], hp["weight_decay"])].append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd, "base_lr": lr} for (lr, wd), ps in groups.items()]
    return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)


def lr_factor(cfg: Any, it: int) -> float:
    """detectron2's WarmupMultiStepLR factor at iteration `it` (0-based)."""
    s = cfg.SOLVER
    steps = [x for x in s.STEPS if x <= s.MAX_ITER]
    factor = s.GAMMA ** bisect_right(steps, it)
    if it < s.WARMUP_ITERS:
        if s.WARMUP_METHOD == "constant":
            warm = s.WARMUP_FACTOR
        else:
            alpha = it / s.WARMUP_ITERS
            warm = s.WARMUP_FACTOR * (1 - alpha) + alpha
        factor *= warm
    return factor


def set_lr(opt: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's lr to its base lr x `factor`; returns the first group's lr (for the log)."""
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor
    return opt.param_groups[0]["lr"]
