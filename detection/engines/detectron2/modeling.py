"""detectron2 model pieces of the MoCo detection protocol (import only when detectron2 is installed)."""

from __future__ import annotations

from typing import Any

from detectron2.layers import get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn

#: basic-block count of res5 for the shallow ResNets (deeper ones use detectron2's bottleneck res5)
_BASIC_RES5_BLOCKS = {18: 2, 34: 3}


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """C4 box head: res5 on the pooled RoIs, then one more norm layer (MODEL.RESNETS.NORM).

    The extra norm after res5 is what MoCo's protocol adds (its parameters are named
    `roi_heads.res5.norm.*`, as in MoCo's checkpoints). ResNet-18/34 get a res5 of basic blocks,
    so the res5 weights of a converted R18/R34 backbone load into the head.
    """

    @classmethod
    def _build_res5_block(cls, cfg: Any) -> tuple[nn.Sequential, int]:
        depth = cfg.MODEL.RESNETS.DEPTH
        norm = cfg.MODEL.RESNETS.NORM
        if depth in _BASIC_RES5_BLOCKS:
            out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
            n = _BASIC_RES5_BLOCKS[depth]
            blocks = ResNet.make_stage(BasicBlock, n, stride_per_block=[2] + [1] * (n - 1),
                                       in_channels=out_channels // 2, out_channels=out_channels, norm=norm)
            res5 = nn.Sequential(*blocks)
        else:
            res5, out_channels = super()._build_res5_block(cfg)
        extra = get_norm(norm, out_channels)
        if extra is not None:
            res5.add_module("norm", extra)
        return res5, out_channels


def register() -> None:
    """Put Res5ROIHeadsExtraNorm in detectron2's ROI_HEADS_REGISTRY once (safe to call again)."""
    if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
        ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


register()
