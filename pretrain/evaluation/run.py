"""Classification evaluation of a frozen backbone: weighted kNN and linear probe, with a feature cache.

The backbone comes from one of our pretraining checkpoints (online branch, or the EMA target with
`target=True`), from any third-party ResNet checkpoint layout rimifm/resnet_weights.py recognises, from
a detectron2 weights pickle, or is randomly initialised (the baseline). Features of the
deterministic evaluation view are computed once per (weights, split, image size, branch) and cached
as .pt files; the linear probe trains on them by default, or on augmented views recomputed each
epoch through the frozen backbone (`augment=True`, the standard, slower protocol).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
import yaml
from torch import nn
from torch.utils.data import Dataset

from pretrain.data.datasets import CIFARSource, EvalDataset, ImageFolderSource
from pretrain.data.views import ViewSpec, make_view, sample_rng, to_normalised_tensor
from pretrain.evaluation.knn import extract_features, knn_predict
from pretrain.method.models import FEATURE_DIMS, build_backbone
from pretrain.training.optim import LARS, param_groups, warmup_cosine
from rimifm.errors import UserError
from rimifm.io import atomic_torch_save, load_checkpoint
from rimifm.records import code_version, new_run_id, stable_hash, write_record

DATASETS = ("synthetic", "imagefolder", "cifar10", "cifar100")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: options that only say where outputs go; they do not enter the config hash
_NON_HASHED = ("out", "cache_dir")
CACHE_VERSION = 1


# ----------------------------------------------------------------------------- backbones


@dataclass
class BackboneSource:
    """Where the evaluated weights come from, for the record and the cache key."""

    kind: str  # "ours" | "external" | "random-init"
    backbone: str
    cifar_stem: bool
    weights_id: str  # sha256 of the checkpoint file, or "random-init-<backbone>[-cifar]-s<seed>"
    checkpoint: str | None = None
    layout: str = ""
    method: str = "external"
    rim: dict | None = None
    ifm: dict | None = None
    seed: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    extra: dict = field(default_factory=dict)


def _resnet(depth: int, cifar_stem: bool) -> nn.Module:
    """A torchvision ResNet-`depth` with fc removed (build_backbone for the depths it knows)."""
    name = f"resnet{depth}"
    if name in FEATURE_DIMS:
        return build_backbone(name, cifar_stem)
    if not hasattr(torchvision.models, name):
        raise UserError(f"unsupported ResNet depth {depth}")
    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def random_backbone(name: str = "resnet18", cifar_stem: bool = False, seed: int = 0) -> tuple[nn.Module, BackboneSource]:
    """A randomly initialised backbone (seeded), the baseline every pretrained one should beat."""
    if name not in FEATURE_DIMS:
        raise UserError(f"unknown --backbone {name!r}; choose one of {', '.join(FEATURE_DIMS)}")
    torch.manual_seed(seed)
    net = build_backbone(name, cifar_stem)
    wid = f"random-init-{name}{'-cifar' if cifar_stem else ''}-s{seed}"
    return net, BackboneSource("random-init", name, cifar_stem, wid, method="random-init", seed=seed)


def _our_source_info(ckpt: dict) -> dict:
    """method / RIM / IFM / SEED / image size / normalisation of the source run, from its config YAML."""
    info: dict[str, Any] = {"method": str(ckpt.get("method", "external"))}
    text = ckpt.get("config")
    if not isinstance(text, str):
        return info
    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return info
    if not isinstance(cfg, dict):
        return info
    info["method"] = str(cfg.get("METHOD", info["method"]))
    info["rim"] = cfg.get("RIM")
    info["ifm"] = cfg.get("IFM")
    info["seed"] = cfg.get("SEED")
    data = cfg.get("DATA") or {}
    if isinstance(data, dict):
        info["image_size"] = data.get("IMAGE_SIZE")
        if isinstance(data.get("MEAN"), list) and isinstance(data.get("STD"), list):
            info["mean"], info["std"] = tuple(data["MEAN"]), tuple(data["STD"])
    return info


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: Any) -> None:
    """Load backbone tensors checking every key (num_batches_tracked may be absent; there is no fc)."""
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()
        raise UserError(f"{path}: backbone tensors do not fit the ResNet: "
                        f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise UserError(f"{path}: backbone keys do not match the ResNet (missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}); is this a ResNet checkpoint?")


def load_backbone(path: str | os.PathLike, target: bool = False, unsafe_legacy_pickle: bool = False) -> tuple[nn.Module, BackboneSource]:
    """Backbone of a checkpoint: ours (online, or EMA target with `target`), any layout
    rimifm/resnet_weights.py detects, or a detectron2 .pkl; fc and heads are ignored."""
    from rimifm.resnet_weights import (
        OUR_FORMAT,
        convert_checkpoint,
        d2_to_torchvision,
        infer_depth,
        load_d2_pkl,
    )

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass an existing file (or `none --random-init`)")
    if path.suffix == ".pkl":
        if target:
            raise UserError(f"--target needs a pretraining checkpoint with an EMA branch; {path} is a "
                            "detectron2 weights pickle holding one backbone - drop --target")
        tv = d2_to_torchvision(load_d2_pkl(path)["model"])
        depth, layout, ckpt = infer_depth(tv), "detectron2 pickle", {}
    else:
        ckpt = load_checkpoint(path, unsafe_legacy_pickle)
        try:
            conv = convert_checkpoint(ckpt, target=target)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
        tv = d2_to_torchvision(conv.model)
        depth, layout = conv.depth, conv.layout
    conv1 = tv["conv1.weight"]
    cifar_stem = tuple(conv1.shape[-2:]) == (3, 3)
    ours = isinstance(ckpt, dict) and ckpt.get("format") == OUR_FORMAT
    if ours and bool(ckpt.get("cifar_stem", cifar_stem)) != cifar_stem:
        raise UserError(f"{path}: cifar_stem={ckpt.get('cifar_stem')} but conv1 is {tuple(conv1.shape)}")
    net = _resnet(depth, cifar_stem)
    _load_strict(net, tv, path)
    src = BackboneSource("ours" if ours else "external", f"resnet{depth}", cifar_stem, file_sha256(path),
                         checkpoint=str(path), layout=layout)
    if ours:
        info = _our_source_info(ckpt)
        src.method, src.rim, src.ifm, src.seed = info["method"], info.get("rim"), info.get("ifm"), info.get("seed")
        src.image_size = info.get("image_size")
        src.mean, src.std = info.get("mean", IMAGENET_MEAN), info.get("std", IMAGENET_STD)
    return net, src


# ----------------------------------------------------------------------------- datasets


@dataclass
class EvalSplits:
    """Labelled train and val sources of one classification dataset."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    identity: str  # folder paths, for the cache key


def _folder(path: Path, option: str) -> ImageFolderSource:
    if not path.is_dir():
        raise UserError(f"dataset folder {path} does not exist; check {option}")
    return ImageFolderSource(path, require_labels=True)


def build_eval_splits(dataset: str, root: str | os.PathLike | None, train_dir: str | None = None,
                      val_dir: str | None = None) -> EvalSplits:
    """synthetic: ROOT/classification/{train,val}; imagefolder: --train-dir/--val-dir (default
    ROOT/train, ROOT/val); cifar10/100: the python batches under ROOT (train / test)."""
    if dataset not in DATASETS:
        raise UserError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "imagefolder":
        if not (train_dir and val_dir) and not root:
            raise UserError("--dataset imagefolder needs --root DIR (with train/ and val/) or --train-dir and --val-dir")
        tr = Path(train_dir) if train_dir else Path(root) / "train"
        va = Path(val_dir) if val_dir else Path(root) / "val"
        train = _folder(tr, "--train-dir" if train_dir else "--root (expected ROOT/train)")
        val = _folder(va, "--val-dir" if val_dir else "--root (expected ROOT/val)")
        if train.classes != val.classes:
            raise UserError(f"train folder {tr} and val folder {va} have different class folders "
                            f"({train.classes[:5]} vs {val.classes[:5]}); they must match")
        return EvalSplits(dataset, train, val, len(train.classes), f"{tr.resolve()}|{va.resolve()}")
    if not root:
        raise UserError(f"--dataset {dataset} needs --root DIR")
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"dataset root {base} does not exist; check --root")
    if dataset == "synthetic":
        tr, va = base / "classification" / "train", base / "classification" / "val"
        hint = (f"--root (expected {base}/classification/{{train,val}}; create the set with "
                f"`python tools/make_synthetic.py --out {base}`)")
        train, val = _folder(tr, hint), _folder(va, hint)
        return EvalSplits(dataset, train, val, len(train.classes), f"{tr.resolve()}|{va.resolve()}")
    train = CIFARSource(base, dataset, train=True)
    val = CIFARSource(base, dataset, train=False)
    n = 100 if dataset == "cifar100" else 10
    return EvalSplits(dataset, train, val, n, f"{dataset}:{base.resolve()}")


class AugmentedDataset(Dataset):
    """Linear-probe training views: random resized crop + horizontal flip, RNG from (seed, epoch, index)."""

    def __init__(self, source: Dataset, size: int, mean, std, seed: int = 0, epoch: int = 0):
        self.source, self.mean, self.std, self.seed, self.epoch = source, tuple(mean), tuple(std), seed, epoch
        self.spec = ViewSpec(size=size, crop_min_scale=0.08, flip_prob=0.5, jitter_prob=0.0, gray_prob=0.0,
                             blur_prob=0.0, solarize_prob=0.0)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.source[index]
        view = make_view(img, self.spec, sample_rng(self.seed, self.epoch, index))
        return to_normalised_tensor(view, self.mean, self.std), label


# ----------------------------------------------------------------------------- feature cache


def cache_key(weights_id: str, split: str, image_size: int, target: bool, dataset_identity: str,
              mean, std) -> str:
    """16-hex key of one cached feature set."""
    blob = json.dumps({"v": CACHE_VERSION, "weights": weights_id, "split": split, "size": image_size,
                       "target": target, "data": dataset_identity, "mean": list(mean), "std": list(std)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_features(backbone: nn.Module, dataset: Dataset, cache_file: Path, batch_size: int = 256,
                    num_workers: int = 0, device: torch.device | str = "cpu",
                    log: Callable[[str], None] = print, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features and labels, read from `cache_file` if present, else computed and saved."""
    if cache_file.is_file():
        try:
            data = torch.load(cache_file, map_location="cpu", weights_only=True)
            if (isinstance(data, dict) and data.get("version") == CACHE_VERSION
                    and data["features"].shape[0] == len(dataset)):
                log(f"features: {name} loaded from cache {cache_file}")
                return data["features"], data["labels"]
        except Exception:  # a torn or foreign file: recompute and overwrite
            pass
        log(f"features: {name} cache {cache_file} unusable; recomputing")
    t0 = time.perf_counter()
    feats, labels = extract_features(backbone, dataset, batch_size, num_workers, device)
    atomic_torch_save({"version": CACHE_VERSION, "features": feats, "labels": labels}, cache_file)
    log(f"features: {name} computed ({len(dataset)} images, {time.perf_counter() - t0:.1f}s) -> {cache_file}")
    return feats, labels


# ----------------------------------------------------------------------------- metrics and protocols


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k highest scores."""
    k = min(k, scores.shape[1])
    hit = (scores.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)
    return 100.0 * hit.float().mean().item()


def accuracy_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float | None]:
    """{"top1", "top5"}; top5 is None with fewer than 5 classes."""
    return {"top1": topk_accuracy(scores, labels, 1),
            "top5": topk_accuracy(scores, labels, 5) if num_classes >= 5 else None}


def knn_evaluate(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                 val_labels: torch.Tensor, num_classes: int, k: int = 200,
                 temperature: float = 0.1) -> dict[str, float | None]:
    """Weighted kNN (cosine, exp(sim / T) votes) top-1/top-5 on L2-normalised features."""
    if k < 1:
        raise UserError(f"--k must be >= 1 (got {k})")
    if temperature <= 0:
        raise UserError(f"--temperature must be > 0 (got {temperature})")
    scores = knn_predict(train_feats, train_labels, val_feats, num_classes, k, temperature)
    return accuracy_metrics(scores, val_labels, num_classes)


def _make_optimizer(head: nn.Linear, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(head, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name != "sgd":
        raise UserError(f"unknown --optimizer {name!r}; choose sgd or lars")
    for g in groups:
        g.pop("lars_exclude")
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)


def train_linear(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int, epochs: int = 100,
                 lr: float = 0.1, optimizer: str = "sgd", batch_size: int = 256, weight_decay: float = 0.0,
                 seed: int = 0, epoch_features: Callable[[int], torch.Tensor] | None = None,
                 device: torch.device | str = "cpu") -> nn.Linear:
    """Train a linear classifier (no BatchNorm) with momentum 0.9 and a cosine LR schedule per step.

    `epoch_features(epoch)` (augment mode) returns that epoch's train features, row-aligned with
    `train_labels`; otherwise the fixed `train_feats` are used every epoch.
    """
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1 for the linear probe (got {epochs})")
    if batch_size < 1 or lr <= 0:
        raise UserError("--batch-size must be >= 1 and --lr > 0")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(train_feats.shape[1], num_classes).to(device)
    opt = _make_optimizer(head, optimizer, lr, weight_decay)
    schedule = warmup_cosine(0.0)
    n = train_feats.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    labels = train_labels.to(device)
    step = 0
    for epoch in range(epochs):
        feats = (epoch_features(epoch) if epoch_features is not None else train_feats).to(device)
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * schedule(step / total)
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.cpu()


class Standardiser:
    """Per-dimension (x - mean) / std with train statistics: a fixed input scaling, not a trained BN."""

    def __init__(self, feats: torch.Tensor):
        self.mean = feats.mean(0, keepdim=True)
        self.std = feats.std(0, keepdim=True).clamp_min(1e-6) if feats.shape[0] > 1 else torch.ones_like(self.mean)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std


# ----------------------------------------------------------------------------- the whole evaluation


def config_hash(args: dict) -> str:
    """sha256 (16 hex) of the sorted JSON of the options, leaving out where outputs go."""
    return stable_hash({k: v for k, v in args.items() if k not in _NON_HASHED})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown --device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


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


def run_evaluation(args: dict, log: Callable[[str], None] = print) -> dict:
    """Run one kNN or linear evaluation described by the CLI options (a dict); returns the record
    it wrote to `<out>/record.json` (with "record_path" added)."""
    t0 = time.perf_counter()
    protocol = args["protocol"]
    if protocol not in ("knn", "linear"):
        raise UserError(f"unknown --protocol {protocol!r}; choose knn or linear")
    if protocol == "linear" and args.get("epochs", 1) < 1:
        raise UserError(f"--epochs must be >= 1 for the linear probe (got {args.get('epochs')})")
    if args.get("image_size") is not None and args["image_size"] < 8:
        raise UserError(f"--image-size must be >= 8 (got {args['image_size']})")
    device = resolve_device(args.get("device", "auto"))
    ckpt_arg = args.get("checkpoint")
    if args.get("random_init"):
        if ckpt_arg not in (None, "", "none"):
            raise UserError("--random-init evaluates a randomly initialised backbone: pass `none` as CHECKPOINT")
        if args.get("target"):
            raise UserError("--target selects the EMA branch of a checkpoint; it cannot go with --random-init")
        backbone, src = random_backbone(args.get("backbone", "resnet18"), bool(args.get("cifar_stem")),
                                        int(args.get("seed", 0)))
    else:
        if ckpt_arg in (None, "", "none"):
            raise UserError("no CHECKPOINT given: pass a checkpoint file, or `none --random-init` for the baseline")
        backbone, src = load_backbone(ckpt_arg, bool(args.get("target")), bool(args.get("unsafe_legacy_pickle")))
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
    nc = splits.num_classes

    if protocol == "knn":
        k, temp = int(args.get("k", 200)), float(args.get("temperature", 0.1))
        metrics = knn_evaluate(ftr, ltr, fva, lva, nc, k, temp)
        settings = {"k": k, "temperature": temp}
        summary = f"kNN top-1 {metrics['top1']:.2f}% (k={k}, T={temp:g})"
    else:
        scale = Standardiser(ftr)
        epoch_features = None
        if args.get("augment"):
            seed = int(args.get("seed", 0))

            def epoch_features(epoch: int) -> torch.Tensor:
                ds = AugmentedDataset(splits.train, size, src.mean, src.std, seed, epoch)
                f, _ = extract_features(backbone, ds, bs, workers, device)
                return scale(f)
        settings = {k: args.get(k) for k in ("epochs", "lr", "optimizer", "batch_size", "weight_decay", "augment")}
        head = train_linear(scale(ftr), ltr, nc, int(args.get("epochs", 100)), float(args.get("lr", 0.1)),
                            args.get("optimizer", "sgd"), bs, float(args.get("weight_decay", 0.0)),
                            int(args.get("seed", 0)), epoch_features, device)
        with torch.no_grad():
            metrics = accuracy_metrics(head(scale(fva)), lva, nc)
        summary = (f"linear top-1 {metrics['top1']:.2f}% ({settings['epochs']} epochs, {settings['optimizer']}, "
                   f"{'augmented' if settings['augment'] else 'precomputed features'})")
    settings["image_size"] = size
    log(f"{summary} on {splits.name} val, {len(ltr)} train / {len(lva)} val images")

    record = {
        "run_id": new_run_id(protocol), "kind": protocol,
        "method": src.method, "rim": src.rim, "ifm": src.ifm, "backbone": src.backbone,
        "cifar_stem": src.cifar_stem, "seed": src.seed, "source": src.kind, "layout": src.layout,
        "target": target, "dataset": splits.name, "num_classes": nc,
        "num_train": len(ltr), "num_val": len(lva), "protocol": settings, "metrics": metrics,
        "checkpoint": src.checkpoint, "checkpoint_sha256": None if src.kind == "random-init" else src.weights_id,
        "config": dict(args), "config_hash": config_hash(args),
        "wall_time_s": round(time.perf_counter() - t0, 3), "code_version": code_version(),
    }
    path = write_record(out / "record.json", record)
    log(f"record: {path}")
    return {**record, "record_path": str(path)}


__all__ = ["load_backbone", "random_backbone", "build_eval_splits", "cached_features", "knn_evaluate",
           "train_linear", "topk_accuracy", "run_evaluation", "config_hash"]
