"""Classification protocol names as the tables show them, what each means, and when a published number
may sit beside our runs.

A kNN record's protocol is "knn"; a linear record names "linear" or "linear-cached" (one without a name
is the old cached probe: "linear-cached"); a pretraining record's `online_linear` block is the
"online-linear" protocol. A published protocol is written "<name> [settings]", e.g. "knn k=200 T=0.1".
"""

from __future__ import annotations

from collections.abc import Iterable

from rimifm.schemas import CLASSIFICATION_PROTOCOLS, LINEAR_PROTOCOLS, RecordError

#: the legend of the classification table, in this order
PROTOCOL_MEANING = {
    "knn": "weighted kNN on frozen features",
    "online-linear": "solo-learn's classifier trained during pretraining on detached features",
    "linear": "offline standard probe with augmentation and the cited recipe",
    "linear-cached": "fast probe on fixed centre-crop features, not a published protocol",
}


def linear_protocol_name(protocol: dict) -> str:
    """The protocol name of a linear record's `protocol` mapping: its `name`, or "linear-cached" when it
    has none (records written before the name existed were the cached probe). An unknown name is a
    RecordError naming the field."""
    name = protocol.get("name")
    if name is None:
        return "linear-cached"
    if name not in LINEAR_PROTOCOLS:
        raise RecordError(f"field 'protocol.name' is {name!r}; a linear record's protocol is one of "
                          f"{', '.join(LINEAR_PROTOCOLS)}", "protocol.name")
    return name


def split_protocol(text: str) -> tuple[str, str]:
    """A published classification protocol as (name, settings): 'kNN k=200 T=0.1' -> ('knn', 'k=200 T=0.1').
    The name is case-insensitive; ValueError when it is no known protocol."""
    words = text.split()
    name = words[0].lower() if words else ""
    if name not in CLASSIFICATION_PROTOCOLS:
        raise ValueError(f"{text!r} does not start with a classification protocol name "
                         f"({', '.join(CLASSIFICATION_PROTOCOLS)})")
    return name, " ".join(words[1:])


#: the settings mark of an online-linear evaluation whose classifier trained on RIM's masked views (and was
#: validated with BN statistics of masked images): no published online-linear number was made that way
MASKED_VIEWS = "masked views"
#: the settings mark of a linear evaluation that reports its best epoch on the validation set (MoCo's and
#: SimSiam's main_lincls.py do) rather than its last
BEST_EPOCH = "best epoch"


def same_protocol(published_name: str, published_settings: str, name: str, settings: Iterable[str]) -> bool:
    """A published row sits beside our rows of protocol `name` (with these settings) when the names are
    equal and, where the published row names settings, one of our rows has exactly those. A published
    online-linear row (unmasked views) never sits beside online-linear rows of masked views only, and a
    published linear row names its recipe ("linear solo-learn") and sits beside runs of that recipe only."""
    if published_name != name:
        return False
    if name == "online-linear":
        settings = [s for s in settings if MASKED_VIEWS not in s]
        if not settings:
            return False
    if name == "linear":  # a published linear number names its recipe, and sits beside runs of that recipe only
        recipe = " ".join(published_settings.split())
        return bool(recipe) and recipe in {s.split(",")[0].strip() for s in settings}
    return not published_settings or " ".join(published_settings.split()) in {" ".join(s.split()) for s in settings}


__all__ = ["BEST_EPOCH", "MASKED_VIEWS", "PROTOCOL_MEANING", "linear_protocol_name", "same_protocol", "split_protocol"]
