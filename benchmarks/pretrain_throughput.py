"""Images/s of one pretraining step for base, +RIM, +IFM and +RIM+IFM, and each overhead vs base.

python benchmarks/pretrain_throughput.py [--method byol] [--backbone resnet18] [--image-size 32]
       [--batch 64] [--steps 10] [--warmup 3] [--device auto] [--cifar-stem]
       [--variants base +RIM +IFM +RIM+IFM] [--rounds 1]
python benchmarks/pretrain_throughput.py --config fmnist_cpu_byol.yaml [KEY VALUE ...] [--steps 10]

`--batch 64` with the defaults gives the machine's calibration figure, its `base` row (see
pretrain/training/throughput.py): every timing in this project is quoted with it.

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

from pretrain.training.throughput import build_step
from rimifm.distributed import resolve_device

VARIANTS = {"base": (False, False), "+RIM": (True, False), "+IFM": (False, True), "+RIM+IFM": (True, True)}


def build(args, rim: bool, ifm: bool, device: torch.device):
    """One variant's model and optimizer; returns step(i), one full training step."""
    return build_step(args.method, args.backbone, args.image_size, args.batch, rim, ifm, device, args.cifar_stem)


def timed(args, step, device: torch.device, first: int) -> float:
    """Images/s of args.steps calls of step (seeds first, first + 1, ...)."""
    from pretrain.training.throughput import timed as timed_steps

    return timed_steps(step, args.batch, args.steps, device, first)


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


EXAMPLES = """examples:
  python benchmarks/pretrain_throughput.py --batch 64            # the calibration figure: its base row
  python benchmarks/pretrain_throughput.py --config fmnist_cpu_byol.yaml DATA.ROOT /usr/share/datasets/fashion-mnist
"""


def pipeline(args) -> None:
    """--config: the recipe's whole step on its real data, split into loader, views and model time."""
    from torch.utils.data import DataLoader

    from pretrain.config import load_config
    from pretrain.training.loop import PretrainRun
    from rimifm.distributed import Distributed
    from rimifm.seeding import STREAM_IFM, STREAM_RIM, step_seed

    cfg = load_config(args.config, args.opts)
    env = Distributed(cfg.TRAIN.DEVICE)
    run = PretrainRun(cfg, args.config, env)
    ds, device = run.dataset, run.device
    loader = DataLoader(ds, batch_size=run.per_rank, sampler=run.sampler, num_workers=cfg.DATA.NUM_WORKERS,
                        drop_last=True, collate_fn=getattr(ds, "collate_fn", None))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {"loader": 0.0, "views": 0.0, "model": 0.0}
    batches = iter(loader)
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        v1, v2, labels = next(batches)
        t1 = time.perf_counter()
        x1, x2 = ds.to_device(v1, device), ds.to_device(v2, device)
        if run.channels_last:
            x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
        sync()
        t2 = time.perf_counter()
        out = run.trained(x1, x2, rim_seed=step_seed(cfg.SEED, i, 0, STREAM_RIM),
                          ifm_seed=step_seed(cfg.SEED, i, 0, STREAM_IFM),
                          labels=labels if cfg.METHOD == "supervised" else None)
        run.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        run.optimizer.step()
        run.model.after_step(0.5)
        sync()
        t3 = time.perf_counter()
        if i >= args.warmup:
            for key, dt in (("loader", t1 - t0), ("views", t2 - t1), ("model", t3 - t2)):
                times[key] += dt
    env.close()
    total = sum(times.values())
    images = args.steps * run.global_batch
    print(f"{args.config}: {cfg.METHOD} {cfg.MODEL.BACKBONE}, DATA.VIEWS {cfg.DATA.VIEWS}, {cfg.DATA.IMAGE_SIZE}px, "
          f"batch {run.global_batch}, {args.steps} timed steps on {device} ({torch.get_num_threads()} threads, "
          f"{cfg.DATA.NUM_WORKERS} loader workers{', channels_last' if run.channels_last else ''})")
    print(f"  end to end {images / total:9.1f} images/s")
    what = {"loader": "source images and view parameters" + (" (a batch at once)" if cfg.DATA.VIEWS == "batch" else ""),
            "views": "crop, colour ops, normalise (batched)" if cfg.DATA.VIEWS == "batch" else "finishing the views",
            "model": "forward, loss, backward, optimizer, EMA"}
    for key, dt in times.items():
        print(f"  {key:<6} {100 * dt / total:5.1f}% of the step time  ({what[key]})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="time a recipe's whole step on its real data (loader, views, model shares) instead of "
                        "the variants on random tensors; KEY VALUE overrides may follow")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="with --config: overrides, e.g. DATA.ROOT DIR")
    p.add_argument("--method", default="byol", choices=["byol", "simsiam"])
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "resnet_tiny"])
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
    if args.config:
        pipeline(args)
        return
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
