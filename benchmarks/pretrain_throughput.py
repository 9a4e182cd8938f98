"""Images/s of one pretraining step for base, +RIM, +IFM and +RIM+IFM, and each overhead vs base.

python benchmarks/pretrain_throughput.py [--method byol] [--backbone resnet18] [--image-size 32]
       [--batch 64] [--steps 10] [--warmup 3] [--device auto] [--cifar-stem]
       [--variants base +RIM +IFM +RIM+IFM] [--rounds 1]

Times the full step (forward of both branches, loss, backward, optimizer step, EMA update) on
random tensors, so data loading is excluded and the figures isolate the method's own cost.
With --rounds R > 1 every variant is built first, then timed for --steps steps in turn, R times
over (A B B A ...); reported are the median of its R figures and, as its overhead, the median over the
rounds of the ratio to the first variant's figure of the same round. A small overhead (IFM at
ResNet-50) then stands out from the drift of a shared machine, which a one-after-the-other run mixes
into it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pretrain.config import load_config
from pretrain.method.siamese import build_method
from pretrain.training.optim import build_optimizer
from rimifm.distributed import resolve_device

VARIANTS = {"base": (False, False), "+RIM": (True, False), "+IFM": (False, True), "+RIM+IFM": (True, True)}


def build(args, rim: bool, ifm: bool, device: torch.device):
    """One variant's model and optimizer; returns step(i), one full training step."""
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

    return step


def timed(args, step, device: torch.device, first: int) -> float:
    """Images/s of args.steps calls of step (seeds first, first + 1, ...)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(first, first + args.steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.batch * args.steps / (time.perf_counter() - t0)


def measure(args, rim: bool, ifm: bool, device: torch.device) -> float:
    step = build(args, rim, ifm, device)
    for i in range(args.warmup):
        step(i)
    return timed(args, step, device, args.warmup)


def measure_interleaved(args, names: list[str], device: torch.device) -> dict[str, list[float]]:
    """Images/s of each variant in args.rounds rounds, the variants taking turns within each round."""
    steps = {name: build(args, *VARIANTS[name], device) for name in names}
    for step in steps.values():
        for i in range(args.warmup):
            step(i)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:  # alternate the order so neither goes first always
            figures[name].append(timed(args, steps[name], device, args.warmup + r * args.steps))
    return figures


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
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="the first is the reference of the overheads (default: all four, base first)")
    p.add_argument("--rounds", type=int, default=1, help="> 1: interleaved rounds, median reported (see above)")
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"{args.method} {args.backbone}{' (CIFAR stem)' if args.cifar_stem else ''}, {args.image_size}px, "
          f"batch {args.batch}, {args.steps} timed steps on {device} ({torch.get_num_threads()} threads)"
          + (f", {args.rounds} interleaved rounds (median)" if args.rounds > 1 else ""))
    base = None
    if args.rounds > 1:
        figures = measure_interleaved(args, args.variants, device)
    fmt = lambda x: f"{x:.1f}" if x >= 10 else f"{x:.3g}"  # noqa: E731
    for name in args.variants:
        if args.rounds > 1:
            ips = statistics.median(figures[name])
            # the overhead: median over rounds of the ratio to the reference's figure in the same round
            overhead = statistics.median(b / v - 1 for b, v in zip(figures[args.variants[0]], figures[name])) * 100
            spread = f"   rounds {', '.join(f'{x:.3g}' for x in figures[name])}"
        else:
            ips, spread = measure(args, *VARIANTS[name], device), ""
            base = base or ips
            overhead = (base / ips - 1) * 100
        print(f"  {name:<9} {fmt(ips):>9} images/s   overhead vs {args.variants[0]} {overhead:+6.1f}%{spread}",
              flush=True)


if __name__ == "__main__":
    main()
