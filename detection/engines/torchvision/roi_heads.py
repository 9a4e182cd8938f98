"""RoI heads as detectron2's StandardROIHeads / Res5ROIHeads: RoIAlign pooling, the FPN conv-fc or C4 res5
box head, the predictor, proposal sampling, the box losses and the per-class NMS of inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.ops import batched_nms, box_iou, roi_align

from detection.engines.torchvision.backbone import stage_out_channels
from detection.engines.torchvision.layers import ConvNorm, c2_xavier_fill, clip_boxes, smooth_l1


class RoIPooler(nn.Module):
    """RoIAlign (aligned=True, detectron2's ROIAlignV2) over one or several levels, level = detectron2's rule."""

    def __init__(self, resolution: int, strides: Sequence[int], sampling_ratio: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.min_level = int(round(math.log2(strides[0])))
        self.max_level = int(round(math.log2(strides[-1])))

    def forward(self, feats: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        rois = torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device), b], 1)
                          for i, b in enumerate(boxes)])
        if len(feats) == 1:
            return roi_align(feats[0], rois.to(feats[0].dtype), self.resolution, self.scales[0],
                             self.sampling_ratio, aligned=True)
        b = rois[:, 1:]
        size = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sqrt()
        level = torch.floor(4 + torch.log2(size / 224 + 1e-8)).clamp(self.min_level, self.max_level).long()
        level -= self.min_level
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], self.resolution, self.resolution))
        for lv, f in enumerate(feats):
            idx = torch.nonzero(level == lv).squeeze(1)
            if len(idx):
                out[idx] = roi_align(f, rois[idx].to(f.dtype), self.resolution, self.scales[lv],
                                     self.sampling_ratio, aligned=True).to(out.dtype)
        return out


class ConvFCHead(nn.Module):
    """detectron2's FastRCNNConvFCHead: NUM_CONV 3x3 convs (norm, ReLU), flatten, NUM_FC fc + ReLU."""

    def __init__(self, channels: int, resolution: int, num_conv: int, conv_dim: int, num_fc: int, fc_dim: int,
                 norm: str) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[ConvNorm(channels if i == 0 else conv_dim, conv_dim, 3, norm, relu=True)
                                     for i in range(num_conv)])
        dim = (conv_dim if num_conv else channels) * resolution * resolution
        fcs = []
        for _ in range(num_fc):
            fc = nn.Linear(dim, fc_dim)
            c2_xavier_fill(fc)
            fcs += [fc, nn.ReLU(inplace=True)]
            dim = fc_dim
        self.fcs = nn.Sequential(*fcs)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fcs(self.convs(x).flatten(1))


class Res5Head(nn.Module):
    """C4 box head: res5 on the pooled RoIs, then (ExtraNorm) one norm layer, then the spatial mean."""

    def __init__(self, res5: nn.Sequential, extra_norm: nn.Module | None) -> None:
        super().__init__()
        self.out_dim = stage_out_channels(res5)
        self.res5 = res5
        if extra_norm is not None:
            self.res5.add_module("norm", extra_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


class Predictor(nn.Module):
    """Class scores (K + 1, background last) and class-specific deltas, detectron2's init."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Proposal labelling and sampling, box head, losses and inference as detectron2's StandardROIHeads."""

    def __init__(self, cfg: Any, in_features: Sequence[str], strides: Sequence[int], box_head: nn.Module) -> None:
        super().__init__()
        h, b = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
        self.in_features = list(in_features)
        self.pooler = RoIPooler(b.POOLER_RESOLUTION, strides, b.POOLER_SAMPLING_RATIO)
        self.box_head = box_head
        self.box_predictor = Predictor(box_head.out_dim, h.NUM_CLASSES)
        self.num_classes = h.NUM_CLASSES
        self.matcher = Matcher(h.IOU_THRESHOLDS[0], h.IOU_THRESHOLDS[0], allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(h.BATCH_SIZE_PER_IMAGE, h.POSITIVE_FRACTION)
        self.coder = BoxCoder(tuple(b.BBOX_REG_WEIGHTS))
        self.beta = b.SMOOTH_L1_BETA
        self.box_weight = b.BBOX_REG_LOSS_WEIGHT
        self.score_thresh = h.SCORE_THRESH_TEST
        self.nms_thresh = h.NMS_THRESH_TEST
        self.detections = cfg.TEST.DETECTIONS_PER_IMAGE

    @torch.no_grad()
    def _sample(self, proposals: list[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Append the ground truth, match, sample; returns (boxes per image, classes, regression targets)."""
        boxes_out, classes, matched = [], [], []
        for props, t in zip(proposals, targets):
            gt, gl = t["boxes"], t["labels"]
            props = torch.cat([props, gt.to(props.dtype)])
            if gt.numel() == 0:
                cls = torch.full((len(props),), self.num_classes, dtype=torch.int64, device=props.device)
                mb = torch.zeros_like(props)
            else:
                idx = self.matcher(box_iou(gt, props))
                cls = gl[idx.clamp(min=0)].clone()
                cls[idx < 0] = self.num_classes
                mb = gt[idx.clamp(min=0)]
            # sampler: >= 1 positive, 0 negative
            pos, neg = self.sampler([torch.where(cls == self.num_classes, 0, cls + 1)])
            keep = torch.nonzero(pos[0].bool() | neg[0].bool()).squeeze(1)
            boxes_out.append(props[keep])
            classes.append(cls[keep])
            matched.append(mb[keep])
        return boxes_out, torch.cat(classes), torch.cat(matched)

    def forward(self, feats: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                sizes: Sequence[tuple[int, int]], targets: Sequence[dict[str, torch.Tensor]] | None = None
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        x = [feats[f] for f in self.in_features]
        if self.training:
            proposals, classes, matched = self._sample(proposals, targets)
        scores, deltas = self.box_predictor(self.box_head(self.pooler(x, proposals)))
        if self.training:
            return [], self._losses(scores.float(), deltas.float(), torch.cat(proposals), classes, matched)
        return self._inference(scores.float(), deltas.float(), proposals, sizes), {}

    def _losses(self, scores: torch.Tensor, deltas: torch.Tensor, proposals: torch.Tensor, classes: torch.Tensor,
                matched: torch.Tensor) -> dict[str, torch.Tensor]:
        if classes.numel() == 0:
            zero = scores.sum() * 0 + deltas.sum() * 0
            return {"loss_cls": zero, "loss_box_reg": zero}
        loss_cls = F.cross_entropy(scores, classes)
        fg = torch.nonzero((classes >= 0) & (classes < self.num_classes)).squeeze(1)
        pred = deltas.view(len(deltas), -1, 4)[fg, classes[fg]]
        target = self.coder.encode_single(matched[fg], proposals[fg])
        loss_box = smooth_l1(pred, target, self.beta) / max(classes.numel(), 1) * self.box_weight
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box}

    def _inference(self, scores: torch.Tensor, deltas: torch.Tensor, proposals: list[torch.Tensor],
                   sizes: Sequence[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        out = []
        counts = [len(p) for p in proposals]
        for s, d, p, size in zip(scores.split(counts), deltas.split(counts), proposals, sizes):
            k = self.num_classes
            boxes = self.coder.decode_single(d.reshape(-1, 4), p.repeat_interleave(k, dim=0)).view(-1, k, 4)
            prob = F.softmax(s, dim=-1)[:, :-1]
            ok = torch.isfinite(boxes).all(dim=(1, 2)) & torch.isfinite(prob).all(dim=1)
            boxes, prob = clip_boxes(boxes[ok], size), prob[ok]
            mask = prob > self.score_thresh
            idx = torch.nonzero(mask)
            b, sc, lab = boxes[idx[:, 0], idx[:, 1]], prob[mask], idx[:, 1]
            keep = batched_nms(b, sc, lab, self.nms_thresh)
            if self.detections >= 0:
                keep = keep[:self.detections]
            out.append({"boxes": b[keep], "scores": sc[keep], "labels": lab[keep]})
        return out
