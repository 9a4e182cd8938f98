"""One classification evaluation of a frozen backbone, end to end: kNN or linear probe, then its record.json.

The backbone comes from one of our pretraining checkpoints (online branch, or the EMA target with
`target=True`), from any third-party ResNet checkpoint layout rimifm/resnet_weights.py recognises, from
a detectron2 weights pickle, or is randomly initialised (the baseline): see backbones.py. Protocols:
`knn` and `linear-cached` use features of the deterministic evaluation view, computed once per (weights,
split, image size, branch, BN re-estimation) and cached (features.py); `linear` is the published offline
protocol of a cited recipe (recipes.py): augmented views through the frozen backbone every epoch.
`recompute_bn` re-estimates the backbone's BN statistics on clean training images first (precise BN).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from pretrain.data.datasets import EvalDataset
from pretrain.evaluation.accuracy import accuracy_metrics
from pretrain.evaluation.backbones import BackboneSource, load_backbone, random_backbone, raw_pixels
from pretrain.evaluation.datasets import AugmentedDataset, EvalSplits, build_eval_splits
from pretrain.evaluation.features import cache_key, cached_features
from pretrain.evaluation.knn import extract_features, knn_evaluate
from pretrain.evaluation.linear import Standardiser, train_linear, train_linear_recipe
from pretrain.evaluation.recipes import recompute_bn, resolve_recipe
from pretrain.method.models import FEATURE_DIMS
from rimifm.config import config_hash
from rimifm.distributed import resolve_device
from rimifm.errors import UserError
from rimifm.records import code_version, new_run_id, write_record
from rimifm.schemas import KnnRecord, LinearRecord, record_to_dict

#: options that only say where outputs go; they do not enter the config hash
NON_HASHED = ("out", "cache_dir")
#: knn; linear: the published offline protocol (recipes.py); linear-cached: the fast probe on cached features
PROTOCOLS = ("knn", "linear", "linear-cached")
#: the cached probe's settings when none is given
CACHED_DEFAULTS = {"epochs": 100, "lr": 0.1, "optimizer": "sgd", "batch_size": 256, "weight_decay": 0.0}


def default_out_dir(args: dict) -> Path:
    """outputs/eval/<name>-<protocol>-<dataset>; <name> is the run folder for our `checkpoints/*.pth`.

    Our runs all name their checkpoint last.pth, so the run folder (and the epoch file name, when it is
    not last.pth) keeps evaluations of different runs apart.
    """
    if args.get("raw_pixels"):
        stem = "raw-pixels"
    elif args.get("random_init"):
        stem = f"random-init-s{args.get('seed', 0)}"
    else:
        ckpt = Path(str(args["checkpoint"]))
        stem = ckpt.stem
        if ckpt.parent.name == "checkpoints" and ckpt.parent.parent.name:
            stem = ckpt.parent.parent.name + ("" if ckpt.stem == "last" else f"-{ckpt.stem}")
    suffix = "-target" if args.get("target") else ""
    return Path("outputs") / "eval" / f"{stem}{suffix}-{args['protocol']}-{args['dataset']}"


def _check_options(args: dict) -> None:
    """Stop on options no protocol can run with, before any weights or data are read."""
    if args["protocol"] not in PROTOCOLS:
        raise UserError(f"unknown --protocol {args['protocol']!r}; choose one of {', '.join(PROTOCOLS)}")
    if args["protocol"] != "knn" and args.get("epochs") is not None and args["epochs"] < 1:
        raise UserError(f"--epochs must be >= 1 for the linear probe (got {args.get('epochs')})")
    if args["protocol"] == "linear":
        resolve_recipe(args)  # an unknown --recipe stops here
    elif args.get("report") is not None:
        raise UserError(f"--report chooses the reported epoch of --protocol linear; {args['protocol']} has no epochs "
                        "to choose from (drop --report)")
    if args.get("image_size") is not None and args["image_size"] < 8:
        raise UserError(f"--image-size must be >= 8 (got {args['image_size']})")


def _baseline_config(args: dict):
    """The pretraining config (--config) a baseline is built like, or None."""
    if not args.get("config"):
        return None
    from pretrain.config import load_config

    return load_config(args["config"])


def _backbone(args: dict) -> tuple[torch.nn.Module, BackboneSource]:
    """A baseline (`none --random-init`, `none --raw-pixels`) or the checkpoint's backbone."""
    ckpt_arg = args.get("checkpoint")
    baseline = "--raw-pixels" if args.get("raw_pixels") else "--random-init" if args.get("random_init") else None
    if baseline is None:
        if args.get("config"):
            raise UserError("--config describes the network of a baseline (--random-init, --raw-pixels); a checkpoint "
                            "names its own: drop --config")
        if ckpt_arg in (None, "", "none"):
            raise UserError("no CHECKPOINT given: pass a checkpoint file, or `none --random-init` for the baseline")
        return load_backbone(ckpt_arg, bool(args.get("target")), bool(args.get("unsafe_legacy_pickle")))
    if args.get("random_init") and args.get("raw_pixels"):
        raise UserError("--random-init and --raw-pixels are two baselines: pass one")
    if ckpt_arg not in (None, "", "none"):
        raise UserError(f"{baseline} evaluates a baseline, not a checkpoint: pass `none` as CHECKPOINT")
    if args.get("target"):
        raise UserError(f"--target selects the EMA branch of a checkpoint; it cannot go with {baseline}")
    cfg = _baseline_config(args)
    if args.get("raw_pixels"):
        net, src = raw_pixels(grey=args.get("dataset") == "idx")  # the MNIST family is grey, served as RGB
    else:
        name = args.get("backbone") or (cfg.MODEL.BACKBONE if cfg is not None else None)
        if not name:
            raise UserError("--random-init needs the network to build: --backbone NAME (one of "
                            f"{', '.join(FEATURE_DIMS)}) or --config PRETRAIN_CONFIG (its MODEL.BACKBONE and stem)")
        stem = bool(args.get("cifar_stem")) or (cfg is not None and not args.get("backbone") and cfg.MODEL.CIFAR_STEM)
        padding = cfg.MODEL.CIFAR_STEM_PADDING if cfg is not None else 2
        net, src = random_backbone(name, stem, int(args.get("seed", 0)), padding)
    if cfg is not None:  # evaluated at the config's image size and normalisation, as its pretrained backbones are
        src.image_size, src.mean, src.std = cfg.DATA.IMAGE_SIZE, tuple(cfg.DATA.MEAN), tuple(cfg.DATA.STD)
    return net, src


def _cached_probe(args: dict, splits: EvalSplits, train: tuple[torch.Tensor, torch.Tensor],
                  val: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[dict, dict]:
    """linear-cached: the probe on standardised cached train features; (metrics, settings)."""
    settings = {"name": "linear-cached", **{k: args[k] if args.get(k) is not None else v
                                             for k, v in CACHED_DEFAULTS.items()}}
    scale = Standardiser(train[0])
    head = train_linear(scale(train[0]), train[1], splits.num_classes, settings["epochs"], settings["lr"],
                        settings["optimizer"], settings["batch_size"], settings["weight_decay"],
                        int(args.get("seed", 0)), None, device)
    with torch.no_grad():
        metrics = accuracy_metrics(head(scale(val[0])), val[1], splits.num_classes)
    return metrics, settings


def _recipe_probe(args: dict, backbone: torch.nn.Module, src: BackboneSource, splits: EvalSplits, size: int,
                  device: torch.device, log: Callable[[str], None]) -> tuple[dict, dict, int]:
    """linear: the published protocol of the chosen recipe; (metrics, settings, validation images)."""
    recipe, name = resolve_recipe(args)
    seed, workers = int(args.get("seed", 0)), int(args.get("workers", 0))
    val_feats, val_labels = extract_features(backbone, EvalDataset(splits.val, size, src.mean, src.std),
                                             int(args.get("batch_size") or 256), workers, device, normalize=False)
    log(f"linear protocol, recipe {name}: {recipe.epochs} epochs of augmented views, {recipe.optimizer} "
        f"lr {recipe.lr}{' x batch/256' if recipe.scale_lr else ''}, batch {recipe.batch_size}, {recipe.schedule}")
    per_epoch: list[dict] = []

    @torch.no_grad()
    def validate(epoch: int, head: torch.nn.Module) -> None:  # as main_lincls.py: the validation set, every epoch
        per_epoch.append(accuracy_metrics(head(val_feats.to(head.weight.device)).cpu(), val_labels,
                                          splits.num_classes))

    head = train_linear_recipe(
        backbone, lambda epoch: AugmentedDataset(splits.train, size, src.mean, src.std, seed, epoch),
        val_feats.shape[1], splits.num_classes, recipe, seed, workers, device,
        after_epoch=validate if recipe.report == "best" else None)
    with torch.no_grad():
        metrics = accuracy_metrics(head(val_feats), val_labels, splits.num_classes)
    if recipe.report == "best":
        best = max(range(len(per_epoch)), key=lambda e: per_epoch[e]["top1"])  # the first of equal ones
        log(f"best epoch {best + 1} of {recipe.epochs}: top-1 {per_epoch[best]['top1']:.2f}% "
            f"(last epoch {metrics['top1']:.2f}%)")
        metrics = {**per_epoch[best], "top1_last": metrics["top1"], "best_epoch": float(best + 1)}
    settings = {"name": "linear", "recipe": name, "source": recipe.source, "epochs": recipe.epochs,
                "lr": recipe.lr, "lr_scaled_by_batch": recipe.scale_lr, "optimizer": recipe.optimizer,
                "batch_size": recipe.batch_size, "weight_decay": recipe.weight_decay, "schedule": recipe.schedule,
                "milestones": list(recipe.milestones), "report": recipe.report}
    return metrics, settings, len(val_labels)


def run_evaluation(args: dict, log: Callable[[str], None] = print) -> dict:
    """Run one kNN or linear evaluation described by the CLI options (a dict); returns the record
    it wrote to `<out>/record.json` (with "record_path" added)."""
    t0 = time.perf_counter()
    code_version()  # the code as it is now, not when the record is written
    _check_options(args)
    protocol = args["protocol"]
    device = resolve_device(args.get("device", "auto"))
    backbone, src = _backbone(args)
    backbone = backbone.to(device)
    size = int(args.get("image_size") or src.image_size or 32)
    splits = build_eval_splits(args["dataset"], args.get("root"), args.get("train_dir"), args.get("val_dir"))

    out = Path(args.get("out") or default_out_dir(args))
    cache_dir = Path(args.get("cache_dir") or out / "feature_cache")
    bs, workers = int(args.get("batch_size") or 256), int(args.get("workers", 0))
    target = bool(args.get("target"))
    weights_id, bn_info = src.weights_id, None
    if args.get("recompute_bn"):
        n = recompute_bn(backbone, EvalDataset(splits.train, size, src.mean, src.std),
                         int(args.get("recompute_bn_images") or 10000), bs, workers, device)
        weights_id, bn_info = f"{src.weights_id}-bn{n}", {"images": n}
        log(f"BN statistics re-estimated on {n} clean training images (--recompute-bn)")

    if protocol == "linear":
        metrics, settings, num_val = _recipe_probe(args, backbone, src, splits, size, device, log)
        num_train = len(splits.train)
        summary = f"linear top-1 {metrics['top1']:.2f}% (recipe {settings['recipe']}, {settings['epochs']} epochs)"
    else:
        feats = {}
        for split, source in (("train", splits.train), ("val", splits.val)):
            key = cache_key(weights_id, split, size, target, splits.identity, src.mean, src.std)
            feats[split] = cached_features(backbone, EvalDataset(source, size, src.mean, src.std),
                                           cache_dir / f"{split}-{key}.pt", bs, workers, device, log, split)
        (ftr, ltr), (fva, lva) = feats["train"], feats["val"]
        num_train, num_val = len(ltr), len(lva)
        if protocol == "knn":
            k, temp = int(args.get("k", 200)), float(args.get("temperature", 0.1))
            metrics = knn_evaluate(ftr, ltr, fva, lva, splits.num_classes, k, temp)
            settings = {"k": k, "temperature": temp}
            summary = f"kNN top-1 {metrics['top1']:.2f}% (k={k}, T={temp:g})"
        else:
            metrics, settings = _cached_probe(args, splits, feats["train"], feats["val"], device)
            summary = (f"linear-cached top-1 {metrics['top1']:.2f}% ({settings['epochs']} epochs, "
                       f"{settings['optimizer']}, fixed centre-crop features)")
    settings["image_size"] = size
    log(f"{summary} on {splits.name} val, {num_train} train / {num_val} val images")

    schema = KnnRecord if protocol == "knn" else LinearRecord
    record = schema(
        run_id=new_run_id(protocol), method=src.method, rim=src.rim, ifm=src.ifm, backbone=src.backbone,
        cifar_stem=src.cifar_stem, seed=src.seed, source=src.kind, layout=src.layout, target=target,
        dataset=args.get("dataset_name") or splits.name, num_classes=splits.num_classes, num_train=num_train,
        num_val=num_val,
        protocol=settings, metrics=metrics, checkpoint=src.checkpoint,
        checkpoint_sha256=None if src.kind == "random-init" else src.weights_id, recompute_bn=bn_info,
        config=dict(args), config_hash=config_hash(args, ignore=NON_HASHED),
        wall_time_s=round(time.perf_counter() - t0, 3), code_version=code_version(),
    )
    path = write_record(out / "record.json", record)
    log(f"record: {path}")
    return {**record_to_dict(record), "record_path": str(path)}


__all__ = ["NON_HASHED", "default_out_dir", "run_evaluation"]
