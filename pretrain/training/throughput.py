"""Timing a pretraining step: the benchmark's building blocks and the machine's calibration figure.

The calibration figure is the one number every timing in this project is quoted with: images/s of base
BYOL, ResNet-18 at 32 px (ImageNet stem), batch 64, on random tensors (so data loading is excluded),
10 timed steps after 3 warm-up steps (`python benchmarks/pretrain_throughput.py --batch 64`, its `base` row).
Measured: 36-56 on a slow 2-core AVX2 machine, 113-198 on a 2-core AVX-512 one (docs/benchmarks.md names them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from pretrain.config import load_config
from pretrain.method.siamese import build_method
from pretrain.optim import build_optimizer

#: the calibration's settings (see the module docstring)
CALIBRATION = dict(method="byol", backbone="resnet18", image_size=32, batch=64, steps=10, warmup=3)


def build_step(method: str, backbone: str, image_size: int, batch: int, rim: bool, ifm: bool,
               device: torch.device, cifar_stem: bool = False) -> Callable[[int], None]:
    """One variant's model and optimizer on fixed random views; returns step(i), one full training step
    (both branches, loss, backward, optimizer step, EMA update) with RIM/IFM seeds i."""
    overrides = ["METHOD", method, "MODEL.BACKBONE", backbone, "MODEL.CIFAR_STEM", str(cifar_stem),
                 "DATA.IMAGE_SIZE", str(image_size), "RIM.ENABLED", str(rim), "IFM.ENABLED", str(ifm),
                 "RIM.PROB", "1.0"]
    if method == "simsiam":
        overrides += ["MODEL.PROJ_HIDDEN_DIM", "2048", "MODEL.PROJ_OUTPUT_DIM", "2048", "MODEL.PRED_HIDDEN_DIM", "512"]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_method(cfg).to(device)
    opt = build_optimizer(cfg, model, 0.01)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    v1 = torch.randn(batch, 3, image_size, image_size, device=device)
    v2 = torch.randn_like(v1)
    if amp:
        v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(v1, v2, rim_seed=i, ifm_seed=i)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step(0.5)

    return step


def timed(step: Callable[[int], None], batch: int, steps: int, device: torch.device, first: int = 0) -> float:
    """Images/s of `steps` calls of step (seeds first, first + 1, ...)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(first, first + steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def calibration_figure(device: torch.device | str = "cpu") -> float:
    """The machine's calibration figure (images/s, see the module docstring), measured now (about 10-40 s on a CPU)."""
    c, device = CALIBRATION, torch.device(device)
    step = build_step(c["method"], c["backbone"], c["image_size"], c["batch"], False, False, device)
    for i in range(c["warmup"]):
        step(i)
    return timed(step, c["batch"], c["steps"], device, c["warmup"])


__all__ = ["CALIBRATION", "build_step", "calibration_figure", "timed"]
