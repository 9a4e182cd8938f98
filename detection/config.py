"""Detection configs: finding a YAML file, reading it without detectron2, and naming a run.

The YAML files in detection/configs/ are plain detectron2 configs (with `_BASE_`). Keys that are
ours, not detectron2's, live under one node, `RIMIFM`, which `add_rimifm_config` adds to a
config before any file is merged (detectron2 rejects keys it does not know).
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from fvcore.common.config import CfgNode as FvCfgNode

from rimifm.config import (
    check_override_pairs,
    config_hash,
    config_to_dict,
    get_dotted,
    key_error_text,
    merge_overrides,
)
from rimifm.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: MODEL.WEIGHTS of the shipped real-data configs: the user must pass the converted backbone
WEIGHTS_PLACEHOLDER = "See Instructions"
#: default OUTPUT_DIR of detectron2's get_cfg(); left alone, we replace it by our naming scheme
D2_DEFAULT_OUTPUT_DIR = "./output"

__all__ = [
    "CONFIG_DIR", "WEIGHTS_PLACEHOLDER", "add_rimifm_config", "available_configs", "config_hash",
    "config_to_dict", "default_output_dir", "merge_config", "protocol_string", "read_config", "resolve_config_path",
    "check_override_pairs",
]


def available_configs() -> list[str]:
    """File names of the shipped configs (bases excluded), sorted."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("Base-"))


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A path as given when it is a file, else a bare name (with or without .yaml) in detection/configs/."""
    path = Path(name)
    if path.is_file():
        return path
    text = str(name)
    if os.sep not in text and "/" not in text:
        for cand in (CONFIG_DIR / text, CONFIG_DIR / f"{text}.yaml"):
            if cand.is_file():
                return cand
    raise UserError(f"config file {text!r} not found (neither a file nor a name in detection/configs/); "
                    f"available: {', '.join(available_configs())}")


def read_config(name: str | os.PathLike) -> dict[str, Any]:
    """The merged content of a config file and its `_BASE_` chain as a plain dict (no detectron2 needed).

    String literals are decoded as yacs decodes them when merging (tuples, numbers, booleans).
    """
    path = resolve_config_path(name)
    try:
        data = FvCfgNode.load_yaml_with_base(str(path), allow_unsafe=False)
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML ({exc})") from None
    except (OSError, KeyError, TypeError) as exc:
        raise UserError(f"config file {path} (or a _BASE_ it names) cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of config keys at the top level")
    return _decode(data)


def _decode(value: Any) -> Any:
    """Turn string literals into values the way yacs does on merge: '(480, 512)' -> (480, 512)."""
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    return value


def add_rimifm_config(cfg: FvCfgNode) -> FvCfgNode:
    """Add our own keys (node RIMIFM) to a detectron2/fvcore config, before files are merged into it."""
    node = type(cfg)()
    # folder holding the synthetic set (its detection/VOC2007); "" = $RIMIFM_SYNTHETIC or
    # $DETECTRON2_DATASETS/synthetic (default datasets/synthetic)
    node.SYNTHETIC_ROOT = ""
    # folder holding the Fashion-MNIST scenes (tools/make_fmnist_scenes.py); "" = $DETECTRON2_DATASETS/fmnist-scenes
    node.SCENES_ROOT = ""
    # the backbone's stem (rimifm/resnets.py): imagenet = detectron2's 7x7 + max-pool; small = 3x3 stride 2, no
    # max-pool (resnet_tiny); cifar = 3x3 stride 1. Only the torchvision engine builds stems other than imagenet.
    node.STEM = "imagenet"
    cfg.RIMIFM = node
    return cfg


def merge_config(cfg: FvCfgNode, config: str | os.PathLike, opts: Sequence[str], unknown_key_hint: str) -> FvCfgNode:
    """Merge a config file (with `_BASE_`) and KEY VALUE overrides into an engine's defaults `cfg`.

    Errors become one UserError naming the file or the command line; an unknown key's message ends
    with `unknown_key_hint`. OUTPUT_DIR, unless the file or the overrides set it, becomes
    outputs/detection/<config stem>[-<weights stem>]. The result is not frozen (engines check it first).
    """
    path = resolve_config_path(config)
    opts = check_override_pairs(opts)

    def key_error(exc: BaseException) -> str:
        return key_error_text(exc, unknown_key_hint)

    try:
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except KeyError as exc:
        raise UserError(f"config file {path}: {key_error(exc)}") from None
    except (ValueError, TypeError, AssertionError, yaml.YAMLError) as exc:
        raise UserError(f"config file {path}: {exc}") from None
    merge_overrides(cfg, opts, key_error)
    explicit = "OUTPUT_DIR" in read_config(path) or "OUTPUT_DIR" in opts[0::2]
    if not explicit and cfg.OUTPUT_DIR == D2_DEFAULT_OUTPUT_DIR:
        cfg.OUTPUT_DIR = default_output_dir(path, cfg.MODEL.WEIGHTS)
    return cfg


def _stem(path_or_url: str) -> str:
    name = re.split(r"[/\\]", path_or_url.rstrip("/\\"))[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def default_output_dir(config_path: str | os.PathLike, weights: str = "") -> str:
    """outputs/detection/<config stem>[-<weights stem>] (relative to the working directory)."""
    name = Path(config_path).stem
    if weights and weights != WEIGHTS_PLACEHOLDER:
        name += f"-{_stem(weights)}"
    return str(Path("outputs") / "detection" / name)


def _dataset_short(names: Sequence[str]) -> str:
    """('voc_2007_trainval', 'voc_2012_trainval') -> 'VOC07+12'; coco_2017_train -> 'COCO17'."""
    groups: dict[str, list[str]] = {}
    other: list[str] = []
    for name in names:
        m = re.fullmatch(r"(voc|coco)_(\d{4})_.*", name)
        if m:
            groups.setdefault(m.group(1).upper(), []).append(m.group(2)[2:])
        elif name.startswith("synthetic"):
            groups.setdefault("synthetic", [])
        elif name.startswith("fmnist_scenes"):
            groups.setdefault("FMNIST-scenes", [])
        else:
            other.append(name)
    parts = [key + "+".join(dict.fromkeys(years)) for key, years in groups.items()] + other
    return "+".join(parts) if parts else "none"


def _iterations_short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n}it"


def protocol_string(cfg: Mapping[str, Any]) -> str:
    """A readable protocol name from a merged config, e.g. 'VOC07+12 R50-C4 24k'."""
    depth = get_dotted(cfg, "MODEL.RESNETS.DEPTH", 50)
    fpn = "fpn" in str(get_dotted(cfg, "MODEL.BACKBONE.NAME", "build_resnet_backbone")).lower()
    mask = "Mask " if get_dotted(cfg, "MODEL.MASK_ON", False) else ""
    train = _dataset_short(list(get_dotted(cfg, "DATASETS.TRAIN", ())))
    iters = int(get_dotted(cfg, "SOLVER.MAX_ITER", 0))
    return f"{train} {mask}R{depth}-{'FPN' if fpn else 'C4'} {_iterations_short(iters)}"
