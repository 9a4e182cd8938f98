"""ResNet tensor names (torchvision <-> detectron2) and checkpoint layout detection (the .pkl file: rimifm.d2_pkl).

Used by the converter (detection.convert, tools/convert_to_d2.py) and by classification evaluation
(pretrain.evaluation), which both need to find a ResNet inside somebody's checkpoint.

detectron2 (and the MoCo `detection/` protocol built on it) reads backbone weights from a
pickle `{"model": {name: numpy array}, "matching_heuristics": True, ...}` whose names follow
detectron2's ResNet: `stem.conv1.weight`, `stem.conv1.norm.*`, `res2.0.conv1.weight`,
`res2.0.conv1.norm.*`, ..., `res2.0.shortcut.weight`, `res2.0.shortcut.norm.*` (stages res2..res5
are torchvision's layer1..layer4; BasicBlock has conv1/conv2, BottleneckBlock conv1/conv2/conv3).

Many pretraining codebases wrap the same torchvision ResNet under different key prefixes
(MoCo `module.encoder_q.`, SimSiam `module.encoder.`, solo-learn `backbone.`, ...), inside
container keys (`state_dict`, `model`, ...). This module finds the backbone, renames its
tensors and checks that exactly the tensors of a ResNet-18/34/50/101 came out; rimifm.d2_pkl writes the
pickle atomically. Weights are copied bit for bit; no channel swap is done (MoCo's configs feed
RGB input with `STRIDE_IN_1X1: False`, which matches torchvision's ResNet v1.5 layout).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rimifm.errors import UserError
from rimifm.io import PRETRAIN_CHECKPOINT_FORMAT
from rimifm.resnets import ARCHS, RESNET_LAYOUTS, arch_metadata, get_arch

OUR_FORMAT = PRETRAIN_CHECKPOINT_FORMAT

#: prefixes under which known codebases store the (online / query) backbone, with a layout name.
#: Detection picks the longest one whose stem is present; `--prefix` overrides.
KNOWN_PREFIXES: dict[str, str] = {
    "module.encoder_q.0.": "OpenSelfSup/DenseCL (module.encoder_q.0.)",
    "encoder_q.0.": "OpenSelfSup/DenseCL (encoder_q.0.)",
    "module.encoder_q.": "MoCo (module.encoder_q.)",
    "encoder_q.": "DenseCL/PixPro (encoder_q.)",
    "module.encoder.": "SimSiam/PixPro (module.encoder.)",
    "module.online_network.encoder.": "BYOL (module.online_network.encoder.)",
    "online_network.encoder.": "BYOL (online_network.encoder.)",
    "module.backbone.": "solo-learn/BYOL (module.backbone.)",
    "backbone.": "solo-learn/BYOL (backbone.)",
    "encoder.": "BYOL (encoder.)",
    "module.": "torchvision (module.)",
    "": "torchvision",
}

#: prefixes of the momentum / EMA branch, used only with `target=True`
TARGET_PREFIXES: dict[str, str] = {
    "target_backbone.": "target_backbone.",
    "momentum_backbone.": "solo-learn momentum_backbone.",
    "module.encoder_k.": "MoCo key encoder (module.encoder_k.)",
    "encoder_k.": "key encoder (encoder_k.)",
    "target_network.encoder.": "BYOL target_network.encoder.",
}

#: keys that may hold the state dict, searched breadth first from the top of the file
CONTAINER_KEYS = ("state_dict", "model", "network", "online_network_state_dict", "module")

_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var")
#: torchvision ResNet children as numbered by nn.Sequential(*resnet.children())
_SEQUENTIAL_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}

_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]\.weight|bn[1-3]\.\w+|downsample\.[01]\.\w+)$")
_D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv[1-3]|shortcut)\.(weight|norm\.\w+)$")


@dataclass
class Conversion:
    """Result of a conversion: detectron2-named arrays plus where they came from."""

    model: dict[str, np.ndarray]
    layout: str
    container: str
    prefix: str
    depth: int
    dropped: list[str] = field(default_factory=list)
    arch: dict | None = None  # rimifm.resnets.arch_metadata of our checkpoints; None when the file does not say

    def summary(self, output: str | os.PathLike | None = None) -> str:
        """One line for the log: layout, container, prefix, depth, tensor count, output."""
        line = (f"layout={self.layout} container={self.container} prefix={self.prefix!r} "
                f"depth={self.depth} tensors={len(self.model)}")
        if self.arch is not None and (self.arch.get("width"), self.arch.get("stem")) != (64, "imagenet"):
            line += f" arch={self.arch['name']} (width {self.arch['width']}, {self.arch['stem']} stem)"
        return line + (f" -> {output}" if output is not None else "")


# ----------------------------------------------------------------------------- name mapping


def _tv_name_to_d2(name: str) -> str | None:
    """detectron2 name of one torchvision ResNet tensor name, or None if it is not a backbone tensor."""
    if name == "conv1.weight":
        return "stem.conv1.weight"
    if name.startswith("bn1.") and name[4:] in _NORM_FIELDS:
        return "stem.conv1.norm." + name[4:]
    m = _TV_BLOCK.match(name)
    if m is None:
        return None
    base = f"res{int(m.group(1)) + 1}.{m.group(2)}."
    head, _, leaf = m.group(3).rpartition(".")
    if head.startswith("conv"):
        return base + f"{head}.weight"
    if head == "downsample.0":
        return base + "shortcut.weight" if leaf == "weight" else None
    if leaf not in _NORM_FIELDS:
        return None
    module = "shortcut" if head == "downsample.1" else "conv" + head[2:]
    return base + f"{module}.norm.{leaf}"


def _d2_name_to_tv(name: str) -> str | None:
    """torchvision name of one detectron2 ResNet tensor name, or None if it is not one."""
    if name == "stem.conv1.weight":
        return "conv1.weight"
    if name.startswith("stem.conv1.norm.") and name[len("stem.conv1.norm."):] in _NORM_FIELDS:
        return "bn1." + name[len("stem.conv1.norm."):]
    m = _D2_BLOCK.match(name)
    if m is None:
        return None
    layer, block, module, rest = int(m.group(1)) - 1, m.group(2), m.group(3), m.group(4)
    base = f"layer{layer}.{block}."
    if rest == "weight":
        return base + ("downsample.0.weight" if module == "shortcut" else f"{module}.weight")
    leaf = rest[len("norm."):]
    if leaf not in _NORM_FIELDS:
        return None
    return base + ("downsample.1." if module == "shortcut" else f"bn{module[4:]}.") + leaf


def expected_d2_keys(depth: int) -> set[str]:
    """Every tensor name detectron2's ResNet-`depth` backbone has (no num_batches_tracked)."""
    if depth not in RESNET_LAYOUTS:
        raise UserError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_LAYOUTS)}")
    blocks, bottleneck = RESNET_LAYOUTS[depth]
    convs = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
    keys = {"stem.conv1.weight"} | {f"stem.conv1.norm.{f}" for f in _NORM_FIELDS}
    for stage, n in enumerate(blocks, start=2):
        for b in range(n):
            modules = list(convs)
            # the first block changes width (bottleneck: 64 -> 256 already in res2) or stride
            if b == 0 and (bottleneck or stage > 2):
                modules.append("shortcut")
            for mod in modules:
                keys.add(f"res{stage}.{b}.{mod}.weight")
                keys.update(f"res{stage}.{b}.{mod}.norm.{f}" for f in _NORM_FIELDS)
    return keys


def _to_numpy(value: Any) -> np.ndarray:
    """Tensor -> numpy array with the same bits (bfloat16, which numpy lacks, becomes float32)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy().copy()
    return np.array(value, copy=True)


def torchvision_to_d2(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Rename an un-prefixed torchvision ResNet state dict to detectron2 names.

    Returns (converted arrays, dropped names, unplaceable names). `fc.*` and
    `num_batches_tracked` are dropped; anything else that is not a ResNet tensor is unplaceable.
    """
    out: dict[str, np.ndarray] = {}
    dropped: list[str] = []
    unplaced: list[str] = []
    for name, value in state.items():
        if name.endswith("num_batches_tracked") or name.startswith("fc."):
            dropped.append(name)
            continue
        new = _tv_name_to_d2(name)
        if new is None or not isinstance(value, (torch.Tensor, np.ndarray)):
            unplaced.append(name)
            continue
        out[new] = _to_numpy(value)
    return out, dropped, unplaced


def d2_to_torchvision(state: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the conversion: detectron2 ResNet names -> torchvision names (bit-exact tensors).

    The result loads into a torchvision ResNet with `load_state_dict(..., strict=False)`, only
    `fc.*` missing. Names that are not detectron2 ResNet backbone tensors raise UserError.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, value in state.items():
        new = _d2_name_to_tv(name)
        if new is None:
            unknown.append(name)
            continue
        if isinstance(value, torch.Tensor):
            out[new] = value.detach().clone()
        else:
            out[new] = torch.from_numpy(np.array(value, copy=True))
    if unknown:
        raise UserError(f"{len(unknown)} tensor name(s) are not detectron2 ResNet backbone names: "
                        f"{_short_list(unknown)}")
    return out


# ----------------------------------------------------------------------------- detection


def _short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _prefix_matches(keys: set[str], prefix: str) -> bool:
    """A prefix holds a ResNet if its stem conv is there (named, or as Sequential child 0)."""
    return (prefix + "conv1.weight" in keys
            or (prefix + "0.weight" in keys and prefix + "4.0.conv1.weight" in keys))


def _containers(ckpt: Mapping[str, Any], max_depth: int = 3) -> list[tuple[str, Mapping[str, Any]]]:
    """State-dict candidates: the top level, then CONTAINER_KEYS breadth first."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    frontier: list[tuple[str, Mapping[str, Any]]] = [("", ckpt)]
    for _ in range(max_depth + 1):
        nxt: list[tuple[str, Mapping[str, Any]]] = []
        for path, obj in frontier:
            if _is_state_dict(obj):
                found.append((path, obj))
            for key in CONTAINER_KEYS:
                child = obj.get(key)
                if isinstance(child, Mapping):
                    nxt.append((f"{path}.{key}" if path else key, child))
        frontier = nxt
    return found


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keys under `prefix` with the prefix removed; Sequential child numbers renamed to torchvision names."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "conv1.weight" not in sub and "0.weight" in sub:
        renamed: dict[str, Any] = {}
        for k, v in sub.items():
            head, dot, rest = k.partition(".")
            renamed[_SEQUENTIAL_CHILDREN.get(head, head) + dot + rest] = v
        sub = renamed
    return sub


def infer_depth(tv_state: Mapping[str, Any]) -> int:
    """ResNet depth from un-prefixed torchvision names: bottleneck (conv3) or not, and blocks per layer."""
    bottleneck = "layer1.0.conv3.weight" in tv_state
    counts = []
    for layer in range(1, 5):
        idx = [int(m.group(1)) for k in tv_state if (m := re.match(rf"^layer{layer}\.(\d+)\.", k))]
        counts.append(max(idx) + 1 if idx else 0)
    for depth, (blocks, bn) in RESNET_LAYOUTS.items():
        if tuple(counts) == blocks and bn == bottleneck:
            return depth
    kind = "bottleneck" if bottleneck else "basic"
    raise UserError(f"cannot infer the ResNet depth: {kind} blocks per layer {counts} match none of "
                    f"{sorted(RESNET_LAYOUTS)}; pass --depth or check the prefix")


def _depth_from_name(name: Any) -> int | None:
    if str(name) in ARCHS:
        return ARCHS[str(name)].depth
    m = re.fullmatch(r"resnet(\d+)", str(name).strip().lower())
    return int(m.group(1)) if m else None


def _our_arch(ckpt: Mapping[str, Any]) -> dict | None:
    """The architecture entry of one of our pretraining checkpoints (older ones: from its backbone name)."""
    if isinstance(ckpt.get("arch"), Mapping):
        return dict(ckpt["arch"])
    if ckpt.get("backbone") in ARCHS:
        arch = get_arch(ckpt["backbone"])
        return arch_metadata(arch.with_stem("cifar") if ckpt.get("cifar_stem") else arch)
    return None


def convert_checkpoint(ckpt: Any, *, target: bool = False, prefix: str | None = None,
                       depth: int | None = None) -> Conversion:
    """Find the ResNet backbone in a loaded checkpoint and return its detectron2-named arrays.

    `target` takes the EMA/momentum branch (ours: `target_backbone.`); `prefix` forces the key
    prefix (e.g. "module.encoder_q."; "" for a bare torchvision state dict); `depth` validates
    (and, if the checkpoint does not say, fixes) the expected ResNet depth.
    Raises UserError if the checkpoint is not a dict, no known layout matches, or the tensors
    found are not exactly those of the ResNet depth.
    """
    if not isinstance(ckpt, Mapping):
        raise UserError(f"not a checkpoint: expected a dict of tensors, got {type(ckpt).__name__}")
    if target and prefix is not None:
        raise UserError("--target and --prefix cannot be combined: --prefix already names the branch")
    if prefix is not None and prefix and not prefix.endswith("."):
        prefix += "."

    ours = ckpt.get("format") == OUR_FORMAT
    declared_depth = None
    if ours and isinstance(ckpt.get("arch"), Mapping):
        declared_depth = int(ckpt["arch"].get("depth", 0)) or None
    elif ours and "backbone" in ckpt:
        declared_depth = _depth_from_name(ckpt["backbone"])
        if declared_depth is None:
            raise UserError(f"checkpoint backbone {ckpt['backbone']!r} is not a ResNet this converter supports")

    candidates = _containers(ckpt)
    if not candidates:
        raise UserError("not a checkpoint: found no tensors at the top level or under "
                        f"{', '.join(CONTAINER_KEYS)}")

    if prefix is not None:
        table = {prefix: f"custom prefix {prefix!r}"}
    elif target:
        table = {"target_backbone.": "rimifm-pretrain target"} if ours else TARGET_PREFIXES
    elif ours:
        table = {"backbone.": "rimifm-pretrain online"}
    else:
        table = KNOWN_PREFIXES

    chosen: tuple[str, Mapping[str, Any], str] | None = None
    for path, state in candidates:
        keys = set(state)
        matching = [p for p in table if _prefix_matches(keys, p)]
        if matching:
            best = max(matching, key=len)
            chosen = (path, state, best)
            break
    if chosen is None:
        sample = _short_list(sorted(next(iter(candidates))[1])[:8])
        if target:
            raise UserError("no target (EMA/momentum) backbone in this checkpoint (looked for "
                            f"{', '.join(repr(p) for p in table)}); SimSiam has none - drop --target")
        if prefix is not None:
            raise UserError(f"no ResNet under prefix {prefix!r} (no {prefix}conv1.weight); keys look like: {sample}")
        raise UserError(f"unknown checkpoint layout: no known backbone prefix matches; keys look like: {sample}; "
                        "pass --prefix")
    path, state, pfx = chosen

    tv = _strip(state, pfx)
    model, dropped, unplaced = torchvision_to_d2(tv)
    if unplaced:
        raise UserError(f"{len(unplaced)} tensor(s) under prefix {pfx!r} cannot be placed in a detectron2 ResNet: "
                        f"{_short_list([pfx + k for k in unplaced])}")

    if depth is not None and depth not in RESNET_LAYOUTS:
        raise UserError(f"unsupported --depth {depth}; choose one of {sorted(RESNET_LAYOUTS)}")
    if depth is not None and declared_depth is not None and depth != declared_depth:
        raise UserError(f"--depth {depth} disagrees with the checkpoint's backbone {ckpt['backbone']!r}")
    final_depth = depth or declared_depth or infer_depth(tv)
    _validate(model, final_depth)
    return Conversion(model=model, layout=table[pfx], container=path or "<top level>", prefix=pfx,
                      depth=final_depth, dropped=dropped, arch=_our_arch(ckpt) if ours else None)


def _validate(model: Mapping[str, Any], depth: int) -> None:
    """Exactly the tensors of a detectron2 ResNet-`depth`, nothing missing and nothing extra."""
    expected = expected_d2_keys(depth)
    missing = sorted(expected - set(model))
    extra = sorted(set(model) - expected)
    bad_root = sorted(k for k in model if not re.match(r"^(stem|res[2-5])\.", k))
    if missing or extra or bad_root or len(model) != len(expected):
        parts = []
        if extra or bad_root:
            parts.append(f"{len(set(extra) | set(bad_root))} tensor(s) do not belong to a ResNet-{depth}: "
                         f"{_short_list(sorted(set(extra) | set(bad_root)))}")
        if missing:
            parts.append(f"{len(missing)} tensor(s) of a ResNet-{depth} are missing: {_short_list(missing)}")
        raise UserError(f"found {len(model)} backbone tensors, a ResNet-{depth} has {len(expected)}; "
                        + "; ".join(parts) + " (wrong --depth or prefix?)")
