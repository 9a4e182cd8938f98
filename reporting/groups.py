"""Runs of one experiment grouped over their seeds: each metric's mean and its uncertainty, and the delta
against the base method with whether it lies within noise.

The uncertainty of a mean is the sample std over seeds when there are two or more runs; for a single run
it is the sampling error of its evaluation set, as the run's record gives it (`Run.se`: the binomial SE
of a top-1 on the record's `num_val` images, or the bootstrap SE of an AP from the record's
`metrics_se`), and unknown when the record gives none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reporting.render import DASH
from reporting.runs import Pretraining, Run, binomial_se

#: what an uncertainty is: std over seeds, binomial or bootstrap SE of one run's evaluation set, or unknown
UNC_KINDS = ("sd", "se-binomial", "se-bootstrap", "unknown")


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value), order-independent."""
    vals = sorted(float(v) for v in values)
    m = math.fsum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def seed_text(seed: Any) -> str:
    """A run's seed as text; (pretraining seed, fine-tuning seed) as 'a/b', '-' for none."""
    if isinstance(seed, tuple):
        return "/".join(seed_text(s) for s in seed)
    return DASH if seed is None else str(seed)


@dataclass(frozen=True)
class Stat:
    """A metric over the runs of one row: mean, its uncertainty (None: unknown), what that is, and n."""

    mean: float
    unc: float | None
    kind: str  # one of UNC_KINDS
    n: int


def summarise(runs: Iterable[Run], metric: str) -> Stat | None:
    """Mean and uncertainty of `metric` over runs (None when no run has it): the sample std for n >= 2,
    the run's own SE for n == 1 (kind 'unknown' and no value when its record gives none)."""
    having = [r for r in runs if metric in r.metrics]
    if not having:
        return None
    m, s = mean_std([r.metrics[metric] for r in having])
    if len(having) >= 2:
        return Stat(m, s, "sd", len(having))
    se = having[0].se.get(metric)
    return Stat(m, None, "unknown", 1) if se is None else Stat(m, se[0], se[1], 1)


@dataclass(frozen=True)
class Delta:
    """mean(row) - mean(base row) and its combined uncertainty sqrt(u_a^2 + u_b^2) (None: one is unknown)."""

    value: float
    combined: float | None

    @property
    def within_noise(self) -> bool | None:
        """|Δ| smaller than twice the combined uncertainty (a tie is not within); None when undecided."""
        if self.combined is None:
            return None
        bound = 2.0 * self.combined
        return abs(self.value) < bound and not math.isclose(abs(self.value), bound, rel_tol=1e-9, abs_tol=1e-12)

    @property
    def noise_text(self) -> str:
        """The CSV word: within, outside or unknown."""
        return {True: "within", False: "outside", None: "unknown"}[self.within_noise]


@dataclass
class Group:
    """Runs of one experiment differing only in their seed."""

    pre: Pretraining
    eval_key: tuple
    runs: list[Run]

    def stat(self, metric: str) -> Stat | None:
        return summarise(self.runs, metric)

    def seeds(self) -> str:
        return ";".join(sorted(seed_text(r.seed) for r in self.runs))


def group_runs(runs: Iterable[Run]) -> dict[tuple, Group]:
    """Group evaluation (or pretraining) runs by (pretraining, evaluation), i.e. everything but seeds."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = (run.pre, run.eval_key)
        groups.setdefault(key, Group(run.pre, run.eval_key, [])).runs.append(run)
    for g in groups.values():
        g.runs.sort(key=lambda r: r.path)
    return groups


def compare(group: Group, groups: dict[tuple, Group], metric: str) -> Delta | None:
    """The delta of a row against its base row (same method, no RIM/IFM, same backbone, data, epochs,
    recipe and evaluation), with the combined uncertainty of the two means; None without a base row."""
    if not group.pre.ours or group.pre.is_base:
        return None
    base = groups.get((group.pre.base(), group.eval_key))
    a, b = group.stat(metric), base.stat(metric) if base else None
    if a is None or b is None:
        return None
    combined = None if a.unc is None or b.unc is None else math.hypot(a.unc, b.unc)
    return Delta(a.mean - b.mean, combined)


__all__ = ["UNC_KINDS", "Delta", "Group", "Stat", "binomial_se", "compare", "group_runs", "mean_std",
           "seed_text", "summarise"]
