"""Region proposal network with detectron2's anchors, labels, losses and proposal selection, which differ
from torchvision's (see modeling.py); torchvision's RPNHead, Matcher, sampler and BoxCoder are reused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import batched_nms, box_iou

from detection.engines.torchvision.layers import clip_boxes, smooth_l1


class AnchorGenerator(nn.Module):
    """detectron2's DefaultAnchorGenerator: unrounded cell anchors, shifted by (x + OFFSET) * stride."""

    def __init__(self, sizes: Sequence[Sequence[float]], ratios: Sequence[float], strides: Sequence[int],
                 offset: float) -> None:
        super().__init__()
        if len(sizes) == 1:
            sizes = list(sizes) * len(strides)
        self.strides = list(strides)
        self.offset = offset
        self.cells = [self._cell(s, ratios) for s in sizes]
        self.num_anchors = [len(c) for c in self.cells]

    @staticmethod
    def _cell(sizes: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
        out = []
        for size in sizes:
            area = float(size) ** 2
            for r in ratios:
                w = math.sqrt(area / r)
                h = r * w
                out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(out, dtype=torch.float32)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Anchors of each level, (H*W*A, 4) in (y, x, anchor) order, as the head's outputs are flattened."""
        out = []
        for f, stride, cell in zip(feats, self.strides, self.cells):
            h, w = f.shape[-2:]
            dev = f.device
            xs = (torch.arange(w, device=dev, dtype=torch.float32) + self.offset) * stride
            ys = (torch.arange(h, device=dev, dtype=torch.float32) + self.offset) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + cell.to(dev).view(1, -1, 4)).reshape(-1, 4))
        return out


class RPN(nn.Module):
    """Region proposal network with detectron2's labels, losses and proposal selection."""

    def __init__(self, cfg: Any, in_features: Sequence[str], channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        r = cfg.MODEL.RPN
        self.in_features = list(in_features)
        self.anchors = AnchorGenerator(cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0],
                                       strides, cfg.MODEL.ANCHOR_GENERATOR.OFFSET)
        if len(set(self.anchors.num_anchors)) != 1:
            raise ValueError("every RPN level needs the same number of anchors (sizes per level)")
        self.head = RPNHead(channels, self.anchors.num_anchors[0])
        lo, hi = r.IOU_THRESHOLDS
        self.matcher = Matcher(hi, lo, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(r.BATCH_SIZE_PER_IMAGE, r.POSITIVE_FRACTION)
        self.coder = BoxCoder(tuple(r.BBOX_REG_WEIGHTS))
        self.batch_per_image = r.BATCH_SIZE_PER_IMAGE
        self.beta = r.SMOOTH_L1_BETA
        self.loss_weight = {"loss_rpn_cls": r.LOSS_WEIGHT, "loss_rpn_loc": r.BBOX_REG_LOSS_WEIGHT * r.LOSS_WEIGHT}
        self.topk = {True: (r.PRE_NMS_TOPK_TRAIN, r.POST_NMS_TOPK_TRAIN), False: (r.PRE_NMS_TOPK_TEST,
                                                                                  r.POST_NMS_TOPK_TEST)}
        self.nms_thresh = r.NMS_THRESH

    def forward(self, feats: dict[str, torch.Tensor], sizes: Sequence[tuple[int, int]],
                targets: Sequence[dict[str, torch.Tensor]] | None) -> tuple[list[torch.Tensor], dict]:
        x = [feats[f] for f in self.in_features]
        logits, deltas = self.head(x)
        n = x[0].shape[0]
        # (N, A, H, W) -> (N, H*W*A); (N, A*4, H, W) -> (N, H*W*A, 4)
        logits = [lg.permute(0, 2, 3, 1).reshape(n, -1) for lg in logits]
        deltas = [d.view(n, -1, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
                  for d in deltas]
        anchors = self.anchors(x)
        proposals = self._proposals(anchors, logits, deltas, sizes)
        losses = {}
        if self.training:
            losses = self._losses(anchors, logits, deltas, targets)
        return proposals, losses

    @torch.no_grad()
    def _proposals(self, anchors: list[torch.Tensor], logits: list[torch.Tensor], deltas: list[torch.Tensor],
                   sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        pre, post = self.topk[self.training]
        n = logits[0].shape[0]
        boxes_l, scores_l, level_l = [], [], []
        for lvl, (a, lg, d) in enumerate(zip(anchors, logits, deltas)):
            k = min(pre, lg.shape[1])
            scores, idx = lg.float().topk(k, dim=1)
            dsel = d.float().gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
            boxes = self.coder.decode_single(dsel.reshape(-1, 4), a[idx.reshape(-1)]).view(n, k, 4)
            boxes_l.append(boxes)
            scores_l.append(scores)
            level_l.append(torch.full((k,), lvl, dtype=torch.int64, device=scores.device))
        boxes, scores, levels = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(level_l)
        out = []
        for i in range(n):
            b, s, lv = boxes[i], scores[i], levels
            ok = torch.isfinite(b).all(dim=1) & torch.isfinite(s)
            if not ok.all():
                b, s, lv = b[ok], s[ok], lv[ok]
            b = clip_boxes(b, sizes[i])
            keep = ((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)
            b, s, lv = b[keep], s[keep], lv[keep]
            keep = batched_nms(b, s, lv, self.nms_thresh)[:post]
            out.append(b[keep])
        return out

    def _losses(self, anchors: list[torch.Tensor], logits: list[torch.Tensor], deltas: list[torch.Tensor],
                targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        all_anchors = torch.cat(anchors)
        labels, gt_deltas = [], []
        for t in targets:
            gt = t["boxes"]
            if gt.numel() == 0:
                lab = torch.zeros(len(all_anchors), dtype=torch.float32, device=all_anchors.device)
                matched = torch.zeros_like(all_anchors)
            else:
                idx = self.matcher(box_iou(gt, all_anchors))
                lab = (idx >= 0).float()
                lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0
                matched = gt[idx.clamp(min=0)]
            labels.append(lab)
            gt_deltas.append(self.coder.encode_single(matched, all_anchors))
        pos, neg = self.sampler([lab.long().clamp(min=-1) for lab in labels])
        sampled = []
        for lab, p, q in zip(labels, pos, neg):
            s = torch.full_like(lab, -1.0)
            s[q.bool()] = 0.0
            s[p.bool()] = 1.0
            sampled.append(s)
        gt_labels = torch.stack(sampled)
        logit = torch.cat(logits, dim=1).float()
        delta = torch.cat(deltas, dim=1).float()
        fg = gt_labels == 1
        valid = gt_labels >= 0
        loc = smooth_l1(delta[fg], torch.stack(gt_deltas)[fg], self.beta)
        cls = F.binary_cross_entropy_with_logits(logit[valid], gt_labels[valid], reduction="sum")
        norm = self.batch_per_image * len(targets)
        return {"loss_rpn_cls": cls / norm * self.loss_weight["loss_rpn_cls"],
                "loss_rpn_loc": loc / norm * self.loss_weight["loss_rpn_loc"]}
