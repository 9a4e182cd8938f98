"""Pretraining configuration: defaults, YAML files with `_BASE_`, and `KEY VALUE` overrides.

Every knob of the method (see docs/method.md) is a key here, so ablation tables can vary it.
Unknown keys and values of the wrong type are user errors that name the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from fvcore.common.config import CfgNode as _FvCfgNode

from rimifm.config import (
    config_hash,
    config_to_dict,
    get_dotted,
    key_error_text,
    merge_overrides,
    parse_value,
)
from rimifm.errors import UserError
from rimifm.resnets import ARCHS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode (yacs with `_BASE_`), kept as a named type for our defaults."""


def get_default_config() -> CfgNode:
    """Return a fresh copy of every pretraining key with its default value."""
    c = CfgNode()
    c.METHOD = "byol"  # byol | simsiam | supervised (the labelled baseline: backbone + linear classifier, cross-entropy)
    c.SEED = 0
    c.OUTPUT_DIR = ""  # empty: outputs/pretrain/<config name>[-rim][-ifm]-s<seed>

    c.MODEL = CfgNode()
    c.MODEL.BACKBONE = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet_tiny (rimifm/resnets.py)
    c.MODEL.CIFAR_STEM = False  # 3x3 stride-1 conv1 and no max-pool (for 32x32 inputs)
    c.MODEL.CIFAR_STEM_PADDING = 2  # conv1 padding of the CIFAR stem (solo-learn: 2; many other CIFAR ResNets: 1)
    c.MODEL.ZERO_INIT_RESIDUAL = False
    c.MODEL.PROJ_HIDDEN_DIM = 4096
    c.MODEL.PROJ_OUTPUT_DIM = 256
    c.MODEL.PRED_HIDDEN_DIM = 4096
    c.MODEL.PROJ_LAYERS = 0  # linear layers in the projector; 0 = method default (BYOL 2, SimSiam 3)
    c.MODEL.SYNC_BN = False  # convert all BatchNorm to SyncBatchNorm under DDP

    c.BYOL = CfgNode()
    c.BYOL.BASE_MOMENTUM = 0.99  # EMA momentum at step 0, cosine-increased to FINAL_MOMENTUM
    c.BYOL.FINAL_MOMENTUM = 1.0
    c.BYOL.LOSS_SCALE = "sum"  # sum | mean of the two directions' losses (pretrain/method/losses.py LOSS_SCALES)

    c.RIM = CfgNode()
    c.RIM.ENABLED = False
    c.RIM.RATIO = 0.3  # fraction of grid cells masked, exact per sample
    c.RIM.PATCH_SIZE = 0  # cell side in pixels; 0 = image side / 8
    c.RIM.FILL = "zero"  # zero | noise | blur
    c.RIM.PROB = 0.5  # probability that a sample is masked
    c.RIM.BRANCH = "online"  # online | both

    c.IFM = CfgNode()
    c.IFM.ENABLED = False
    c.IFM.ALPHA = 1.0  # lambda ~ Beta(alpha, alpha), then max(lambda, 1 - lambda)
    c.IFM.LEVEL = "backbone"  # backbone | projector
    c.IFM.TARGET = "feature"  # feature | output | loss
    c.IFM.PARTNER = "permute"  # permute | reverse
    c.IFM.WEIGHT = 1.0
    c.IFM.START_EPOCH = 0

    c.DATA = CfgNode()
    c.DATA.DATASET = "synthetic"  # synthetic | imagefolder | cifar10 | cifar100 | idx (MNIST family)
    # the dataset as reports title it (e.g. Fashion-MNIST); for an imagefolder run also its name in the records and
    # tables (e.g. imagenet100, so that the published rows of that key in results/baselines.csv sit beside it)
    c.DATA.NAME = ""
    c.DATA.ROOT = "datasets/synthetic"
    c.DATA.LIMIT = 0  # pretrain on the first N training images only (0 = all; the kNN bank keeps them all)
    c.DATA.KNN_TRAIN = ""  # imagefolder only: labelled folder used as the kNN memory bank
    c.DATA.KNN_VAL = ""  # imagefolder only: labelled folder whose top-1 is reported
    c.DATA.IMAGE_SIZE = 32
    c.DATA.BATCH_SIZE = 256  # global batch (all processes together)
    c.DATA.NUM_WORKERS = 2
    # cpu: whole views in the loader workers | device: colour ops batched on TRAIN.DEVICE | batch: whole views
    # batched on TRAIN.DEVICE (crop included; for small images of one size, pretrain/data/batch_views.py)
    c.DATA.VIEWS = "cpu"
    c.DATA.MEAN = [0.485, 0.456, 0.406]
    c.DATA.STD = [0.229, 0.224, 0.225]

    c.AUG = CfgNode()
    c.AUG.CROP_MIN_SCALE = 0.08
    c.AUG.FLIP_PROB = 0.5
    c.AUG.JITTER_PROB = 0.8
    c.AUG.BRIGHTNESS = 0.4
    c.AUG.CONTRAST = 0.4
    c.AUG.SATURATION = 0.2
    c.AUG.HUE = 0.1
    c.AUG.GRAY_PROB = 0.2
    c.AUG.BLUR_PROB = [1.0, 0.1]  # view 1, view 2 (BYOL's asymmetric pair)
    c.AUG.SOLARIZE_PROB = [0.0, 0.2]
    c.AUG.INTERPOLATION = "bilinear"  # resize of the random-resized crop: bilinear | bicubic

    c.OPTIM = CfgNode()
    c.OPTIM.NAME = "sgd"  # sgd | lars | adamw (betas OPTIM.BETAS; OPTIM.MOMENTUM unused)
    c.OPTIM.BASE_LR = 0.05  # LR = BASE_LR * BATCH_SIZE / REFERENCE_BATCH_SIZE
    c.OPTIM.REFERENCE_BATCH_SIZE = 256
    c.OPTIM.MOMENTUM = 0.9
    c.OPTIM.BETAS = [0.9, 0.999]  # adamw only
    c.OPTIM.WEIGHT_DECAY = 1e-4
    c.OPTIM.LARS_ETA = 0.001
    c.OPTIM.LARS_FORM = "byol"  # byol: eta|w|/|g + wd w| | solo-learn: eta|w|/(|g| + wd|w| + eps) (docs/method.md)
    c.OPTIM.LARS_CLIP_LR = False  # solo-learn form: trust ratio clipped to min(ratio / lr, 1)
    c.OPTIM.LARS_EXCLUDE_BIAS_N_NORM = True  # biases and norm parameters get no trust ratio and no weight decay
    c.OPTIM.EXCLUDE_BIAS_N_NORM_WD = True  # biases and norm parameters get no weight decay (any optimizer)
    c.OPTIM.WARMUP_EPOCHS = 0.0
    c.OPTIM.WARMUP_START_FACTOR = 0.0
    c.OPTIM.FINAL_LR_FACTOR = 0.0  # cosine ends at BASE_LR * this
    c.OPTIM.PREDICTOR_FIXED_LR = False  # SimSiam: predictor keeps the initial LR
    c.OPTIM.SCHEDULE_INTERVAL = "step"  # step: LR set every step | epoch: once per epoch (SimSiam's main_simsiam.py)

    c.ONLINE_LINEAR = CfgNode()  # solo-learn's online linear protocol (docs/evaluation.md)
    c.ONLINE_LINEAR.ENABLED = False  # a linear classifier on detached backbone features, trained during pretraining
    c.ONLINE_LINEAR.LR = 0.1  # its base LR, scaled like OPTIM.BASE_LR and on the same schedule; no weight decay
    # with RIM, what the classifier sees: masked (the online branch's own features, on masked views; validated with
    # BN statistics gathered on them) | clean (an extra gradient-free pass of the online backbone on the unmasked
    # views, and BN re-estimated on BN_IMAGES clean training images before each online validation: the published
    # protocol's input, for +23% a step: BYOL R18, 32 px, batch 64 on a 2-core CPU). Without RIM both are the published protocol.
    c.ONLINE_LINEAR.VIEWS = "masked"
    c.ONLINE_LINEAR.BN_IMAGES = 4096

    c.TRAIN = CfgNode()
    c.TRAIN.EPOCHS = 10
    c.TRAIN.PRECISION = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    c.TRAIN.CHANNELS_LAST = True  # GPU only, unless CHANNELS_LAST_CPU
    c.TRAIN.CHANNELS_LAST_CPU = False  # channels_last on a CPU too (resnet_tiny: about 20% faster; R18 not measured)
    c.TRAIN.DEVICE = "auto"  # auto | cpu | cuda
    c.TRAIN.LOG_PERIOD = 10  # steps between metrics.jsonl lines
    c.TRAIN.CHECKPOINT_PERIOD = 10  # epochs between numbered checkpoints (last.pth every epoch, and the final one)
    c.TRAIN.CHECKPOINT_PERIOD_STEPS = 0  # also refresh last.pth every N steps (0 = off)
    c.TRAIN.KNN_PERIOD = 1  # epochs between online kNN evaluations (0 = off)
    c.TRAIN.KNN_K = 200
    c.TRAIN.KNN_T = 0.1
    c.TRAIN.KNN_BANK = 0  # online kNN: labelled images in the memory bank (a fixed random subset; 0 = all)
    c.TRAIN.KNN_QUERIES = 0  # online kNN: validation images scored (a fixed random subset; 0 = all)
    c.TRAIN.KNN_PERIOD_STEPS = 0  # also run the online kNN every N steps (0 = only every KNN_PERIOD epochs)
    # > 0: when training ends, re-estimate the BN statistics of the backbone(s) on this many clean training images
    # (the evaluation view, no labels), so that they describe the images a frozen backbone is fed, not augmented
    # or masked views (the MoCo detection protocol's precise BN, here at the end of pretraining)
    c.TRAIN.PRECISE_BN_IMAGES = 0
    c.TRAIN.TIME_BUDGET_S = 0.0  # > 0: stop after this much training time; LR and EMA schedules follow time (not exact on resume)
    c.TRAIN.MAX_STEPS = 0  # stop after this many steps in total (0 = no limit; for smoke runs)
    c.TRAIN.PROGRESS = True
    c.TRAIN.TENSORBOARD = True
    c.TRAIN.DETERMINISTIC = False  # torch.use_deterministic_algorithms on GPU
    return c


_CHOICES = {
    "METHOD": ("byol", "simsiam", "supervised"),
    "MODEL.BACKBONE": tuple(name for name in ARCHS if name != "resnet101"),
    "RIM.FILL": ("zero", "noise", "blur"),
    "BYOL.LOSS_SCALE": ("sum", "mean"),
    "ONLINE_LINEAR.VIEWS": ("masked", "clean"),
    "RIM.BRANCH": ("online", "both"),
    "IFM.LEVEL": ("backbone", "projector"),
    "IFM.TARGET": ("feature", "output", "loss"),
    "IFM.PARTNER": ("permute", "reverse"),
    "DATA.DATASET": ("synthetic", "imagefolder", "cifar10", "cifar100", "idx"),
    "OPTIM.NAME": ("sgd", "lars", "adamw"),
    "OPTIM.LARS_FORM": ("byol", "solo-learn"),
    "OPTIM.SCHEDULE_INTERVAL": ("step", "epoch"),
    "DATA.VIEWS": ("cpu", "device", "batch"),
    "AUG.INTERPOLATION": ("bilinear", "bicubic"),
    "TRAIN.PRECISION": ("auto", "fp32", "bf16", "fp16"),
    "TRAIN.DEVICE": ("auto", "cpu", "cuda"),
}


#: keys added to the config after runs had been made with it, each at the value that does what those runs did.
#: At that value a key is left out of a recipe's identity (`recipe_hash`; the tables' pooling), so a run from
#: before the key and one from after it are the same recipe.
ADDED_AT_OLD_VALUE = {"BYOL.LOSS_SCALE": "sum", "ONLINE_LINEAR.VIEWS": "masked", "ONLINE_LINEAR.BN_IMAGES": 4096}


def recipe_hash(cfg: CfgNode) -> str:
    """The identity of a recipe: `config_hash` (OUTPUT_DIR left out) without the keys of ADDED_AT_OLD_VALUE at
    their old value, so it equals the hash the same config had before those keys existed."""
    data = config_to_dict(cfg)
    for key, old in ADDED_AT_OLD_VALUE.items():
        group, name = key.split(".")
        if data.get(group, {}).get(name, old) == old:
            data.get(group, {}).pop(name, None)
    return config_hash(data, ignore=("OUTPUT_DIR",))


def recipe_items(data: dict, prefix: str = "") -> dict:
    """A merged config (nested dict) flattened to KEY -> value as far as it names the recipe: OUTPUT_DIR and SEED
    left out, and the keys of ADDED_AT_OLD_VALUE at their old value, so it is the same before and after they
    existed (the study's folder check; the tables' pooling leaves out more)."""
    out = {}
    for key, value in data.items():
        name = prefix + str(key)
        if isinstance(value, dict):
            out.update(recipe_items(value, name + "."))
        elif name not in ("OUTPUT_DIR", "SEED") and not (name in ADDED_AT_OLD_VALUE and value == ADDED_AT_OLD_VALUE[name]):
            out[name] = value
    return out


def recipe_differences(before: dict, now: CfgNode) -> list[str]:
    """What makes two merged configs different recipes (`recipe_items`), one 'KEY: A there, B here' a key."""
    a, b = recipe_items(before), recipe_items(config_to_dict(now))
    absent = "(absent)"
    return [f"{key}: {a.get(key, absent)} there, {b.get(key, absent)} here" for key in sorted(set(a) | set(b))
            if json.dumps(a.get(key), sort_keys=True) != json.dumps(b.get(key), sort_keys=True)]


def online_linear_views(cfg: CfgNode) -> str:
    """The views the online classifier trains on: "masked" under RIM with ONLINE_LINEAR.VIEWS masked, else
    "clean" (without RIM every view is clean)."""
    return "masked" if cfg.RIM.ENABLED and cfg.ONLINE_LINEAR.VIEWS == "masked" else "clean"


def validate_config(cfg: CfgNode, source: str = "config") -> None:
    """Check value ranges and choices; raise UserError naming the key and what is allowed."""
    for key, choices in _CHOICES.items():
        value = get_dotted(cfg, key)
        if value not in choices:
            raise UserError(f"{source}: {key} = {value!r} is not one of {', '.join(choices)}")

    def check(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UserError(f"{source}: {key} = {get_dotted(cfg, key)!r} {what}")

    check(0.0 <= cfg.RIM.RATIO <= 1.0, "RIM.RATIO", "must be in [0, 1]")
    check(0.0 <= cfg.RIM.PROB <= 1.0, "RIM.PROB", "must be in [0, 1]")
    check(cfg.RIM.PATCH_SIZE >= 0, "RIM.PATCH_SIZE", "must be >= 0 (0 = image side / 8)")
    check(cfg.MODEL.PROJ_LAYERS in (0, 1, 2, 3, 4), "MODEL.PROJ_LAYERS", "must be 0 (method default) or 1..4")
    check(cfg.IFM.ALPHA > 0, "IFM.ALPHA", "must be > 0")
    check(cfg.IFM.WEIGHT >= 0, "IFM.WEIGHT", "must be >= 0")
    check(cfg.IFM.START_EPOCH >= 0, "IFM.START_EPOCH", "must be >= 0")
    check(cfg.DATA.IMAGE_SIZE >= 8, "DATA.IMAGE_SIZE", "must be >= 8")
    check(cfg.DATA.BATCH_SIZE >= 1, "DATA.BATCH_SIZE", "must be >= 1")
    check(cfg.DATA.LIMIT >= 0, "DATA.LIMIT", "must be >= 0 (0 = every training image)")
    check(cfg.DATA.NUM_WORKERS >= 0, "DATA.NUM_WORKERS", "must be >= 0")
    check(len(cfg.DATA.MEAN) == 3 and len(cfg.DATA.STD) == 3, "DATA.MEAN", "and DATA.STD need 3 values")
    check(len(cfg.AUG.BLUR_PROB) == 2, "AUG.BLUR_PROB", "needs 2 values (view 1, view 2)")
    check(len(cfg.AUG.SOLARIZE_PROB) == 2, "AUG.SOLARIZE_PROB", "needs 2 values (view 1, view 2)")
    check(0.0 < cfg.AUG.CROP_MIN_SCALE <= 1.0, "AUG.CROP_MIN_SCALE", "must be in (0, 1]")
    check(cfg.OPTIM.BASE_LR > 0, "OPTIM.BASE_LR", "must be > 0")
    check(cfg.ONLINE_LINEAR.LR > 0, "ONLINE_LINEAR.LR", "must be > 0")
    check(cfg.ONLINE_LINEAR.BN_IMAGES >= 1, "ONLINE_LINEAR.BN_IMAGES", "must be >= 1")
    check(cfg.MODEL.CIFAR_STEM_PADDING in (0, 1, 2, 3), "MODEL.CIFAR_STEM_PADDING", "must be 0..3")
    check(cfg.OPTIM.REFERENCE_BATCH_SIZE >= 0, "OPTIM.REFERENCE_BATCH_SIZE", "must be >= 0 (0 = no scaling)")
    check(cfg.OPTIM.WARMUP_EPOCHS >= 0, "OPTIM.WARMUP_EPOCHS", "must be >= 0")
    check(0.0 <= cfg.BYOL.BASE_MOMENTUM <= cfg.BYOL.FINAL_MOMENTUM <= 1.0, "BYOL.BASE_MOMENTUM",
          "must satisfy 0 <= BASE_MOMENTUM <= FINAL_MOMENTUM <= 1")
    check(cfg.TRAIN.EPOCHS >= 1, "TRAIN.EPOCHS", "must be >= 1")
    check(cfg.TRAIN.CHECKPOINT_PERIOD >= 1, "TRAIN.CHECKPOINT_PERIOD", "must be >= 1")
    check(cfg.TRAIN.LOG_PERIOD >= 1, "TRAIN.LOG_PERIOD", "must be >= 1")
    check(cfg.TRAIN.KNN_K >= 1, "TRAIN.KNN_K", "must be >= 1")
    check(cfg.TRAIN.KNN_T > 0, "TRAIN.KNN_T", "must be > 0")
    check(cfg.TRAIN.KNN_BANK >= 0, "TRAIN.KNN_BANK", "must be >= 0 (0 = every labelled training image)")
    check(cfg.TRAIN.KNN_QUERIES >= 0, "TRAIN.KNN_QUERIES", "must be >= 0 (0 = every validation image)")
    check(cfg.TRAIN.KNN_PERIOD_STEPS >= 0, "TRAIN.KNN_PERIOD_STEPS", "must be >= 0 (0 = off)")
    check(cfg.TRAIN.TIME_BUDGET_S >= 0, "TRAIN.TIME_BUDGET_S", "must be >= 0 (0 = no time limit)")
    check(cfg.TRAIN.PRECISE_BN_IMAGES >= 0, "TRAIN.PRECISE_BN_IMAGES", "must be >= 0 (0 = off)")
    check(len(cfg.OPTIM.BETAS) == 2 and all(0 <= b < 1 for b in cfg.OPTIM.BETAS), "OPTIM.BETAS",
          "needs 2 values in [0, 1)")
    if cfg.METHOD == "supervised" and (cfg.RIM.ENABLED or cfg.IFM.ENABLED):
        raise UserError(f"{source}: METHOD supervised is the labelled baseline; RIM and IFM belong to the Siamese "
                        "methods (byol, simsiam): set RIM.ENABLED false and IFM.ENABLED false")


def resolve_config_path(name: str) -> Path:
    """A path as given, or a bare file name looked up in pretrain/configs/."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / name
    if candidate.is_file():
        return candidate
    if not name.endswith(".yaml") and (CONFIG_DIR / f"{name}.yaml").is_file():
        return CONFIG_DIR / f"{name}.yaml"
    shipped = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    raise UserError(f"config file {name!r} not found (as a path or in pretrain/configs/: {shipped})")


def load_config(config_file: str | None = None, overrides: list[str] | None = None) -> CfgNode:
    """Defaults, then the YAML file (with `_BASE_`), then `KEY VALUE` pairs; validated and frozen."""
    cfg = get_default_config()
    source = "defaults"
    if config_file:
        path = resolve_config_path(config_file)
        source = str(path)
        try:
            loaded = cfg.load_yaml_with_base(str(path), allow_unsafe=False)
            if not isinstance(loaded, dict):
                raise UserError(f"{path}: expected a mapping of config keys at the top level")
            _coerce_numbers(loaded, cfg)
            cfg.merge_from_other_cfg(CfgNode(loaded))
        except KeyError as exc:
            raise UserError(f"{path}: {_key_error_text(exc)}") from None
        except (ValueError, TypeError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: {exc}") from None
    overrides = list(overrides or [])
    if len(overrides) % 2:
        raise UserError(f"overrides must be KEY VALUE pairs; {overrides[-1]!r} has no value")
    pairs = []
    for key, value in zip(overrides[0::2], overrides[1::2]):
        parsed = parse_value(value)
        default = get_dotted(cfg, key, None)
        if isinstance(default, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
            parsed = float(parsed)
        elif isinstance(default, list) and isinstance(parsed, list):
            parsed = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in parsed]
        pairs += [key, parsed if isinstance(parsed, str) else repr(parsed) if parsed is not None else value]
    merge_overrides(cfg, pairs, _key_error_text)
    validate_config(cfg, source)
    cfg.freeze()
    return cfg


def _coerce_numbers(loaded: dict, defaults: dict) -> None:
    """Let an integer stand for a float key (`BASE_LR: 1`), which yacs would reject as a type mismatch."""
    for key, value in loaded.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict) and isinstance(default, dict):
            _coerce_numbers(value, default)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            loaded[key] = float(value)
        elif isinstance(default, list) and isinstance(value, list):
            loaded[key] = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]


def _key_error_text(exc: BaseException) -> str:
    return key_error_text(exc, "see pretrain/config.py for every key")


__all__ = ["ADDED_AT_OLD_VALUE", "CONFIG_DIR", "CfgNode", "config_hash", "config_to_dict", "get_default_config",
           "load_config", "recipe_differences", "recipe_hash", "recipe_items", "resolve_config_path", "validate_config"]
