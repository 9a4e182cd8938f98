"""IFM, in-batch feature mixing: virtual positive pairs made by mixing features within the batch.

Pure functions; the method classes decide where the features come from.
See docs/method.md, section "IFM: in-batch feature mixing".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PARTNERS = ("permute", "reverse")


def sample_mixing(
    batch: int, alpha: float = 1.0, partner: str = "permute", rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (lambda, partner index) for a local batch.

    lambda ~ Beta(alpha, alpha), then max(lambda, 1 - lambda) so each virtual sample stays
    dominated by its own image; partners are a random permutation or the reversed batch.
    """
    if batch < 2:
        raise ValueError("IFM needs at least 2 samples per process to mix")
    if partner not in PARTNERS:
        raise ValueError(f"IFM partner {partner!r} is not one of {PARTNERS}")
    rng = rng if rng is not None else np.random.default_rng()
    lam = rng.beta(alpha, alpha, size=batch)
    lam = np.maximum(lam, 1.0 - lam)
    perm = rng.permutation(batch) if partner == "permute" else np.arange(batch)[::-1].copy()
    return torch.from_numpy(lam).float(), torch.from_numpy(perm).long()


def mix(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """lambda_i * x_i + (1 - lambda_i) * x_perm(i), row-wise."""
    lam = lam.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * x + (1.0 - lam) * x[perm.to(x.device)]


def mix_normalised(z: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """IFM.TARGET=output: mix the L2-normalised target outputs."""
    return mix(F.normalize(z, dim=1), lam, perm)
