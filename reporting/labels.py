"""Row labels of the tables: the method plus the RIM/IFM knobs a run changed from the pretraining defaults."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from reporting.render import DASH
from reporting.runs import METHOD_NAMES, Pretraining


def default_knobs() -> dict[str, dict[str, Any]]:
    """Default RIM/IFM settings of the pretraining config, to name only what a run changed."""
    from pretrain.config import config_to_dict, get_default_config

    cfg = config_to_dict(get_default_config())
    return {part: {k.lower(): v for k, v in cfg[part.upper()].items()} for part in ("rim", "ifm")}


def knob_text(value: Any) -> str:
    """A knob value as a label or cell shows it: on/off, [a,b], 0.5, '-' for none."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(knob_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return DASH if value is None else str(value)


def method_label(pre: Pretraining, defaults: dict[str, dict[str, Any]] | None = None) -> str:
    """'BYOL', 'BYOL+RIM', 'SimSiam+RIM(ratio=0.5)+IFM(level=projector)', 'random init', ..."""
    if not pre.ours:
        return pre.method
    defaults = defaults or default_knobs()
    label = METHOD_NAMES[pre.method]
    for part, knobs in (("rim", pre.rim), ("ifm", pre.ifm)):
        d = dict(knobs)
        if not d.get("enabled"):
            continue
        changed = [f"{k}={knob_text(v)}" for k, v in sorted(d.items())
                   if k != "enabled" and knob_text(v) != knob_text(defaults[part].get(k))]
        label += f"+{part.upper()}" + (f"({','.join(changed)})" if changed else "")
    return label


class Labeller:
    """Row labels: the method label, plus the recipe hash when two recipes would share one label."""

    def __init__(self, pres: Iterable[Pretraining]):
        self.defaults = default_knobs()
        seen: dict[tuple, set[str]] = {}
        for pre in pres:
            seen.setdefault(self._key(pre), set()).add(pre.recipe)
        self.ambiguous = {k for k, v in seen.items() if len(v) > 1}

    def _key(self, pre: Pretraining) -> tuple:
        return (method_label(pre, self.defaults), pre.backbone, pre.data, pre.epochs)

    def __call__(self, pre: Pretraining) -> str:
        label = method_label(pre, self.defaults)
        if self._key(pre) in self.ambiguous:
            label += f" [cfg {pre.recipe[:8]}]"
        return label


__all__ = ["Labeller", "default_knobs", "knob_text", "method_label"]
