"""Reading detectron2 detection configs without detectron2, for the torchvision engine.

Our own defaults table holds the detectron2 keys this engine honours, with detectron2's default
values (detectron2/config/defaults.py). Keys detectron2 has but we cannot honour are accepted only
at their default (`FIXED`, plus a few value checks in `unsupported_keys`): any other value is one
UserError listing every such key. Subtrees that only matter for features we refuse anyway (mask
and keypoint heads, RetinaNet, ...) are `INERT`: any content is accepted and ignored. Everything
else is an unknown key, an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from fvcore.common.config import CfgNode

from detection.config import (
    D2_DEFAULT_OUTPUT_DIR,
    add_rimifm_config,
    merge_config,
    resolve_config_path,
)
from rimifm.config import get_dotted
from rimifm.errors import UserError
from rimifm.resnets import STEMS, ResNetArch, arch_for

NORMS = ("", "BN", "SyncBN", "naiveSyncBN", "FrozenBN", "GN")
DEPTHS = (10, 18, 34, 50, 101)

#: honoured keys with detectron2's default values
HONOURED: dict[str, Any] = {
    "VERSION": 2,
    "MODEL": {
        "DEVICE": "cuda",
        "WEIGHTS": "",
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        "FPN": {"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
        "ANCHOR_GENERATOR": {"SIZES": [[32, 64, 128, 256, 512]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
                             "OFFSET": 0.0},
        "RPN": {
            "IN_FEATURES": ["res4"], "IOU_THRESHOLDS": [0.3, 0.7], "BATCH_SIZE_PER_IMAGE": 256,
            "POSITIVE_FRACTION": 0.5, "BBOX_REG_LOSS_WEIGHT": 1.0, "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
            "SMOOTH_L1_BETA": 0.0, "LOSS_WEIGHT": 1.0, "PRE_NMS_TOPK_TRAIN": 12000, "PRE_NMS_TOPK_TEST": 6000,
            "POST_NMS_TOPK_TRAIN": 2000, "POST_NMS_TOPK_TEST": 1000, "NMS_THRESH": 0.7,
        },
        "ROI_HEADS": {
            "NAME": "Res5ROIHeads", "NUM_CLASSES": 80, "IN_FEATURES": ["res4"], "IOU_THRESHOLDS": [0.5],
            "BATCH_SIZE_PER_IMAGE": 512, "POSITIVE_FRACTION": 0.25, "SCORE_THRESH_TEST": 0.05,
            "NMS_THRESH_TEST": 0.5,
        },
        "ROI_BOX_HEAD": {
            "NAME": "", "BBOX_REG_LOSS_WEIGHT": 1.0, "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
            "SMOOTH_L1_BETA": 0.0, "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0, "NUM_FC": 0,
            "FC_DIM": 1024, "NUM_CONV": 0, "CONV_DIM": 256, "NORM": "",
        },
        "RESNETS": {"DEPTH": 50, "OUT_FEATURES": ["res4"], "NORM": "FrozenBN", "STRIDE_IN_1X1": True,
                    "RES2_OUT_CHANNELS": 256, "STEM_OUT_CHANNELS": 64},
    },
    "INPUT": {"MIN_SIZE_TRAIN": (800,), "MIN_SIZE_TRAIN_SAMPLING": "choice", "MAX_SIZE_TRAIN": 1333,
              "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "RANDOM_FLIP": "horizontal", "FORMAT": "BGR"},
    "DATASETS": {"TRAIN": (), "TEST": ()},
    "DATALOADER": {"NUM_WORKERS": 4, "ASPECT_RATIO_GROUPING": True, "FILTER_EMPTY_ANNOTATIONS": True},
    "SOLVER": {
        "MAX_ITER": 40000, "BASE_LR": 0.001, "MOMENTUM": 0.9, "NESTEROV": False, "WEIGHT_DECAY": 0.0001,
        "WEIGHT_DECAY_NORM": 0.0, "GAMMA": 0.1, "STEPS": (30000,), "WARMUP_FACTOR": 1.0 / 1000,
        "WARMUP_ITERS": 1000, "WARMUP_METHOD": "linear", "CHECKPOINT_PERIOD": 5000, "IMS_PER_BATCH": 16,
        "BIAS_LR_FACTOR": 1.0, "WEIGHT_DECAY_BIAS": None, "AMP": {"ENABLED": False},
    },
    "TEST": {"EVAL_PERIOD": 0, "DETECTIONS_PER_IMAGE": 100, "PRECISE_BN": {"ENABLED": False, "NUM_ITER": 200}},
    "OUTPUT_DIR": D2_DEFAULT_OUTPUT_DIR,
    "SEED": -1,
    "CUDNN_BENCHMARK": False,
}

#: detectron2 keys accepted only at their default value (features this engine does not have)
FIXED: dict[str, Any] = {
    "MODEL.LOAD_PROPOSALS": False,
    "MODEL.MASK_ON": False,
    "MODEL.KEYPOINT_ON": False,
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.PROPOSAL_GENERATOR.NAME": "RPN",
    "MODEL.PROPOSAL_GENERATOR.MIN_SIZE": 0,
    "MODEL.ANCHOR_GENERATOR.NAME": "DefaultAnchorGenerator",
    "MODEL.RPN.HEAD_NAME": "StandardRPNHead",
    "MODEL.RPN.BOUNDARY_THRESH": -1,
    "MODEL.RPN.IOU_LABELS": [0, -1, 1],
    "MODEL.RPN.BBOX_REG_LOSS_TYPE": "smooth_l1",
    "MODEL.RPN.CONV_DIMS": [-1],
    "MODEL.ROI_HEADS.IOU_LABELS": [0, 1],
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": True,
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "smooth_l1",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": False,
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": False,
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": False,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "INPUT.CROP.ENABLED": False,
    "DATASETS.PROPOSAL_FILES_TRAIN": (),
    "DATASETS.PROPOSAL_FILES_TEST": (),
    "DATALOADER.SAMPLER_TRAIN": "TrainingSampler",
    "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
    "SOLVER.RESCALE_INTERVAL": False,
    "SOLVER.REFERENCE_WORLD_SIZE": 0,
    "SOLVER.CLIP_GRADIENTS.ENABLED": False,
    "TEST.AUG.ENABLED": False,
    "TEST.EXPECTED_RESULTS": [],
    "FLOAT32_PRECISION": "",
    "VIS_PERIOD": 0,
}

#: subtrees whose content only matters for features refused above: accepted, ignored
INERT = (
    "MODEL.ROI_MASK_HEAD", "MODEL.ROI_KEYPOINT_HEAD", "MODEL.ROI_BOX_CASCADE_HEAD", "MODEL.SEM_SEG_HEAD",
    "MODEL.PANOPTIC_FPN", "MODEL.RETINANET", "MODEL.ANCHOR_GENERATOR.ANGLES", "MODEL.RESNETS.DEFORM_MODULATED",
    "MODEL.RESNETS.DEFORM_NUM_GROUPS", "MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER",
    "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES", "INPUT.CROP.TYPE", "INPUT.CROP.SIZE", "INPUT.MASK_FORMAT",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN", "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST",
    "DATALOADER.REPEAT_THRESHOLD", "DATALOADER.REPEAT_SQRT", "SOLVER.BASE_LR_END", "SOLVER.NUM_DECAYS",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "SOLVER.CLIP_GRADIENTS.NORM_TYPE",
    "TEST.KEYPOINT_OKS_SIGMAS", "TEST.AUG.MIN_SIZES", "TEST.AUG.MAX_SIZE", "TEST.AUG.FLIP", "GLOBAL.HACK",
)
#: detectron2's defaults for the inert leaves that the shipped configs or users commonly set
_INERT_DEFAULTS: dict[str, Any] = {
    "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0, "MODEL.ROI_MASK_HEAD.NUM_CONV": 0,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 256, "MODEL.ROI_MASK_HEAD.NORM": "", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlignV2", "MODEL.ANCHOR_GENERATOR.ANGLES": [[-90, 0, 90]],
    "MODEL.RESNETS.DEFORM_MODULATED": False, "MODEL.RESNETS.DEFORM_NUM_GROUPS": 1,
    "INPUT.CROP.TYPE": "relative_range", "INPUT.CROP.SIZE": [0.9, 0.9], "INPUT.MASK_FORMAT": "polygon",
    "DATALOADER.REPEAT_THRESHOLD": 0.0, "SOLVER.BASE_LR_END": 0.0, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "value",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0, "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0, "GLOBAL.HACK": 1.0,
}


def _node(tree: Mapping[str, Any]) -> CfgNode:
    return CfgNode({k: (_node(v) if isinstance(v, Mapping) else v) for k, v in tree.items()})


def _set(cfg: CfgNode, dotted: str, value: Any, new_allowed: bool = False) -> None:
    """Create the nodes along a dotted path and set its leaf (or an open node when value is None)."""
    parts = dotted.split(".")
    node = cfg
    for part in parts[:-1]:
        if part not in node:
            node[part] = CfgNode()
        node = node[part]
    if new_allowed:
        if parts[-1] not in node:
            node[parts[-1]] = CfgNode(new_allowed=True)
        else:
            node[parts[-1]].set_new_allowed(True)
    else:
        node[parts[-1]] = value


def get_default_config() -> CfgNode:
    """Honoured keys, fixed keys and inert subtrees with detectron2's defaults, plus our RIMIFM node."""
    cfg = _node(HONOURED)
    for dotted, value in FIXED.items():
        _set(cfg, dotted, value)
    for dotted in INERT:
        if dotted in _INERT_DEFAULTS:
            continue
        _set(cfg, dotted, None, new_allowed=True)
    for dotted, value in _INERT_DEFAULTS.items():
        _set(cfg, dotted, value)
    return add_rimifm_config(cfg)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def resnet_arch(cfg: Any) -> ResNetArch:
    """The backbone architecture a config describes: MODEL.RESNETS.DEPTH, STEM_OUT_CHANNELS (the width) and
    RIMIFM.STEM (imagenet = detectron2's stem)."""
    return arch_for(int(cfg.MODEL.RESNETS.DEPTH), int(cfg.MODEL.RESNETS.STEM_OUT_CHANNELS), str(cfg.RIMIFM.STEM))


def is_fpn(cfg: Any) -> bool:
    """True for the ResNet-FPN backbone, False for ResNet-C4."""
    return cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"


def unsupported_keys(cfg: Any) -> list[str]:
    """'KEY = value (why)' for every key whose value this engine cannot honour."""
    bad = [f"{k} = {get_dotted(cfg, k)!r} (only {v!r} is supported)" for k, v in FIXED.items() if not _same(get_dotted(cfg, k), v)]
    m = cfg.MODEL
    if m.BACKBONE.NAME not in ("build_resnet_backbone", "build_resnet_fpn_backbone"):
        bad.append(f"MODEL.BACKBONE.NAME = {m.BACKBONE.NAME!r} (build_resnet_backbone or build_resnet_fpn_backbone)")
    if m.RESNETS.DEPTH not in DEPTHS:
        bad.append(f"MODEL.RESNETS.DEPTH = {m.RESNETS.DEPTH} (one of {', '.join(map(str, DEPTHS))})")
    bottleneck = m.RESNETS.DEPTH >= 50
    if bottleneck and m.RESNETS.STRIDE_IN_1X1:
        bad.append("MODEL.RESNETS.STRIDE_IN_1X1 = True (torchvision's bottleneck strides in the 3x3 conv: "
                   "set False, as the MoCo-protocol configs do)")
    # the width of torchvision's layout: res2 has the stem's channels (basic blocks) or 4x them (bottlenecks)
    res2 = m.RESNETS.STEM_OUT_CHANNELS * (4 if bottleneck else 1)
    if m.RESNETS.RES2_OUT_CHANNELS != res2:
        bad.append(f"MODEL.RESNETS.RES2_OUT_CHANNELS = {m.RESNETS.RES2_OUT_CHANNELS} (a ResNet-{m.RESNETS.DEPTH} "
                   f"with STEM_OUT_CHANNELS {m.RESNETS.STEM_OUT_CHANNELS} has {res2})")
    if m.RESNETS.STEM_OUT_CHANNELS < 1:
        bad.append(f"MODEL.RESNETS.STEM_OUT_CHANNELS = {m.RESNETS.STEM_OUT_CHANNELS} (must be >= 1)")
    if cfg.RIMIFM.STEM not in STEMS:
        bad.append(f"RIMIFM.STEM = {cfg.RIMIFM.STEM!r} (one of {', '.join(STEMS)})")
    if "GN" in (m.RESNETS.NORM, m.FPN.NORM, m.ROI_BOX_HEAD.NORM) and m.RESNETS.STEM_OUT_CHANNELS % 32:
        bad.append(f"MODEL.RESNETS.NORM = 'GN' needs channels divisible by GroupNorm's 32 groups; "
                   f"STEM_OUT_CHANNELS {m.RESNETS.STEM_OUT_CHANNELS} is not (use BN or SyncBN)")
    for key, value in (("MODEL.RESNETS.NORM", m.RESNETS.NORM), ("MODEL.FPN.NORM", m.FPN.NORM),
                       ("MODEL.ROI_BOX_HEAD.NORM", m.ROI_BOX_HEAD.NORM)):
        if value not in NORMS:
            bad.append(f"{key} = {value!r} (one of {', '.join(repr(n) for n in NORMS)})")
    if m.FPN.FUSE_TYPE not in ("sum", "avg"):
        bad.append(f"MODEL.FPN.FUSE_TYPE = {m.FPN.FUSE_TYPE!r} (sum or avg)")
    if len(m.RPN.IOU_THRESHOLDS) != 2 or len(m.ROI_HEADS.IOU_THRESHOLDS) != 1:
        bad.append("MODEL.RPN.IOU_THRESHOLDS / MODEL.ROI_HEADS.IOU_THRESHOLDS (two and one thresholds)")
    if len(m.ANCHOR_GENERATOR.ASPECT_RATIOS) != 1:
        bad.append("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS (one list of ratios shared by all levels)")
    levels = ["res2", "res3", "res4", "res5"]
    if is_fpn(cfg):
        fin = list(m.FPN.IN_FEATURES)
        if not (fin and fin[0] in levels and fin == levels[levels.index(fin[0]):]):
            bad.append(f"MODEL.FPN.IN_FEATURES = {fin} (consecutive ResNet stages ending at res5)")
        else:
            outs = [f"p{int(n[3:])}" for n in fin] + [f"p{int(fin[-1][3:]) + 1}"]
            if list(m.RESNETS.OUT_FEATURES) != fin:
                bad.append(f"MODEL.RESNETS.OUT_FEATURES = {list(m.RESNETS.OUT_FEATURES)} (must equal FPN.IN_FEATURES)")
            if not m.RPN.IN_FEATURES or not set(m.RPN.IN_FEATURES) <= set(outs):
                bad.append(f"MODEL.RPN.IN_FEATURES = {list(m.RPN.IN_FEATURES)} (a subset of {outs})")
            if not m.ROI_HEADS.IN_FEATURES or not set(m.ROI_HEADS.IN_FEATURES) <= set(outs):
                bad.append(f"MODEL.ROI_HEADS.IN_FEATURES = {list(m.ROI_HEADS.IN_FEATURES)} (a subset of {outs})")
        if m.ROI_HEADS.NAME != "StandardROIHeads":
            bad.append(f"MODEL.ROI_HEADS.NAME = {m.ROI_HEADS.NAME!r} (StandardROIHeads with the FPN backbone)")
        if m.ROI_BOX_HEAD.NAME != "FastRCNNConvFCHead":
            bad.append(f"MODEL.ROI_BOX_HEAD.NAME = {m.ROI_BOX_HEAD.NAME!r} (FastRCNNConvFCHead)")
    else:
        for key in ("MODEL.RESNETS.OUT_FEATURES", "MODEL.RPN.IN_FEATURES", "MODEL.ROI_HEADS.IN_FEATURES"):
            if list(get_dotted(cfg, key)) != ["res4"]:
                bad.append(f"{key} = {list(get_dotted(cfg, key))} (the C4 model uses ['res4'])")
        if m.ROI_HEADS.NAME not in ("Res5ROIHeads", "Res5ROIHeadsExtraNorm"):
            bad.append(f"MODEL.ROI_HEADS.NAME = {m.ROI_HEADS.NAME!r} (Res5ROIHeads or Res5ROIHeadsExtraNorm "
                       "with the C4 backbone)")
    n_levels = len(m.RPN.IN_FEATURES)
    if len(m.ANCHOR_GENERATOR.SIZES) not in (1, n_levels):
        bad.append(f"MODEL.ANCHOR_GENERATOR.SIZES has {len(m.ANCHOR_GENERATOR.SIZES)} lists for {n_levels} "
                   "RPN levels (one list, or one per level)")
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        bad.append(f"INPUT.FORMAT = {cfg.INPUT.FORMAT!r} (RGB or BGR)")
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING not in ("choice", "range"):
        bad.append(f"INPUT.MIN_SIZE_TRAIN_SAMPLING = {cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING!r} (choice or range)")
    if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
        bad.append(f"INPUT.RANDOM_FLIP = {cfg.INPUT.RANDOM_FLIP!r} (horizontal or none)")
    if cfg.SOLVER.WARMUP_METHOD not in ("linear", "constant"):
        bad.append(f"SOLVER.WARMUP_METHOD = {cfg.SOLVER.WARMUP_METHOD!r} (linear or constant)")
    return bad


def build_cfg(config: str | os.PathLike, opts: Sequence[str] = ()) -> CfgNode:
    """Our defaults + the config file (with `_BASE_`) + KEY VALUE overrides, checked and frozen.

    UserError for an unknown key (named) and for every key whose value we cannot honour (all
    listed at once). OUTPUT_DIR, unless set, becomes outputs/detection/<config stem>[-<weights stem>].
    """
    cfg = merge_config(get_default_config(), config, opts,
                       "not a detectron2 config key the torchvision engine knows; our own keys live under "
                       "RIMIFM, e.g. RIMIFM.SYNTHETIC_ROOT")
    bad = unsupported_keys(cfg)
    if bad:
        raise UserError(f"{resolve_config_path(config).name}: the torchvision engine cannot honour {len(bad)} "
                        "config value(s): " + "; ".join(bad) + " (change them, or use --engine detectron2)")
    cfg.freeze()
    return cfg


__all__ = ["FIXED", "HONOURED", "INERT", "build_cfg", "get_default_config", "is_fpn", "resnet_arch",
           "unsupported_keys"]
