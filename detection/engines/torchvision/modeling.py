"""Faster R-CNN (ResNet-C4 and ResNet-FPN) on torchvision pieces, behaving as detectron2's from the same config.

Reused from torchvision: the ResNet (`torchvision.models.resnet*`, v1.5 = detectron2's
STRIDE_IN_1X1 False), `RPNHead` (3x3 conv + objectness/deltas 1x1 convs, normal(0.01) init, as
detectron2's StandardRPNHead), `Matcher`, `BalancedPositiveNegativeSampler` and `BoxCoder` from
`torchvision.models.detection._utils` (the same matching with low-quality matches, the same
randperm sampling and the same box parametrisation with the same clamp as detectron2), and
`torchvision.ops` (roi_align, batched_nms, box_iou, FrozenBatchNorm2d).

Written here because torchvision's versions differ from detectron2's: anchors (torchvision rounds
the cell anchors, detectron2 does not, and has OFFSET), the RPN losses (detectron2: L1 / smooth-L1
with SMOOTH_L1_BETA and BCE, both summed and divided by BATCH_SIZE_PER_IMAGE x images; torchvision:
smooth-L1 beta 1/9 and a mean), proposal filtering (detectron2 keeps boxes with positive size,
torchvision drops those under 1e-3), the RoI pooler (aligned=True RoIAlign with detectron2's
level assignment), the box loss (smooth-L1 with SMOOTH_L1_BETA, 0 = L1) and detectron2's box head
and predictor initialisation.

Known remaining differences to detectron2: the random choices (anchor / RoI sampling) draw from
torch's generator in another order, so runs are not bit-identical to detectron2's; SyncBN under
DDP on CPU is our all-reduce BN (torch's SyncBatchNorm needs GPUs); on GPU the engine trains in
bf16 autocast where detectron2 uses fp32 (or fp16 with SOLVER.AMP.ENABLED).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d, batched_nms, box_iou, roi_align

from detection.engines.torchvision.config import is_fpn

#: torchvision's names of res2..res5
STAGES = ("layer1", "layer2", "layer3", "layer4")


# ----------------------------------------------------------------------------- norms


class NaiveSyncBatchNorm2d(nn.BatchNorm2d):
    """BN whose batch statistics are averaged over all processes (detectron2's naiveSyncBN).

    With one process, or in eval mode, it is plain BatchNorm2d. Works on gloo (CPU) and NCCL.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dtype = x.dtype
        x = x.float()
        mean = x.mean(dim=(0, 2, 3))
        meansqr = (x * x).mean(dim=(0, 2, 3))
        vec = all_reduce(torch.cat([mean, meansqr])) / dist.get_world_size()
        mean, meansqr = vec.split(self.num_features)
        var = meansqr - mean * mean
        with torch.no_grad():
            n = x.numel() / x.shape[1] * dist.get_world_size()
            self.num_batches_tracked += 1
            # momentum None (precise BN): cumulative average, as BatchNorm2d does
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean += m * (mean.detach() - self.running_mean)
            self.running_var += m * (var.detach() * n / max(n - 1, 1) - self.running_var)
        invstd = torch.rsqrt(var + self.eps)
        scale = self.weight * invstd
        bias = self.bias - mean * scale
        return (x * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)).to(dtype)


def make_norm(kind: str, channels: int) -> nn.Module | None:
    """The norm layer a config names ("" = none), as detectron2's get_norm.

    SyncBN is torch's SyncBatchNorm (plain BN in one process); the engine swaps it for
    NaiveSyncBatchNorm2d under DDP on CPU, where torch's needs GPUs.
    """
    if kind == "":
        return None
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if kind == "naiveSyncBN":
        return NaiveSyncBatchNorm2d(channels)
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if kind == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {kind!r}")


def _norm_layer(kind: str) -> Any:
    """norm_layer factory for torchvision's ResNet (Identity when there is no norm)."""
    return lambda c: make_norm(kind, c) or nn.Identity()


BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)
NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def freeze_norms(module: nn.Module) -> nn.Module:
    """Replace every BN in `module` by FrozenBatchNorm2d holding the same statistics (detectron2's convert)."""
    if isinstance(module, BN_TYPES):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module


def c2_msra_fill(module: nn.Module) -> None:
    """detectron2/caffe2 MSRA init: kaiming normal (fan_out, relu), zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2/caffe2 Xavier init: kaiming uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ConvNorm(nn.Sequential):
    """Conv (bias only without a norm), optional norm, optional ReLU."""

    def __init__(self, cin: int, cout: int, k: int, norm: str, relu: bool, init: str = "msra") -> None:
        layers: list[tuple[str, nn.Module]] = [("conv", nn.Conv2d(cin, cout, k, padding=k // 2, bias=norm == ""))]
        (c2_msra_fill if init == "msra" else c2_xavier_fill)(layers[0][1])
        n = make_norm(norm, cout)
        if n is not None:
            layers.append(("norm", n))
        if relu:
            layers.append(("relu", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))


# ----------------------------------------------------------------------------- backbone


def _resnet(depth: int, norm: str) -> torchvision.models.ResNet:
    return getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=_norm_layer(norm))


class ResNetBody(nn.Module):
    """torchvision ResNet stem and stages (names as torchvision's: conv1, bn1, layer1..), returning res2.."""

    def __init__(self, net: torchvision.models.ResNet, stages: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.stages = stages
        for name in STAGES[:stages]:
            setattr(self, name, getattr(net, name))
        self.channels = {f"res{i + 2}": _out_channels(getattr(net, STAGES[i])) for i in range(stages)}
        self.strides = {f"res{i + 2}": 2 ** (i + 2) for i in range(stages)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i in range(self.stages):
            x = getattr(self, STAGES[i])(x)
            out[f"res{i + 2}"] = x
        return out

    def freeze(self, freeze_at: int) -> None:
        """detectron2's FREEZE_AT: 1 = stem, 2 = stem + res2, ...: no gradients, FrozenBN statistics."""
        parts = [("conv1", "bn1")] + [(s,) for s in STAGES[:self.stages]]
        for names in parts[:max(freeze_at, 0)]:
            for name in names:
                module = getattr(self, name)
                for p in module.parameters():
                    p.requires_grad_(False)
                new = freeze_norms(module)
                if new is not module:
                    setattr(self, name, new)


def _out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


class FPN(nn.Module):
    """detectron2's FPN: 1x1 laterals, 3x3 outputs, nearest 2x top-down, P6 = max-pool(k=1, s=2) of the top."""

    def __init__(self, body: ResNetBody, in_features: Sequence[str], out_channels: int, norm: str,
                 fuse: str) -> None:
        super().__init__()
        self.body = body
        self.in_features = list(in_features)
        self.fuse = fuse
        self.lateral = nn.ModuleList()
        self.output = nn.ModuleList()
        for name in self.in_features:
            self.lateral.append(ConvNorm(body.channels[name], out_channels, 1, norm, relu=False, init="xavier"))
            self.output.append(ConvNorm(out_channels, out_channels, 3, norm, relu=False, init="xavier"))
        levels = [int(n[3:]) for n in self.in_features]
        self.out_names = [f"p{lv}" for lv in levels] + [f"p{levels[-1] + 1}"]
        self.strides = {f"p{lv}": 2 ** lv for lv in levels + [levels[-1] + 1]}
        self.channels = {n: out_channels for n in self.out_names}
        self.size_divisibility = self.strides[self.out_names[-2]]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        prev = self.lateral[-1](feats[self.in_features[-1]])
        outs = [self.output[-1](prev)]
        for i in range(len(self.in_features) - 2, -1, -1):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = self.lateral[i](feats[self.in_features[i]]) + top_down
            if self.fuse == "avg":
                prev = prev / 2
            outs.insert(0, self.output[i](prev))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0))
        return dict(zip(self.out_names, outs))


class C4Backbone(nn.Module):
    """ResNet up to res4 (stride 16); res5 goes to the box head."""

    def __init__(self, body: ResNetBody) -> None:
        super().__init__()
        self.body = body
        self.strides = {"res4": 16}
        self.channels = {"res4": body.channels["res4"]}
        self.size_divisibility = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"res4": self.body(x)["res4"]}


# ----------------------------------------------------------------------------- RPN


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


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Summed smooth-L1 as detectron2 defines it (beta < 1e-5 is plain L1)."""
    if beta < 1e-5:
        return (pred - target).abs().sum()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


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


# ----------------------------------------------------------------------------- RoI heads


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
        self.out_dim = _out_channels(res5)
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


# ----------------------------------------------------------------------------- the detector


class FasterRCNN(nn.Module):
    """Normalise and pad the images, backbone, RPN, RoI heads; losses in training, detections in eval."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        m = cfg.MODEL
        self.depth, self.resnet_norm = int(m.RESNETS.DEPTH), str(m.RESNETS.NORM)
        net = _resnet(m.RESNETS.DEPTH, m.RESNETS.NORM)
        self.fpn = is_fpn(cfg)
        if self.fpn:
            body = ResNetBody(net, 4)
            body.freeze(m.BACKBONE.FREEZE_AT)
            self.backbone: nn.Module = FPN(body, m.FPN.IN_FEATURES, m.FPN.OUT_CHANNELS, m.FPN.NORM, m.FPN.FUSE_TYPE)
            b = m.ROI_BOX_HEAD
            head: nn.Module = ConvFCHead(m.FPN.OUT_CHANNELS, b.POOLER_RESOLUTION, b.NUM_CONV, b.CONV_DIM, b.NUM_FC,
                                         b.FC_DIM, b.NORM)
        else:
            body = ResNetBody(net, 3)
            body.freeze(m.BACKBONE.FREEZE_AT)
            self.backbone = C4Backbone(body)
            extra = make_norm(m.RESNETS.NORM, _out_channels(net.layer4)) \
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
