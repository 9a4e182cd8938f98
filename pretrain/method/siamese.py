"""BYOL and SimSiam on one Siamese base, with RIM and IFM as independent switches.

One forward call computes the whole training loss of a step, so the module can be wrapped in
DistributedDataParallel as it is. Notation follows docs/method.md (section "Notation"):
h = backbone features, z = projector output, p = predictor output; primes are the target branch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.method import ifm as ifm_ops
from pretrain.method.losses import DISTANCES, LOSS_SCALES, VIEW_SCALES, mixed_target_loss, symmetric_loss
from pretrain.method.models import (
    build_backbone,
    byol_predictor,
    byol_projector,
    ema_update,
    simsiam_predictor,
    simsiam_projector,
)
from pretrain.method.rim import random_image_masking
from rimifm.precise_bn import frozen_bn_statistics


@dataclass(frozen=True)
class RIMSettings:
    enabled: bool = False
    ratio: float = 0.3
    patch_size: int = 0
    fill: str = "zero"
    prob: float = 0.5
    branch: str = "online"


@dataclass(frozen=True)
class IFMSettings:
    enabled: bool = False
    alpha: float = 1.0
    level: str = "backbone"
    target: str = "feature"
    partner: str = "permute"
    weight: float = 1.0
    start_epoch: int = 0


class Siamese(nn.Module):
    """Shared parts: online backbone/projector/predictor, RIM on the inputs, IFM on the features."""

    name = "siamese"

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module,
                 rim: RIMSettings = RIMSettings(), ifm: IFMSettings = IFMSettings()):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor
        self.rim = rim
        self.ifm = ifm
        self.classifier: nn.Linear | None = None  # the online linear classifier (attach_classifier)
        self.classifier_views = "masked"  # what it trains on under RIM (attach_classifier)
        self.distance = DISTANCES[self.name]
        self.view_scale = VIEW_SCALES[self.name]  # BYOL sums its two directions, SimSiam averages them

    # -- the target branch: BYOL uses EMA copies, SimSiam the online nets under stop-gradient --
    def target_nets(self) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def target_shares_online_pass(self) -> bool:
        """True when the target outputs equal the detached online outputs (SimSiam on clean inputs)."""
        return False

    @torch.no_grad()
    def after_step(self, progress: float) -> float | None:
        """Hook run after each optimizer step with training progress in [0, 1]; returns EMA momentum."""
        return None

    def attach_classifier(self, num_classes: int, views: str = "masked") -> None:
        """Add solo-learn's online linear classifier: a Linear on detached backbone features (no BN). With RIM,
        `views` "clean" feeds it from a gradient-free pass of the online backbone on the unmasked views (its BN on
        batch statistics, the running ones untouched) instead of the masked views' features."""
        if views not in ("masked", "clean"):
            raise ValueError(f"online classifier views {views!r}: masked or clean")
        self.classifier = nn.Linear(self.backbone.feature_dim, num_classes)
        self.classifier_views = views

    def classifier_features(self, v1, v2, h1, h2) -> tuple[torch.Tensor, torch.Tensor]:
        """The (detached) features the online classifier trains on this step."""
        if not (self.rim.enabled and self.classifier_views == "clean"):
            return h1.detach(), h2.detach()
        with torch.no_grad(), frozen_bn_statistics(self.backbone):
            return self.backbone(v1), self.backbone(v2)

    def _mask(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        r = self.rim
        masked, _ = random_image_masking(x, r.ratio, r.patch_size, r.fill, r.prob, generator)
        return masked

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, rim_seed: int = 0, ifm_seed: int = 0,
                ifm_active: bool = True, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss of one step on two batches of views; returns loss, base_loss, ifm_loss and z_std.

        With a classifier attached and `labels` given, the online linear classifier's cross-entropy on
        the detached features of both views (averaged over the views, labels < 0 ignored) is added to
        the loss as `online_linear_loss`; it trains the classifier only.
        """
        o1, o2 = v1, v2
        t1, t2 = v1, v2
        if self.rim.enabled:
            gen = torch.Generator(device=v1.device)
            gen.manual_seed(rim_seed)
            o1, o2 = self._mask(v1, gen), self._mask(v2, gen)
            if self.rim.branch == "both":
                t1, t2 = o1, o2

        # online branch: one call per view so BatchNorm sees each view's batch as in the papers
        h1, h2 = self.backbone(o1), self.backbone(o2)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)

        # target branch, no gradient
        t_backbone, t_projector = self.target_nets()
        with torch.no_grad():
            if self.target_shares_online_pass() and t1 is o1:
                th1, th2, tz1, tz2 = h1.detach(), h2.detach(), z1.detach(), z2.detach()
            else:
                th1, th2 = t_backbone(t1), t_backbone(t2)
                tz1, tz2 = t_projector(th1), t_projector(th2)

        base = symmetric_loss(self.distance, p1, p2, tz1, tz2, self.view_scale)
        out = {"base_loss": base.detach()}
        loss = base
        if self.ifm.enabled and ifm_active and self.ifm.weight > 0:
            ifm_loss = self._ifm_loss((h1, h2, z1, z2), (th1, th2, tz1, tz2), t_projector, ifm_seed)
            loss = base + self.ifm.weight * ifm_loss
            out["ifm_loss"] = ifm_loss.detach()
        # the clean pass runs on every process that got labels, labelled or not, as SyncBN exchanges need
        f1, f2 = self.classifier_features(v1, v2, h1, h2) if self.classifier is not None and labels is not None \
            else (None, None)
        if f1 is not None and bool((labels >= 0).any()):
            labels = labels.to(h1.device)
            ce = 0.5 * (F.cross_entropy(self.classifier(f1), labels, ignore_index=-1)
                        + F.cross_entropy(self.classifier(f2), labels, ignore_index=-1))
            loss = loss + ce
            out["online_linear_loss"] = ce.detach()
        out["loss"] = loss
        with torch.no_grad():
            zn = F.normalize(torch.cat([z1, z2]).float(), dim=1)
            out["z_std"] = zn.std(dim=0).mean()
        return out

    def _ifm_loss(self, online, target, t_projector: nn.Module, seed: int) -> torch.Tensor:
        """L_IFM = s [D(phat1, sg zhat'2) + D(phat2, sg zhat'1)], s the base loss's view scale, one (lambda, partner) draw."""
        h1, h2, z1, z2 = online
        th1, th2, tz1, tz2 = target
        s = self.ifm
        lam, perm = ifm_ops.sample_mixing(h1.shape[0], s.alpha, s.partner, np.random.default_rng(seed))
        lam, perm = lam.to(h1.device), perm.to(h1.device)

        # virtual online samples, through the heads in their own call (own BatchNorm statistics)
        if s.level == "backbone":
            ph1 = self.predictor(self.projector(ifm_ops.mix(h1, lam, perm)))
            ph2 = self.predictor(self.projector(ifm_ops.mix(h2, lam, perm)))
        else:
            ph1 = self.predictor(ifm_ops.mix(z1, lam, perm))
            ph2 = self.predictor(ifm_ops.mix(z2, lam, perm))

        if s.target == "loss":
            return self.view_scale * (mixed_target_loss(self.distance, ph1, tz2, lam, perm).mean()
                                      + mixed_target_loss(self.distance, ph2, tz1, lam, perm).mean())
        with torch.no_grad():
            if s.target == "output":
                tt1, tt2 = ifm_ops.mix_normalised(tz1, lam, perm), ifm_ops.mix_normalised(tz2, lam, perm)
            elif s.level == "backbone":
                tt1 = t_projector(ifm_ops.mix(th1, lam, perm))
                tt2 = t_projector(ifm_ops.mix(th2, lam, perm))
            else:
                tt1, tt2 = ifm_ops.mix(tz1, lam, perm), ifm_ops.mix(tz2, lam, perm)
        return symmetric_loss(self.distance, ph1, ph2, tt1, tt2, self.view_scale)


class BYOL(Siamese):
    """BYOL: the target is an exponential moving average of the online backbone and projector."""

    name = "byol"

    def __init__(self, backbone, projector, predictor, rim=RIMSettings(), ifm=IFMSettings(),
                 base_momentum: float = 0.99, final_momentum: float = 1.0, loss_scale: str = "sum"):
        super().__init__(backbone, projector, predictor, rim, ifm)
        if loss_scale not in LOSS_SCALES:
            raise ValueError(f"BYOL loss_scale {loss_scale!r}: choose one of {', '.join(LOSS_SCALES)}")
        self.view_scale = LOSS_SCALES[loss_scale]
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(projector)
        for p in list(self.target_backbone.parameters()) + list(self.target_projector.parameters()):
            p.requires_grad_(False)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    def target_nets(self):
        return self.target_backbone, self.target_projector

    def momentum_at(self, progress: float) -> float:
        """Cosine increase from base to final momentum over training (BYOL eq. in sec. 3.2)."""
        progress = min(max(progress, 0.0), 1.0)
        return self.final_momentum - (self.final_momentum - self.base_momentum) * (np.cos(np.pi * progress) + 1) / 2

    @torch.no_grad()
    def after_step(self, progress: float) -> float:
        m = float(self.momentum_at(progress))
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)
        return m


class SimSiam(Siamese):
    """SimSiam: the target is the online network itself under stop-gradient."""

    name = "simsiam"

    def target_nets(self):
        return self.backbone, self.projector

    def target_shares_online_pass(self) -> bool:
        return True


def build_method(cfg) -> Siamese:
    """The method module described by a pretraining config."""
    backbone = build_backbone(cfg.MODEL.BACKBONE, cfg.MODEL.CIFAR_STEM, cfg.MODEL.ZERO_INIT_RESIDUAL,
                              cfg.MODEL.CIFAR_STEM_PADDING)
    rim = RIMSettings(cfg.RIM.ENABLED, cfg.RIM.RATIO, cfg.RIM.PATCH_SIZE, cfg.RIM.FILL, cfg.RIM.PROB, cfg.RIM.BRANCH)
    ifm = IFMSettings(cfg.IFM.ENABLED, cfg.IFM.ALPHA, cfg.IFM.LEVEL, cfg.IFM.TARGET, cfg.IFM.PARTNER,
                      cfg.IFM.WEIGHT, cfg.IFM.START_EPOCH)
    m = cfg.MODEL
    layers = m.PROJ_LAYERS
    if cfg.METHOD == "byol":
        projector = byol_projector(backbone.feature_dim, m.PROJ_HIDDEN_DIM, m.PROJ_OUTPUT_DIM, layers or 2)
        predictor = byol_predictor(m.PROJ_OUTPUT_DIM, m.PRED_HIDDEN_DIM)
        return BYOL(backbone, projector, predictor, rim, ifm, cfg.BYOL.BASE_MOMENTUM, cfg.BYOL.FINAL_MOMENTUM,
                    cfg.BYOL.LOSS_SCALE)
    projector = simsiam_projector(backbone.feature_dim, m.PROJ_HIDDEN_DIM, m.PROJ_OUTPUT_DIM, layers or 3)
    predictor = simsiam_predictor(m.PROJ_OUTPUT_DIM, m.PRED_HIDDEN_DIM)
    return SimSiam(backbone, projector, predictor, rim, ifm)
