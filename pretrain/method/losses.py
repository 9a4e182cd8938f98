"""Loss functions of the negative-free Siamese methods, as pure per-sample functions.

The caller passes targets already detached (stop-gradient); these functions do not detach, so
they can be checked against hand-computed values and gradients in isolation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_distance(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL: 2 - 2 cos(p, z) per sample (the squared distance of the normalised vectors)."""
    return 2.0 - 2.0 * F.cosine_similarity(p, z, dim=-1)


def simsiam_distance(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam: -cos(p, z) per sample."""
    return -F.cosine_similarity(p, z, dim=-1)


DISTANCES = {"byol": byol_distance, "simsiam": simsiam_distance}


#: how each method combines its two directions, as published: BYOL adds them (L + L~, the paper's
#: eq. 2 and solo-learn), SimSiam averages them (1/2 D(p1, z2) + 1/2 D(p2, z1), the paper's eq. 2)
VIEW_SCALES = {"byol": 1.0, "simsiam": 0.5}
#: BYOL.LOSS_SCALE: `sum` (the default, above) or `mean`, the scale solo-learn's BYOL had when its README's
#: CIFAR numbers were made (solo-learn fca55e3, 2021-07-09: `loss(p1, z2) / 2 + loss(p2, z1) / 2`; summed
#: from 365f2aa, 2021-07-14, with the README numbers unchanged). With LARS, whose trust ratio skips biases and
#: BN, halving the loss roughly halves their steps while the trust ratio largely cancels it for the other
#: weights (not wholly: weight decay and LR clipping enter the ratio): the two scales train differently.
LOSS_SCALES = {"sum": 1.0, "mean": 0.5}


def symmetric_loss(distance, p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
                   scale: float = 0.5) -> torch.Tensor:
    """scale * [D(p1, t2) + D(p2, t1)], each term averaged over the batch: each view predicts the other.

    `scale` is VIEW_SCALES[method]: 1 sums the two directions (BYOL), 1/2 averages them (SimSiam).
    """
    return scale * (distance(p1, t2).mean() + distance(p2, t1).mean())


def mixed_target_loss(
    distance, p: torch.Tensor, z: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor
) -> torch.Tensor:
    """IFM.TARGET=loss (i-Mix style): lambda D(p, z) + (1 - lambda) D(p, z[perm]) per sample."""
    lam = lam.to(device=p.device, dtype=p.dtype)
    return lam * distance(p, z) + (1.0 - lam) * distance(p, z[perm.to(p.device)])
