"""Helpers for yacs/fvcore configs shared by pretraining and detection: dotted keys, overrides, hashing."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from rimifm.errors import UserError
from rimifm.records import stable_hash

_MISSING = object()


def get_dotted(cfg: Mapping[str, Any], dotted: str, default: Any = _MISSING) -> Any:
    """The value at a dotted key ("MODEL.RESNETS.DEPTH"); `default` when absent (KeyError if none given)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def parse_value(text: str) -> Any:
    """A command-line value as a YAML literal: 0.3, true, [1.0, 0.1], resnet50 (unparsable text stays text)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_override_pairs(opts: Sequence[str]) -> list[str]:
    """Command-line overrides must come as KEY VALUE pairs, after the options."""
    opts = list(opts)
    if len(opts) % 2:
        raise UserError(f"overrides must be KEY VALUE pairs; {opts[-1]!r} has no value")
    for key in opts[0::2]:
        if key.startswith("-"):
            raise UserError(f"unknown option {key!r}; options go before the KEY VALUE overrides (see --help)")
    return opts


def key_error_text(exc: BaseException, hint: str) -> str:
    """yacs' KeyError text; for an unknown key, followed by `hint` (where every key is listed)."""
    text = str(exc.args[0]) if exc.args else str(exc)
    return f"unknown config key ({text}); {hint}" if "Non-existent" in text else text


def merge_overrides(cfg, pairs: list, key_error: Callable[[BaseException], str]) -> None:
    """cfg.merge_from_list(pairs), its errors turned into one UserError naming the command line;
    `key_error` words an unknown or bad key."""
    try:
        cfg.merge_from_list(pairs)
    except (KeyError, AssertionError) as exc:
        raise UserError(f"command line: {key_error(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"command line: {exc}") from None


def config_to_dict(cfg) -> dict:
    """Plain nested dict (for JSON records)."""
    return yaml.safe_load(cfg.dump())


def config_hash(cfg, ignore: Sequence[str] = ("OUTPUT_DIR",)) -> str:
    """Stable 16-hex hash of a merged config, leaving out the top-level keys in `ignore` (where outputs go)."""
    data = config_to_dict(cfg) if hasattr(cfg, "dump") else dict(cfg)
    for key in ignore:
        data.pop(key, None)
    return stable_hash(data)


def dataset_root() -> str:
    """`$DETECTRON2_DATASETS` (user-expanded), default `datasets` (relative to the working directory): where the
    detection sets live, and where the scene generator writes by default."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
