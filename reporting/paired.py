"""The paired t-test across seeds: is a variant's difference to its base more than seed-to-seed noise?

Each seed gives one pair (variant, base) trained and evaluated alike apart from the variant's change, so
the differences d_i cancel what the seeds share. t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of
freedom; the two-sided p-value comes from Student's t distribution, computed here through the regularised
incomplete beta function (no SciPy): P(|T| >= t) = I_x(df / 2, 1 / 2) with x = df / (df + t^2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from rimifm.errors import UserError

#: the level below which a difference is called significant
ALPHA = 0.05
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1 (got {df})")
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class PairedTest:
    """The paired comparison of a variant with its base over the seeds both have."""

    n: int
    mean: float  # mean of the differences (variant - base)
    sd: float  # their sample standard deviation
    t: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    @property
    def verdict(self) -> str:
        """'significant' (p < 0.05) or 'within noise'."""
        return "significant" if self.significant else "within noise"


def paired_test(variant: Mapping[int, float], base: Mapping[int, float]) -> PairedTest:
    """Paired t-test of `variant` against `base`, both {seed: value}, over their common seeds (at least 2)."""
    seeds = sorted(set(variant) & set(base))
    if len(seeds) < 2:
        raise UserError(f"a paired test across seeds needs at least 2 seeds that both runs have (got {len(seeds)}: "
                        f"{seeds}); run more seeds, e.g. --seeds 0 1 2")
    diffs = [float(variant[s]) - float(base[s]) for s in seeds]
    n = len(diffs)
    mean = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return PairedTest(n, mean, sd, t, t_two_sided_p(t, n - 1))


__all__ = ["ALPHA", "PairedTest", "paired_test", "regularized_incomplete_beta", "t_two_sided_p"]
