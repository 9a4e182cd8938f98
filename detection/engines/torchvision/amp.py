"""Numerics of the torchvision engine's forward passes: bf16 autocast on GPU, fp32 on CPU;
one place so that training, precise BN and inference run the model alike.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch


def autocast(device: torch.device) -> Any:
    """The context the model runs in on `device`."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
