"""Supervised reference on the synthetic benchmark: how far labels take the same backbone in a budget.

python benchmarks/synthetic_supervised.py [--data datasets/synthetic] [--backbone resnet18]
       [--cifar-stem] [--epochs 12] [--batch-size 128] [--lr 0.1] [--device auto] [--seed 0]

Trains the backbone and a linear layer with cross-entropy on the pretraining images, labelled with
the classes the generator drew them with (`synthetic.generator.pretrain_classes`), and prints after
each epoch the optimizer steps so far and the top-1 on the classification val split. Pretraining
never sees these labels. The figures say whether the classes are learnable by this backbone in a
given number of steps at all, which bounds what a self-supervised run of the same length can show,
and whether a change to the generator keeps them learnable.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.data.datasets import ImageFolderSource
from pretrain.data.views import eval_transform
from pretrain.method.models import FEATURE_DIMS, build_backbone
from rimifm.distributed import resolve_device
from rimifm.errors import UserError, run_cli
from synthetic.generator import pretrain_classes, read_meta

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load(source: ImageFolderSource, size: int) -> torch.Tensor:
    return torch.stack([eval_transform(source[i][0], size, MEAN, STD) for i in range(len(source))])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/synthetic", help="a synthetic set (tools/make_synthetic.py)")
    p.add_argument("--backbone", default="resnet18", choices=sorted(FEATURE_DIMS))
    p.add_argument("--cifar-stem", action="store_true", help="3x3 stride-1 stem, no max-pool")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak LR of the one-cycle schedule (SGD, momentum 0.9)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.epochs < 1 or a.batch_size < 2:
        raise UserError("--epochs must be >= 1 and --batch-size >= 2")
    root = Path(a.data)
    meta = read_meta(root)
    size = int(meta["sizes"]["image_size"])
    device = resolve_device(a.device)

    pre = ImageFolderSource(root / "pretrain")
    x = _load(pre, size)
    # file i of the sorted flat folder is pretraining image i
    y = torch.tensor(pretrain_classes(meta["seed"], len(pre)))
    val = ImageFolderSource(root / "classification" / "val", require_labels=True)
    # the val folders are sorted by name; the generator's class indices follow meta["classes"]
    to_generator_index = [meta["classes"].index(name) for name in val.classes]
    xv = _load(val, size).to(device)
    yv = torch.tensor([to_generator_index[label] for label in val.labels]).to(device)
    steps_per_epoch = len(y) // a.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {a.batch_size} is larger than the {len(y)} pretraining images")

    torch.manual_seed(a.seed)
    net = nn.Sequential(build_backbone(a.backbone, a.cifar_stem), nn.Linear(FEATURE_DIMS[a.backbone], len(meta["classes"])))
    net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.epochs * steps_per_epoch)
    print(f"supervised {a.backbone}{' (CIFAR stem)' if a.cifar_stem else ''} on {len(y)} labelled pretraining "
          f"images of {root}, {size}px, batch {a.batch_size}; val split {len(yv)} images; chance "
          f"{100 / len(meta['classes']):.1f}%", flush=True)
    t0, step = time.perf_counter(), 0
    for epoch in range(1, a.epochs + 1):
        net.train()
        order = torch.randperm(len(y))
        correct = 0
        for k in range(steps_per_epoch):
            idx = order[k * a.batch_size:(k + 1) * a.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            flip = torch.rand(len(idx), device=device) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            out = net(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            correct += int((out.argmax(1) == yb).sum())
        net.eval()
        with torch.no_grad():
            val_top1 = 100.0 * float((net(xv).argmax(1) == yv).float().mean())
        print(f"epoch {epoch:3d} | steps {step:5d} | train top-1 {100 * correct / (steps_per_epoch * a.batch_size):5.1f} "
              f"| val top-1 {val_top1:5.1f} | {time.perf_counter() - t0:6.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
