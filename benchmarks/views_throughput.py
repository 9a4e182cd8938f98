"""Views/s of the two view paths: DATA.VIEWS cpu (per sample, PIL) and DATA.VIEWS device (crop per sample, colour
ops batched on the device).

python benchmarks/views_throughput.py [--sizes 32 224] [--batch 64 16] [--iters 3] [--warmup 1] [--threads N]
       [--devices cpu cuda]

Synthetic images made in memory (a smooth random colour field plus noise; 32 px sources for 32 px views, 256 px
for 224 px), so decoding is excluded. Both paths make the BYOL pair of views per image with the same
parameters. Printed per size and device:
  per-sample   the whole view (crop, flip, colour ops, normalise) per sample in one process, as a loader worker does
  batched      the crop and flip per sample (uint8) plus the batched colour ops and normalisation on the device
  crop only / device ops only: the two halves of `batched`; with a GPU the first runs in the loader workers and
  the second on the GPU, so training is bound by the slower of the two, not by their sum.
The per-sample work runs on one torch thread, as in a DataLoader worker; the device ops on CPU use --threads
(default 1, so that both paths are compared per core).
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from pretrain.data.datasets import TwoViewDataset
from pretrain.data.device_views import DeviceViewDataset
from pretrain.data.views import ViewSpec

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def synthetic_images(n: int, side: int, seed: int = 0) -> list[tuple[Image.Image, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        a = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 10, (side, side, 3))
        out.append((Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), -1))
    return out


def _timed(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Seconds of the fastest of `iters` iterations (the least disturbed by other work on a shared machine)."""
    for i in range(warmup):
        fn(i)
    best = float("inf")
    for i in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(warmup + i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(size: int, batch: int, iters: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Views/s of each path for `batch` images per iteration; every iteration is a new epoch (new parameters)."""
    source = synthetic_images(batch, size if size < 96 else int(round(size / 0.875)))
    specs = (ViewSpec(size=size), ViewSpec(size=size, blur_prob=0.1, solarize_prob=0.2))
    cpu_ds = TwoViewDataset(source, specs, MEAN, STD, seed=0)
    dev_ds = DeviceViewDataset(source, specs, MEAN, STD, seed=0)
    crops: dict[int, tuple] = {}

    def per_sample(epoch: int) -> None:
        cpu_ds.set_epoch(epoch)
        default_collate([cpu_ds[i] for i in range(batch)])

    def crop_only(epoch: int) -> None:
        dev_ds.set_epoch(epoch)
        crops[epoch] = default_collate([dev_ds[i] for i in range(batch)])

    def device_only(epoch: int) -> None:
        v1, v2 = crops[epoch]
        dev_ds.to_device(v1, device)
        dev_ds.to_device(v2, device)

    views = 2 * batch  # per iteration
    cpu = torch.device("cpu")
    with _threads(1):  # as in a DataLoader worker
        result = {"per-sample": views / _timed(per_sample, iters, warmup, cpu),
                  "crop only": views / _timed(crop_only, iters, warmup, cpu)}
    crop_s = views / result["crop only"]
    result["device ops only"] = views / _timed(device_only, iters, warmup, device)
    result["batched"] = views / (crop_s + views / result["device ops only"])
    return result


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="view sides in pixels")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 16], help="images per iteration, one per size "
                   "(or one for all)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations (batches) per path")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the device ops on CPU (0: torch's default)")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    batches = args.batch * len(args.sizes) if len(args.batch) == 1 else args.batch
    if len(batches) != len(args.sizes):
        p.error("--batch takes one value, or one per --sizes value")
    print(f"views/s (2 views per image), best of {args.iters} iterations; per-sample and crop on 1 torch thread, "
          f"device ops on CPU on {torch.get_num_threads()}")
    for name in devices:
        device = torch.device(name)
        for size, batch in zip(args.sizes, batches):
            r = measure(size, batch, args.iters, args.warmup, device)
            speedup = r["batched"] / r["per-sample"]
            print(f"  {name:<4} {size:>3}px batch {batch:<4} per-sample {r['per-sample']:9.1f}   batched "
                  f"{r['batched']:9.1f} (x{speedup:.2f})   crop only {r['crop only']:9.1f}   device ops only "
                  f"{r['device ops only']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
