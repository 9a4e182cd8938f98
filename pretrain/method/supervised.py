"""METHOD supervised: the labelled baseline that places a self-supervised number (the "supervised ceiling").

The same backbone as the Siamese methods, a linear classifier on its pooled features, cross-entropy on the
same two augmented views the Siamese methods see (averaged over the views), trained by the same loop,
optimizer and schedules. With TRAIN.TIME_BUDGET_S it trains for the wall time a pretraining run took, so
the two are compared at equal cost. Not part of the paper's method: RIM and IFM do not apply to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.method.models import build_backbone
from rimifm.errors import UserError


class Supervised(nn.Module):
    """Backbone + linear head trained with labels; the loop's interface of the Siamese methods."""

    name = "supervised"

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.classifier = None  # no online linear classifier: the head is the classifier

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> Supervised:
        m = cfg.MODEL
        return cls(build_backbone(m.BACKBONE, m.CIFAR_STEM, m.ZERO_INIT_RESIDUAL, m.CIFAR_STEM_PADDING), num_classes)

    def attach_classifier(self, num_classes: int, views: str = "masked") -> None:
        raise UserError("METHOD supervised trains its own classifier: set ONLINE_LINEAR.ENABLED false")

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, rim_seed: int = 0, ifm_seed: int = 0,
                ifm_active: bool = True, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Cross-entropy of both views (labels < 0 ignored); z_std is the spread of the normalised features."""
        if labels is None or not bool((labels >= 0).any()):
            raise UserError("METHOD supervised got a batch without labels; it needs labelled training images")
        labels = labels.to(v1.device)
        h1, h2 = self.backbone(v1), self.backbone(v2)
        loss = 0.5 * (F.cross_entropy(self.head(h1), labels, ignore_index=-1)
                      + F.cross_entropy(self.head(h2), labels, ignore_index=-1))
        with torch.no_grad():
            z_std = F.normalize(torch.cat([h1, h2]).float(), dim=1).std(dim=0).mean()
        return {"loss": loss, "base_loss": loss.detach(), "z_std": z_std}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        return None
