"""One classification evaluation of a frozen backbone, end to end: kNN or linear probe, then its record.json.

The backbone comes from one of our pretraining checkpoints (online branch, or the EMA target with
`target=True`), from any third-party ResNet checkpoint layout rimifm/resnet_weights.py recognises, from
a detectron2 weights pickle, or is randomly initialised (the baseline): see backbones.py. Features of
the deterministic evaluation view are computed once per (weights, split, image size, branch) and cached
(features.py); the linear probe (linear.py) trains on them by default, or on augmented views
recomputed each epoch through the frozen backbone (`augment=True`, the standard, slower protocol).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from pretrain.data.datasets import EvalDataset
from pretrain.evaluation.accuracy import accuracy_metrics
from pretrain.evaluation.backbones import BackboneSource, load_backbone, random_backbone
from pretrain.evaluation.datasets import AugmentedDataset, EvalSplits, build_eval_splits
from pretrain.evaluation.features import cache_key, cached_features
from pretrain.evaluation.knn import extract_features, knn_evaluate
from pretrain.evaluation.linear import Standardiser, train_linear
from rimifm.config import config_hash
from rimifm.distributed import resolve_device
from rimifm.errors import UserError
from rimifm.records import code_version, new_run_id, write_record
from rimifm.schemas import KnnRecord, LinearRecord, record_to_dict

#: options that only say where outputs go; they do not enter the config hash
NON_HASHED = ("out", "cache_dir")


def default_out_dir(args: dict) -> Path:
    """outputs/eval/<name>-<protocol>-<dataset>; <name> is the run folder for our `checkpoints/*.pth`.

    Our runs all name their checkpoint last.pth, so the run folder (and the epoch file name, when it is
    not last.pth) keeps evaluations of different runs apart.
    """
    if args.get("random_init"):
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
    if args["protocol"] not in ("knn", "linear"):
        raise UserError(f"unknown --protocol {args['protocol']!r}; choose knn or linear")
    if args["protocol"] == "linear" and args.get("epochs", 1) < 1:
        raise UserError(f"--epochs must be >= 1 for the linear probe (got {args.get('epochs')})")
    if args.get("image_size") is not None and args["image_size"] < 8:
        raise UserError(f"--image-size must be >= 8 (got {args['image_size']})")


def _backbone(args: dict) -> tuple[torch.nn.Module, BackboneSource]:
    """The random-init baseline (`none --random-init`) or the checkpoint's backbone."""
    ckpt_arg = args.get("checkpoint")
    if args.get("random_init"):
        if ckpt_arg not in (None, "", "none"):
            raise UserError("--random-init evaluates a randomly initialised backbone: pass `none` as CHECKPOINT")
        if args.get("target"):
            raise UserError("--target selects the EMA branch of a checkpoint; it cannot go with --random-init")
        return random_backbone(args.get("backbone", "resnet18"), bool(args.get("cifar_stem")), int(args.get("seed", 0)))
    if ckpt_arg in (None, "", "none"):
        raise UserError("no CHECKPOINT given: pass a checkpoint file, or `none --random-init` for the baseline")
    return load_backbone(ckpt_arg, bool(args.get("target")), bool(args.get("unsafe_legacy_pickle")))


def _linear_probe(args: dict, backbone: torch.nn.Module, src: BackboneSource, splits: EvalSplits, size: int,
                  train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                  device: torch.device) -> tuple[dict, dict]:
    """Train the probe on standardised train features (or augmented views); (metrics, settings)."""
    settings = {"epochs": int(args.get("epochs", 100)), "lr": float(args.get("lr", 0.1)),
                "optimizer": args.get("optimizer", "sgd"), "batch_size": int(args.get("batch_size", 256)),
                "weight_decay": float(args.get("weight_decay", 0.0)), "augment": bool(args.get("augment"))}
    seed, workers = int(args.get("seed", 0)), int(args.get("workers", 0))
    scale = Standardiser(train[0])
    epoch_features = None
    if settings["augment"]:

        def epoch_features(epoch: int) -> torch.Tensor:
            ds = AugmentedDataset(splits.train, size, src.mean, src.std, seed, epoch)
            f, _ = extract_features(backbone, ds, settings["batch_size"], workers, device)
            return scale(f)
    head = train_linear(scale(train[0]), train[1], splits.num_classes, settings["epochs"], settings["lr"],
                        settings["optimizer"], settings["batch_size"], settings["weight_decay"], seed,
                        epoch_features, device)
    with torch.no_grad():
        metrics = accuracy_metrics(head(scale(val[0])), val[1], splits.num_classes)
    return metrics, settings


def run_evaluation(args: dict, log: Callable[[str], None] = print) -> dict:
    """Run one kNN or linear evaluation described by the CLI options (a dict); returns the record
    it wrote to `<out>/record.json` (with "record_path" added)."""
    t0 = time.perf_counter()
    _check_options(args)
    protocol = args["protocol"]
    device = resolve_device(args.get("device", "auto"))
    backbone, src = _backbone(args)
    backbone = backbone.to(device)
    size = int(args.get("image_size") or src.image_size or 32)
    splits = build_eval_splits(args["dataset"], args.get("root"), args.get("train_dir"), args.get("val_dir"))

    out = Path(args.get("out") or default_out_dir(args))
    cache_dir = Path(args.get("cache_dir") or out / "feature_cache")
    bs, workers = int(args.get("batch_size", 256)), int(args.get("workers", 0))
    target = bool(args.get("target"))
    feats = {}
    for split, source in (("train", splits.train), ("val", splits.val)):
        key = cache_key(src.weights_id, split, size, target, splits.identity, src.mean, src.std)
        feats[split] = cached_features(backbone, EvalDataset(source, size, src.mean, src.std),
                                       cache_dir / f"{split}-{key}.pt", bs, workers, device, log, split)
    (ftr, ltr), (fva, lva) = feats["train"], feats["val"]

    if protocol == "knn":
        k, temp = int(args.get("k", 200)), float(args.get("temperature", 0.1))
        metrics = knn_evaluate(ftr, ltr, fva, lva, splits.num_classes, k, temp)
        settings: dict = {"k": k, "temperature": temp}
        summary = f"kNN top-1 {metrics['top1']:.2f}% (k={k}, T={temp:g})"
    else:
        metrics, settings = _linear_probe(args, backbone, src, splits, size, feats["train"], feats["val"], device)
        summary = (f"linear top-1 {metrics['top1']:.2f}% ({settings['epochs']} epochs, {settings['optimizer']}, "
                   f"{'augmented' if settings['augment'] else 'precomputed features'})")
    settings["image_size"] = size
    log(f"{summary} on {splits.name} val, {len(ltr)} train / {len(lva)} val images")

    schema = KnnRecord if protocol == "knn" else LinearRecord
    record = schema(
        run_id=new_run_id(protocol), method=src.method, rim=src.rim, ifm=src.ifm, backbone=src.backbone,
        cifar_stem=src.cifar_stem, seed=src.seed, source=src.kind, layout=src.layout, target=target,
        dataset=splits.name, num_classes=splits.num_classes, num_train=len(ltr), num_val=len(lva),
        protocol=settings, metrics=metrics, checkpoint=src.checkpoint,
        checkpoint_sha256=None if src.kind == "random-init" else src.weights_id,
        config=dict(args), config_hash=config_hash(args, ignore=NON_HASHED),
        wall_time_s=round(time.perf_counter() - t0, 3), code_version=code_version(),
    )
    path = write_record(out / "record.json", record)
    log(f"record: {path}")
    return {**record_to_dict(record), "record_path": str(path)}


__all__ = ["NON_HASHED", "default_out_dir", "run_evaluation"]
