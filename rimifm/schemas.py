"""The record.json schema of each run kind as a dataclass: writers build and serialise it, readers validate with it.

One definition per kind (pretrain, knn, linear, detection) names every field, its JSON types (the
annotation: `float` accepts any finite-or-not number but never a bool), whether a record must carry it
(no default) and, for mappings, the keys checked inside. `record_to_dict` gives the dict a writer
writes; `validate_record` checks a parsed record and returns the typed one, or raises a RecordError
naming the field and the reason. Records written before `schema_version` existed read as version 1.
Keys a schema does not name are kept (in `extra`) and written back, so newer writers stay readable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

#: the version new records are written with; a record without the field is version 1 (legacy)
SCHEMA_VERSION = 1
RECORD_KINDS = ("pretrain", "knn", "linear", "detection")


class RecordError(ValueError):
    """A record that fails validation: `reason` (naming the field), `field` (dotted) and `path` (when known)."""

    def __init__(self, reason: str, field: str | None = None, path: str | os.PathLike | None = None):
        super().__init__(reason)
        self.reason, self.field = reason, field
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


@dataclass(frozen=True)
class Sub:
    """The check of one key inside a mapping field: its JSON types, present or not, finite or not."""

    type: Any
    required: bool = False
    finite: bool = False


def _spec(default: Any = dataclasses.MISSING, *, keys: dict[str, Sub] | None = None, closed: bool = False,
          finite: bool = False, knobs: bool = False, omit_none: bool = False) -> Any:
    """A dataclass field with its checks: `keys` (named sub-keys of a mapping; `closed`: no other key
    allowed, so a renamed one is caught), `finite` numbers, `knobs` (a RIM/IFM mapping with an 'enabled'
    switch), `omit_none` (the key is left out of the JSON when None). No default: every record must carry
    the field."""
    meta = {"keys": keys or {}, "closed": closed, "finite": finite, "knobs": knobs, "omit_none": omit_none}
    return field(default=default, metadata=meta)


METRIC = Sub(float | None, finite=True)
#: what a pretraining run's history holds at its end (losses of the last logged step, online kNN top-1)
PRETRAIN_METRICS = ("loss", "base_loss", "ifm_loss", "z_std", "knn_top1", "knn_top1_init", "knn_top1_pixels")


@dataclass(kw_only=True)
class _Record:
    """Fields every kind has; `extra` holds the keys this schema does not name (written back as they were)."""

    kind: ClassVar[str]
    schema_version: int = SCHEMA_VERSION
    run_id: str | None = None
    config: dict | None = None
    config_hash: str | None = None
    wall_time_s: float | None = None
    code_version: str | None = None
    #: when the record was written (local time with its UTC offset); records older than the field have none
    finished_at: str | None = _spec(None, omit_none=True)
    extra: dict = field(default_factory=dict, metadata={"extra": True})


@dataclass(kw_only=True)
class PretrainRecord(_Record):
    """One pretraining run (pretrain/training/record.py); its metrics are the run's last logged values."""

    kind: ClassVar[str] = "pretrain"
    method: str = _spec()
    backbone: str = _spec()
    #: name: DATA.NAME (the tables' key) or else DATA.DATASET; format: DATA.DATASET when DATA.NAME named it
    dataset: dict | str = _spec(keys={"name": Sub(str, required=True), "root": Sub(str | None),
                                      "images": Sub(int | None), "format": Sub(str | None)})
    epochs: int = _spec()
    seed: int = _spec()
    rim: dict = _spec(knobs=True)
    ifm: dict = _spec(knobs=True)
    metrics: dict | None = _spec(None, keys=dict.fromkeys(PRETRAIN_METRICS, METRIC), closed=True)
    steps: int | None = None
    world_size: int | None = None
    device: str | None = None
    precision: str | None = None
    checkpoint: str | None = None
    output_dir: str | None = None
    images_per_s: float | None = None
    peak_memory_mb: float | None = None
    #: solo-learn's online linear protocol: a classifier on detached backbone features trained during
    #: pretraining, evaluated at the end on `num_val` clean validation images
    online_linear: dict | None = _spec(None, keys={"top1": Sub(float, required=True, finite=True), "top5": METRIC,
                                                   "num_val": Sub(int, required=True), "lr": Sub(float | None),
                                                   "dataset": Sub(str | None), "views": Sub(str | None)},
                                    omit_none=True)
    #: training time (data + compute, online evaluations excluded), summed over resumes
    train_time_s: float | None = _spec(None, omit_none=True)
    #: the online kNN monitor's protocol: k, temperature, and the bank / query images it used
    online_knn: dict | None = _spec(None, keys={"k": Sub(int, required=True), "temperature": Sub(float, required=True),
                                                "bank": Sub(int, required=True), "queries": Sub(int, required=True)},
                                    omit_none=True)
    #: the learning curve: one {"step", "epoch", "train_time_s", "wall_time_s", "top1"} per online kNN evaluation
    knn_curve: list | None = _spec(None, omit_none=True)
    #: TRAIN.PRECISE_BN_IMAGES: the saved backbones' BN statistics re-estimated on `images` clean training images
    precise_bn: dict | None = _spec(None, keys={"images": Sub(int, required=True), "step": Sub(int)}, omit_none=True)


#: the linear protocols a linear record may name (records without a name were the cached probe)
LINEAR_PROTOCOLS = ("linear", "linear-cached")
#: every classification protocol name the tables know (online-linear comes from pretraining records)
CLASSIFICATION_PROTOCOLS = ("knn", "online-linear") + LINEAR_PROTOCOLS


@dataclass(kw_only=True)
class _ClassificationRecord(_Record):
    """A kNN or linear evaluation of a frozen backbone (pretrain/evaluation/run.py)."""

    method: str = _spec()
    backbone: str = _spec()
    dataset: str = _spec()
    protocol: dict = _spec()
    metrics: dict = _spec(keys={"top1": Sub(float, required=True, finite=True), "top5": METRIC}, closed=True)
    checkpoint: str | None = _spec()
    rim: dict | None = _spec(None, knobs=True)
    ifm: dict | None = _spec(None, knobs=True)
    seed: int | None = None
    cifar_stem: bool | None = None
    source: str | None = None
    layout: str | None = None
    target: bool | None = None
    num_classes: int | None = None
    num_train: int | None = None
    num_val: int | None = None
    checkpoint_sha256: str | None = None
    #: --recompute-bn: BN statistics re-estimated on `images` clean training images before evaluation
    recompute_bn: dict | None = _spec(None, keys={"images": Sub(int, required=True)}, omit_none=True)


@dataclass(kw_only=True)
class KnnRecord(_ClassificationRecord):
    """Weighted kNN top-1/top-5; `protocol` holds k, temperature and the image size."""

    kind: ClassVar[str] = "knn"
    protocol: dict = _spec(keys={"k": Sub(int, required=True), "temperature": Sub(float, required=True, finite=True),
                                 "image_size": Sub(int | None)})


@dataclass(kw_only=True)
class LinearRecord(_ClassificationRecord):
    """Linear probe top-1/top-5; `protocol` holds its training settings and the image size."""

    kind: ClassVar[str] = "linear"
    protocol: dict = _spec(keys={"name": Sub(str | None), "recipe": Sub(str | None),
                                 "epochs": Sub(int | None), "lr": Sub(float | None, finite=True),
                                 "optimizer": Sub(str | None), "batch_size": Sub(int | None),
                                 "weight_decay": Sub(float | None, finite=True),
                                 "augment": Sub(bool | None), "image_size": Sub(int | None),
                                 "report": Sub(str | None)})
    #: with protocol.report "best": top1/top5 are the best epoch's on the validation set, `best_epoch` (1-based)
    #: which, `top1_last` the last epoch's top-1
    metrics: dict = _spec(keys={"top1": Sub(float, required=True, finite=True), "top5": METRIC,
                                "top1_last": METRIC, "best_epoch": METRIC}, closed=True)


@dataclass(kw_only=True)
class DetectionRecord(_Record):
    """One detection fine-tuning or eval-only run, either engine (detection/engines/common.py)."""

    kind: ClassVar[str] = "detection"
    engine: str = _spec()
    protocol: str = _spec()
    backbone: str = _spec()
    source_checkpoint: str = _spec()
    seed: int = _spec()
    metrics: dict = _spec(keys={"AP": Sub(float, required=True, finite=True), "AP50": METRIC, "AP75": METRIC,
                                "mask_AP": METRIC}, closed=True)
    eval_only: bool | None = None
    dataset: dict | None = _spec(None, keys={"train": Sub(list), "test": Sub(list)})
    iterations: int | None = None
    world_size: int | None = None
    device: str | None = None
    sec_per_iter: float | None = None
    peak_memory_mb: float | None = None
    output_dir: str | None = None
    metrics_per_dataset: dict | None = _spec(None, omit_none=True)
    #: standard errors of the AP metrics from a bootstrap over test images (`resamples` draws)
    metrics_se: dict | None = _spec(None, keys={"AP": METRIC, "AP50": METRIC, "AP75": METRIC,
                                                "resamples": Sub(int | None)}, omit_none=True)
    start_iteration: int | None = _spec(None, omit_none=True)


Record = PretrainRecord | KnnRecord | LinearRecord | DetectionRecord
SCHEMAS: dict[str, type] = {cls.kind: cls for cls in (PretrainRecord, KnnRecord, LinearRecord, DetectionRecord)}


# ----------------------------------------------------------------------------- writing


def record_to_dict(record: _Record) -> dict[str, Any]:
    """The JSON content of a record: kind, schema_version, every field (omit_none ones only when set), extra keys."""
    out: dict[str, Any] = {"kind": record.kind}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.metadata.get("extra"):
            continue
        if value is None and f.metadata.get("omit_none"):
            continue
        out[f.name] = value
    for key, value in record.extra.items():
        out.setdefault(key, value)
    return out


# ----------------------------------------------------------------------------- reading


def _json_types(annotation: Any) -> tuple[type, ...]:
    """The Python types a JSON value may have for a field annotation (`float` also takes int; not bool)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _json_types(arg))
    if annotation is Any:
        return (object,)
    if annotation is None or annotation is type(None):
        return (type(None),)
    base = origin or annotation
    return (int, float) if base is float else (base,)


def _type_name(allowed: tuple[type, ...]) -> str:
    names = []
    for t in allowed:
        name = "null" if t is type(None) else "number" if t is float else t.__name__
        if not (name == "int" and float in allowed) and name not in names:
            names.append(name)
    return " or ".join(names)


def _check_value(value: Any, dotted: str, annotation: Any, finite: bool) -> None:
    """RecordError when `value` has none of the annotation's types (a bool is no number) or is not finite."""
    allowed = _json_types(annotation)
    ok = object in allowed or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed))
    if not ok:
        raise RecordError(f"field '{dotted}' has the wrong type ({type(value).__name__}: {value!r}; expected "
                          f"{_type_name(allowed)})", dotted)
    if finite and isinstance(value, float) and not math.isfinite(value):
        raise RecordError(f"field '{dotted}' is not a finite number ({value!r})", dotted)


def _check_mapping(value: dict, dotted: str, meta: dict) -> None:
    """The sub-key checks of a mapping field: named keys, then no unknown key (closed), then the RIM/IFM switch."""
    for key, sub in meta["keys"].items():
        if key not in value:
            if sub.required:
                raise RecordError(f"missing field '{dotted}.{key}'", f"{dotted}.{key}")
            continue
        _check_value(value[key], f"{dotted}.{key}", sub.type, sub.finite)
    if meta["closed"]:
        for key in value:
            if key not in meta["keys"]:
                raise RecordError(f"unknown field '{dotted}.{key}' (known: {', '.join(meta['keys'])})",
                                  f"{dotted}.{key}")
    if meta["knobs"]:
        switch = {str(k).lower(): v for k, v in value.items()}
        if "enabled" not in switch:
            raise RecordError(f"field '{dotted}' must be a mapping with an 'enabled' key", f"{dotted}.enabled")
        _check_value(switch["enabled"], f"{dotted}.enabled", bool, False)


def _schema_version(data: dict) -> int:
    if "schema_version" not in data:
        return 1  # written before the field existed: the first schema
    version = data["schema_version"]
    _check_value(version, "schema_version", int, False)
    if not 1 <= version <= SCHEMA_VERSION:
        raise RecordError(f"field 'schema_version' is {version}; this reader knows versions 1 to {SCHEMA_VERSION}",
                          "schema_version")
    return version


def validate_record(data: Any, path: str | os.PathLike | None = None) -> Record:
    """The typed record of a parsed record.json, or a RecordError (with `path`) naming the field and the reason."""
    try:
        if not isinstance(data, dict):
            raise RecordError(f"not a JSON object ({type(data).__name__})")
        if "kind" not in data:
            raise RecordError("missing field 'kind'", "kind")
        kind = data["kind"]
        if kind not in SCHEMAS:
            raise RecordError(f"unknown kind {kind!r} (expected one of {', '.join(RECORD_KINDS)})", "kind")
        cls = SCHEMAS[kind]
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {"schema_version": _schema_version(data)}
        for f in dataclasses.fields(cls):
            if f.metadata.get("extra") or f.name == "schema_version":
                continue
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name not in data:
                if required:
                    raise RecordError(f"missing field '{f.name}'", f.name)
                continue
            value = data[f.name]
            _check_value(value, f.name, hints[f.name], f.metadata.get("finite", False))
            if isinstance(value, dict) and f.metadata:
                _check_mapping(value, f.name, dict(f.metadata))
            values[f.name] = value
        named = {f.name for f in dataclasses.fields(cls)} | {"kind"}
        values["extra"] = {k: v for k, v in data.items() if k not in named}
        return cls(**values)
    except RecordError as exc:
        raise RecordError(exc.reason, exc.field, path) from None


def read_record(path: str | os.PathLike) -> Record:
    """Read, parse and validate one record.json; every failure (unreadable, not JSON, invalid) is a RecordError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecordError("not UTF-8 text", path=path) from None
    except OSError as exc:
        raise RecordError(f"unreadable ({exc.strerror or type(exc).__name__})", path=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", path=path) from None
    return validate_record(data, path)


__all__ = ["SCHEMA_VERSION", "RECORD_KINDS", "LINEAR_PROTOCOLS", "CLASSIFICATION_PROTOCOLS", "RecordError", "PretrainRecord", "KnnRecord", "LinearRecord",
           "DetectionRecord", "Record", "SCHEMAS", "record_to_dict", "validate_record", "read_record"]
