"""Runs of one experiment grouped over their seeds: mean ± std per metric, and the delta against the base method."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reporting.render import DASH
from reporting.runs import Pretraining, Run


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


@dataclass
class Group:
    """Runs of one experiment differing only in their seed."""

    pre: Pretraining
    eval_key: tuple
    runs: list[Run]

    def stat(self, metric: str) -> tuple[float, float | None, int] | None:
        vals = [r.metrics[metric] for r in self.runs if metric in r.metrics]
        if not vals:
            return None
        m, s = mean_std(vals)
        return m, s, len(vals)

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


def delta(group: Group, groups: dict[tuple, Group], metric: str) -> float | None:
    """mean(row) - mean(base row): same method, no RIM/IFM, same backbone, data, epochs, recipe and evaluation."""
    if not group.pre.ours or group.pre.is_base:
        return None
    base = groups.get((group.pre.base(), group.eval_key))
    a, b = group.stat(metric), base.stat(metric) if base else None
    if a is None or b is None:
        return None
    return a[0] - b[0]


__all__ = ["Group", "delta", "group_runs", "mean_std", "seed_text"]
