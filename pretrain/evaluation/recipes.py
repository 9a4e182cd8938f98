"""The offline linear protocol's recipes, each equal to a published one, and BN re-estimation.

`--protocol linear` trains a linear classifier on raw pooled features of augmented views (random
resized crop + flip, recomputed every epoch through the frozen backbone with its BN in eval mode) with
the optimizer, LR, batch, epochs and schedule of one cited recipe. `--protocol linear-cached` is this
project's fast probe (fixed centre-crop features, L2-normalised then standardised, cosine LR): handy to
compare runs with each other, but no published number was measured that way.

Which epoch is reported follows the recipe (`report`): MoCo's and SimSiam's main_lincls.py validate after
every epoch and report the best epoch's top-1 (`best_acc1 = max(acc1, best_acc1)`), which selects on the
validation set itself and reads a little higher; solo-learn reports the last epoch. `--report best|last`
overrides it; the record keeps which one ran (and the other figure), and the tables mark "best epoch".

solo-learn's main_linear.py at the cited commit multiplies the LR by batch / 256 (solo/args/linear.py, since
379df0c, 2022-06-10); when its README CIFAR numbers were made (fca55e3, 2021-07) its linear LR was not scaled.
With the recipe's batch 128 the scaled LR is half the unscaled one: 0.05, not 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from rimifm.errors import UserError
from rimifm.precise_bn import cumulative_bn_statistics


@dataclass(frozen=True)
class LinearRecipe:
    """One published linear-evaluation recipe; `lr` is per 256 images when `scale_lr`."""

    name: str
    source: str
    optimizer: str  # sgd | lars (solo-learn/apex LARC form, no clipping, nothing excluded)
    lr: float
    scale_lr: bool
    batch_size: int
    epochs: int
    weight_decay: float
    schedule: str  # "step" (x0.1 at `milestones`, per epoch) | "cosine-epoch"
    milestones: tuple[int, ...] = ()
    init_std: float | None = None  # classifier weight ~ N(0, std), bias 0; None = PyTorch's default
    report: str = "last"  # the epoch whose top-1 the source reports: "last" | "best" (on the validation set)


RECIPES = {
    "solo-learn": LinearRecipe(
        "solo-learn", "vturrisi/solo-learn @ 9187ea39c2c3f43c455ab06664d2b019a9802954 "
        "docs/source/tutorials/offline_linear_eval.rst (CIFAR-10) and main_linear.py",
        "sgd", 0.1, True, 128, 100, 0.0, "step", (60, 80)),
    "solo-learn-imagenet100": LinearRecipe(
        "solo-learn-imagenet100", "vturrisi/solo-learn @ 9187ea39c2c3f43c455ab06664d2b019a9802954 "
        "scripts/linear/imagenet-100/byol.yaml (and the other methods' files there) and main_linear.py",
        "sgd", 0.3, True, 256, 100, 0.0, "step", (60, 80)),
    "moco": LinearRecipe(
        "moco", "facebookresearch/moco @ 7397dfe146c7ca6bbb58e9c382498069178ba764 main_lincls.py and README",
        "sgd", 30.0, False, 256, 100, 0.0, "step", (60, 80), init_std=0.01, report="best"),
    "simsiam": LinearRecipe(
        "simsiam", "facebookresearch/simsiam @ a7bc1772896d0dad0806c51f0bb6f3b16d290468 main_lincls.py --lars "
        "and README", "lars", 0.1, True, 4096, 90, 0.0, "cosine-epoch", init_std=0.01, report="best"),
}
#: the recipe `--protocol linear` uses when none is named: solo-learn's for small images, MoCo's otherwise
DEFAULT_RECIPE = {"cifar10": "solo-learn", "cifar100": "solo-learn", "idx": "solo-learn", "synthetic": "solo-learn",
                  "imagefolder": "moco", "imagenet100": "solo-learn-imagenet100"}  # the last by --dataset-name


REPORTS = ("best", "last")


def resolve_recipe(args: dict) -> tuple[LinearRecipe, str]:
    """The recipe of a `linear` evaluation and its recorded name; explicit --epochs/--lr/--batch-size/
    --weight-decay replace the recipe's values and make the name '<recipe>-modified'. --report (which epoch is
    reported) replaces the recipe's too, without renaming it: the record keeps it beside the recipe."""
    name = args.get("recipe") or DEFAULT_RECIPE.get(args.get("dataset_name") or "", "") or \
        DEFAULT_RECIPE.get(args["dataset"], "moco")
    if name not in RECIPES:
        raise UserError(f"unknown --recipe {name!r}; choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    changes = {k: args[k] for k in ("epochs", "lr", "batch_size", "weight_decay") if args.get(k) is not None}
    if args.get("optimizer") is not None:
        changes["optimizer"] = args["optimizer"]
    changed = {k: v for k, v in changes.items() if getattr(recipe, k) != v}
    if args.get("report") is not None:
        if args["report"] not in REPORTS:
            raise UserError(f"unknown --report {args['report']!r}; choose best or last")
        recipe = replace(recipe, report=args["report"])
    if changed:
        return replace(recipe, **changed), f"{name}-modified"
    return recipe, name


def schedule_factor(recipe: LinearRecipe, epoch: int) -> float:
    """The LR multiplier of an epoch (both published linear schedules change the LR once per epoch)."""
    if recipe.schedule == "step":
        return 0.1 ** sum(epoch >= m for m in recipe.milestones)
    return 0.5 * (1.0 + math.cos(math.pi * epoch / recipe.epochs))


def make_head(dim: int, num_classes: int, recipe: LinearRecipe) -> nn.Linear:
    head = nn.Linear(dim, num_classes)
    if recipe.init_std is not None:
        nn.init.normal_(head.weight, std=recipe.init_std)
        nn.init.zeros_(head.bias)
    return head


@torch.no_grad()
def recompute_bn(backbone: nn.Module, dataset: Dataset, images: int, batch_size: int, workers: int,
                 device: torch.device) -> int:
    """Re-estimate the backbone's BN running statistics on `images` clean images of `dataset` spread evenly over
    it (an image folder lists its images class by class: its first ones would be a few classes), as precise BN
    does: an equal-weight average over the batches; returns how many images were used."""
    if images < 1:
        raise UserError(f"--recompute-bn-images must be >= 1 (got {images})")
    n = min(images, len(dataset))
    spread = [(i * len(dataset)) // n for i in range(n)]
    loader = DataLoader(Subset(dataset, spread), batch_size=batch_size, shuffle=False, num_workers=workers)
    was_training = backbone.training
    backbone.train()
    with cumulative_bn_statistics(backbone):
        for x, _ in loader:
            backbone(x.to(device, non_blocking=True))
    backbone.train(was_training)
    return n


__all__ = ["DEFAULT_RECIPE", "LinearRecipe", "RECIPES", "make_head", "recompute_bn", "resolve_recipe",
           "schedule_factor"]
