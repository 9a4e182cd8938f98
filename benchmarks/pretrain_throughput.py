"""Images/s of one pretraining step for base, +RIM, +IFM and +RIM+IFM, and each overhead vs base.

python benchmarks/pretrain_throughput.py [--method byol] [--backbone resnet18] [--image-size 32]
       [--batch 64] [--steps 10] [--warmup 3] [--device auto] [--cifar-stem]

Times the full step (forward of both branches, loss, backward, optimizer step, EMA update) on
random tensors, so data loading is excluded and the figures isolate the method's own cost.
"""

from __future__ import annotations

import argparse
import time

import torch

from pretrain.config import load_config
from pretrain.method.siamese import build_method
from pretrain.training.optim import build_optimizer
from rimifm.distributed import resolve_device

VARIANTS = {"base": (False, False), "+RIM": (True, False), "+IFM": (False, True), "+RIM+IFM": (True, True)}


def measure(args, rim: bool, ifm: bool, device: torch.device) -> float:
    overrides = ["METHOD", args.method, "MODEL.BACKBONE", args.backbone, "MODEL.CIFAR_STEM", str(args.cifar_stem),
                 "DATA.IMAGE_SIZE", str(args.image_size), "RIM.ENABLED", str(rim), "IFM.ENABLED", str(ifm),
                 "RIM.PROB", "1.0"]
    if args.method == "simsiam":
        overrides += ["MODEL.PROJ_HIDDEN_DIM", "2048", "MODEL.PROJ_OUTPUT_DIM", "2048", "MODEL.PRED_HIDDEN_DIM", "512"]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_method(cfg).to(device)
    opt = build_optimizer(cfg, model, 0.01)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    v1 = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
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

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.batch * args.steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="byol", choices=["byol", "simsiam"])
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cifar-stem", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"{args.method} {args.backbone}{' (CIFAR stem)' if args.cifar_stem else ''}, {args.image_size}px, "
          f"batch {args.batch}, {args.steps} timed steps on {device} ({torch.get_num_threads()} threads)")
    base = None
    for name, (rim, ifm) in VARIANTS.items():
        ips = measure(args, rim, ifm, device)
        base = base or ips
        overhead = (base / ips - 1) * 100
        print(f"  {name:<9} {ips:9.1f} images/s   overhead vs base {overhead:+6.1f}%")


if __name__ == "__main__":
    main()
