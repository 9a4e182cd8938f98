"""Faster R-CNN (ResNet-C4 and ResNet-FPN) on torchvision pieces, behaving as detectron2's from the same config.

Reused from torchvision: the ResNet (`torchvision.models.resnet*`, v1.5 = detectron2's
STRIDE_IN_1X1 False), `RPNHead` (3x3 conv + objectness/deltas 1x1 convs, normal(0.01) init, as
detectron2's StandardRPNHead), `Matcher`, `BalancedPositiveNegativeSampler` and `BoxCoder` from
`torchvision.models.detection._utils` (the same matching with low-quality matches, the same
randperm sampling and the same box parametrisation with the same clamp as detectron2), and
`torchvision.ops` (roi_align, batched_nms, box_iou, FrozenBatchNorm2d).

Written in this package (backbone.py, rpn.py, roi_heads.py) because torchvision's versions differ
from detectron2's: anchors (torchvision rounds the cell anchors, detectron2 does not, and has
OFFSET), the RPN losses (detectron2: L1 / smooth-L1 with SMOOTH_L1_BETA and BCE, both summed and
divided by BATCH_SIZE_PER_IMAGE x images; torchvision: smooth-L1 beta 1/9 and a mean), proposal
filtering (detectron2 keeps boxes with positive size, torchvision drops those under 1e-3), the RoI
pooler (aligned=True RoIAlign with detectron2's level assignment), the box loss (smooth-L1 with
SMOOTH_L1_BETA, 0 = L1) and detectron2's box head and predictor initialisation.

Known remaining differences to detectron2: the random choices (anchor / RoI sampling) draw from
torch's generator in another order, so runs are not bit-identical to detectron2's; SyncBN under
DDP on CPU is our all-reduce BN (torch's SyncBatchNorm needs GPUs); on GPU the engine trains in
bf16 autocast where detectron2 uses fp32 (or fp16 with SOLVER.AMP.ENABLED).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from detection.engines.torchvision.backbone import (
    FPN,
    C4Backbone,
    ResNetBody,
    build_resnet,
    stage_out_channels,
)
from detection.engines.torchvision.config import is_fpn, resnet_arch
from detection.engines.torchvision.norms import make_norm
from detection.engines.torchvision.roi_heads import ConvFCHead, Res5Head, RoIHeads
from detection.engines.torchvision.rpn import RPN


class FasterRCNN(nn.Module):
    """Normalise and pad the images, backbone, RPN, RoI heads; losses in training, detections in eval."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        m = cfg.MODEL
        self.depth, self.resnet_norm = int(m.RESNETS.DEPTH), str(m.RESNETS.NORM)
        self.arch = resnet_arch(cfg)
        net = build_resnet(self.arch, m.RESNETS.NORM)
        self.fpn = is_fpn(cfg)
        if self.fpn:
            body = ResNetBody(net, 4, self.arch.stem_stride)
            body.freeze(m.BACKBONE.FREEZE_AT)
            self.backbone: nn.Module = FPN(body, m.FPN.IN_FEATURES, m.FPN.OUT_CHANNELS, m.FPN.NORM, m.FPN.FUSE_TYPE)
            b = m.ROI_BOX_HEAD
            head: nn.Module = ConvFCHead(m.FPN.OUT_CHANNELS, b.POOLER_RESOLUTION, b.NUM_CONV, b.CONV_DIM, b.NUM_FC,
                                         b.FC_DIM, b.NORM)
        else:
            body = ResNetBody(net, 3, self.arch.stem_stride)
            body.freeze(m.BACKBONE.FREEZE_AT)
            self.backbone = C4Backbone(body)
            extra = make_norm(m.RESNETS.NORM, stage_out_channels(net.layer4)) \
                if m.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" else None
            head = Res5Head(net.layer4, extra)
        strides = self.backbone.strides
        rpn_in = list(m.RPN.IN_FEATURES)
        self.rpn = RPN(cfg, rpn_in, self.backbone.channels[rpn_in[0]], [strides[f] for f in rpn_in])
        roi_in = list(m.ROI_HEADS.IN_FEATURES)
        self.roi_heads = RoIHeads(cfg, roi_in, [strides[f] for f in roi_in], head)
        self.register_buffer("pixel_mean", torch.tensor(m.PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(m.PIXEL_STD, dtype=torch.float32).view(-1, 1, 1), False)

    def preprocess(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalised images padded (with zeros, after normalising) into one batch, sizes a multiple of 32 for FPN."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        d = self.backbone.size_divisibility
        if d > 1:
            h, w = (h + d - 1) // d * d, (w + d - 1) // d * d
        batch = images[0].new_zeros((len(images), images[0].shape[0], h, w), dtype=torch.float32)
        for i, im in enumerate(images):
            batch[i, :, :im.shape[-2], :im.shape[-1]] = (im.to(batch.device).float() - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        batch, sizes = self.preprocess(images)
        feats = self.backbone(batch)
        proposals, rpn_losses = self.rpn(feats, sizes, targets)
        detections, roi_losses = self.roi_heads(feats, proposals, sizes, targets)
        if self.training:
            return {**roi_losses, **rpn_losses}
        return detections


def build_model(cfg: Any) -> FasterRCNN:
    """The Faster R-CNN a config describes (C4 or FPN), randomly initialised, on the CPU."""
    return FasterRCNN(cfg)


# ----------------------------------------------------------------------------- weights


def backbone_targets(model: FasterRCNN) -> dict[str, str]:
    """torchvision ResNet tensor name -> model tensor name, for every tensor a converted backbone fills.

    The ResNet body holds the stem and res2..res4 (FPN: ..res5) under `backbone.body.`; the C4 box
    head holds res5 (torchvision's layer4) under `roi_heads.box_head.res5.` (its extra norm is not
    part of the backbone).
    """
    out = {}
    body, res5 = "backbone.body.", "roi_heads.box_head.res5."
    for name in model.state_dict():
        if name.endswith("num_batches_tracked"):
            continue
        if name.startswith(body):
            out[name[len(body):]] = name
        elif name.startswith(res5) and not name.startswith(res5 + "norm."):
            out["layer4." + name[len(res5):]] = name
    return out
