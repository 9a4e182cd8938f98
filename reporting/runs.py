"""Run records as the tables see them: found, validated by the one schema, evaluations linked to pretraining.

Every record.json is read through rimifm.schemas.read_record; a record that fails is kept as a
Rejected (path and reason), never dropped silently. A valid record becomes a Run: its Pretraining
identity (what was pretrained, apart from the seed), its seed, its metrics, the standard errors its
record gives for them, and its evaluation key. A pretraining record with an `online_linear` block gives
a second Run: the "online-linear" classification of that pretraining run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reporting.protocols import BEST_EPOCH, MASKED_VIEWS, linear_protocol_name
from reporting.render import DASH
from rimifm.errors import UserError
from rimifm.records import stable_hash
from rimifm.schemas import DetectionRecord, KnnRecord, PretrainRecord, Record, RecordError, read_record

METHOD_NAMES = {"byol": "BYOL", "simsiam": "SimSiam", "supervised": "Supervised"}
RANDOM_INIT = "random init"
#: kNN / linear on the pixels themselves (tools/eval_classification.py none --raw-pixels)
RAW_PIXELS = "raw pixels"
DET_METRICS = ("AP", "AP50", "AP75", "mask_AP")
#: the metrics a detection record's bootstrap `metrics_se` may give
DET_SE_METRICS = ("AP", "AP50", "AP75")
#: run kinds of the classification table
CLASSIFICATION_KINDS = ("knn", "linear", "online-linear")
#: pretraining config keys that do not change the learned weights (left out of the recipe hash)
_NON_RECIPE_KEYS = {
    "SEED", "OUTPUT_DIR", "RIM", "IFM", "DATA.ROOT", "DATA.NUM_WORKERS", "DATA.KNN_TRAIN", "DATA.KNN_VAL",
    "TRAIN.DEVICE", "TRAIN.LOG_PERIOD", "TRAIN.CHECKPOINT_PERIOD", "TRAIN.CHECKPOINT_PERIOD_STEPS",
    "TRAIN.KNN_PERIOD", "TRAIN.KNN_K", "TRAIN.KNN_T", "TRAIN.PROGRESS", "TRAIN.TENSORBOARD",
    "TRAIN.KNN_BANK", "TRAIN.KNN_QUERIES", "TRAIN.KNN_PERIOD_STEPS", "ONLINE_LINEAR.VIEWS", "ONLINE_LINEAR.BN_IMAGES",
}


def canon_backbone(name: Any) -> str:
    """'resnet18', 'R18', 'r18' -> 'R18', so classification and detection spellings compare equal."""
    text = str(name or "").strip()
    m = re.fullmatch(r"(?i)(?:resnet|r)-?(\d+)", text)
    return f"R{m.group(1)}" if m else text


def normalise_knobs(knobs: Any, what: str) -> tuple[tuple[str, Any], ...]:
    """RIM or IFM settings as a sorted tuple with lower-case keys; when disabled, only enabled=False
    (the other knobs then have no effect, so runs differing only there are the same experiment)."""
    if not isinstance(knobs, dict) or "enabled" not in {str(k).lower() for k in knobs}:
        raise RecordError(f"field '{what}' must be a mapping with an 'enabled' key", what)
    items = {str(k).lower(): (tuple(v) if isinstance(v, list) else v) for k, v in knobs.items()}
    if not items["enabled"]:
        return (("enabled", False),)
    items["enabled"] = True
    return tuple(sorted(items.items()))


@dataclass(frozen=True)
class Pretraining:
    """What identifies a pretrained backbone, apart from its seed."""

    method: str  # byol | simsiam | "random init" | "external: <name>"
    backbone: str
    data: str
    epochs: str
    rim: tuple = ()
    ifm: tuple = ()
    recipe: str = ""

    @property
    def ours(self) -> bool:
        return self.method in METHOD_NAMES

    @property
    def is_base(self) -> bool:
        return self.ours and not dict(self.rim).get("enabled") and not dict(self.ifm).get("enabled")

    def base(self) -> Pretraining:
        """The same pretraining without RIM and IFM: the row deltas are taken against."""
        return Pretraining(self.method, self.backbone, self.data, self.epochs, (("enabled", False),),
                           (("enabled", False),), self.recipe)

    def sort_key(self) -> tuple:
        order = 0 if self.method == RANDOM_INIT else 1 if self.ours else 2
        return (order, self.method, self.backbone, self.data, _epoch_sort(self.epochs),
                bool(dict(self.rim).get("enabled")), bool(dict(self.ifm).get("enabled")),
                json.dumps([self.rim, self.ifm], default=str), self.recipe)


def _epoch_sort(epochs: str) -> tuple:
    m = re.match(r"\d+", epochs)
    return (int(m.group()) if m else -1, epochs)


@dataclass
class Run:
    """One valid record: its kind, what it evaluates, its seed and its metrics."""

    path: str  # as found, for messages only
    kind: str
    record: Record
    pre: Pretraining | None = None
    seed: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    eval_key: tuple = ()
    folder: Path | None = None
    #: metric -> (standard error, kind): 'se-binomial' for a top-1 on num_val images, 'se-bootstrap' for an AP
    se: dict[str, tuple[float, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """A record left out of every table: its path (as found) and why (the field and the reason)."""

    path: str
    reason: str
    field: str | None = None


def find_records(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every record.json under the folders, sorted by path (a missing folder is a UserError)."""
    found: set[Path] = set()
    for d in dirs:
        p = Path(d)
        if p.is_file() and p.name == "record.json":
            found.add(p)
            continue
        if not p.is_dir():
            raise UserError(f"runs folder {p} does not exist; pass folders holding record.json files "
                            "(default outputs/)")
        found.update(q for q in p.rglob("record.json") if q.is_file())
    return sorted(found, key=lambda q: str(q))


def _pretraining_of(rec: PretrainRecord) -> Pretraining:
    """The Pretraining identity of a pretrain record."""
    name = rec.dataset["name"] if isinstance(rec.dataset, dict) else rec.dataset
    recipe = ""
    if isinstance(rec.config, dict):
        # imported here, not with the module: pretrain.config brings PyTorch, which `make_tables --help` need not
        from pretrain.config import recipe_items

        recipe = stable_hash({k: v for k, v in recipe_items(rec.config).items()
                              if k not in _NON_RECIPE_KEYS and k.split(".")[0] not in _NON_RECIPE_KEYS})
    return Pretraining(rec.method.lower(), canon_backbone(rec.backbone), name, str(rec.epochs),
                       normalise_knobs(rec.rim, "rim"), normalise_knobs(rec.ifm, "ifm"), recipe)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def binomial_se(top1: float, num_val: int) -> float:
    """Standard error (in % points) of a top-1 accuracy `top1` (%) measured on `num_val` images:
    sqrt(p(1-p)/N) with p = top1/100."""
    if num_val < 1:
        raise ValueError(f"num_val must be >= 1 (got {num_val})")
    p = min(max(top1 / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / num_val)


def _top1_se(top1: float, num_val: Any, field_name: str) -> dict[str, tuple[float, str]]:
    """The binomial SE of a top-1 on num_val images ({} when the record gives no num_val)."""
    if num_val is None:
        return {}
    if num_val < 1:
        raise RecordError(f"field '{field_name}' is {num_val}; it counts validation images, so it is >= 1",
                          field_name)
    return {"top1": (binomial_se(top1, num_val), "se-binomial")}


def run_of(path: Path, rec: Record) -> Run:
    """What the tables need of one validated record."""
    run = Run(str(path), rec.kind, rec, seed=rec.seed, folder=path.parent)
    if isinstance(rec, PretrainRecord):
        run.pre = _pretraining_of(rec)
        metrics = rec.metrics or {}
        run.metrics = {key: float(metrics[key]) for key in ("knn_top1", "knn_top1_init", "loss")
                       if _finite(metrics.get(key))}
    elif isinstance(rec, DetectionRecord):
        run.metrics = {key: float(rec.metrics[key]) for key in DET_METRICS if _finite(rec.metrics.get(key))}
        run.eval_key = (rec.protocol, canon_backbone(rec.backbone), rec.engine)
        se = rec.metrics_se or {}
        run.se = {key: (float(se[key]), "se-bootstrap") for key in DET_SE_METRICS
                  if key in run.metrics and _finite(se.get(key))}
    else:
        settings = rec.protocol
        run.metrics["top1"] = float(rec.metrics["top1"])
        if isinstance(rec, KnnRecord):
            name = "knn"
            detail = f"k={settings['k']} T={float(settings['temperature']):g}"
        else:
            name = linear_protocol_name(settings)
            if name == "linear":  # records from before --report reported the last epoch
                settings = {**settings, "report": settings.get("report") or "last"}
            detail = "{}{} ep, {}, lr {:g}{}{}".format(
                f"{settings['recipe']}, " if name == "linear" and settings.get("recipe") else "",
                settings.get("epochs", "?"), settings.get("optimizer", "?"), float(settings.get("lr") or 0),
                ", aug" if settings.get("augment") else "",
                f", {BEST_EPOCH}" if settings.get("report") == "best" else "")
        run.se = _top1_se(run.metrics["top1"], rec.num_val, "num_val")
        run.eval_key = (rec.dataset, name, detail, stable_hash({**settings, "name": name}))
    return run


def online_linear_run(pre: Run) -> Run | None:
    """The "online-linear" classification Run of a pretraining Run whose record has `online_linear`
    (solo-learn's classifier trained during pretraining), or None. Its dataset is online_linear.dataset,
    else the pretraining dataset."""
    rec = pre.record
    block = getattr(rec, "online_linear", None)
    if not isinstance(rec, PretrainRecord) or not block:
        return None
    top1 = float(block["top1"])
    dataset = block.get("dataset") or (rec.dataset["name"] if isinstance(rec.dataset, dict) else rec.dataset)
    lr = block.get("lr")
    # records before ONLINE_LINEAR.VIEWS fed the classifier the online branch's views: masked under RIM
    views = block.get("views") or ("masked" if (rec.rim or {}).get("enabled") else "clean")
    detail = "during pretraining" + (f", lr {float(lr):g}" if lr is not None else "") + \
        (f", {MASKED_VIEWS}" if views == "masked" else "")
    key = {"lr": lr, "dataset": dataset, **({"views": views} if views == "masked" else {})}
    return Run(pre.path, "online-linear", rec, pre=pre.pre, seed=rec.seed, metrics={"top1": top1},
               eval_key=(dataset, "online-linear", detail, stable_hash(key)),
               folder=pre.folder, se=_top1_se(top1, block["num_val"], "online_linear.num_val"))


def load_runs(paths: Sequence[Path]) -> tuple[list[Run], list[Rejected]]:
    """Validate each record; the ones that fail come back as Rejected (path and reason), in path order.
    A pretraining record with `online_linear` gives two runs: the pretraining and its online-linear one."""
    runs: list[Run] = []
    rejected: list[Rejected] = []
    for path in paths:
        try:
            run = run_of(path, read_record(path))
            online = online_linear_run(run)
        except RecordError as exc:
            rejected.append(Rejected(str(path), exc.reason, exc.field))
            continue
        runs += [run] if online is None else [run, online]
    return runs, rejected


# ----------------------------------------------------------------------------- linking evaluations to pretraining


class PretrainIndex:
    """Finds the run a checkpoint (or converted .pkl) path belongs to: the run whose output folder is
    the path or one of its parents, compared first as written, then resolved. Built over pretraining
    records (and, to spot re-evaluations, over detection records)."""

    def __init__(self, runs: Iterable[Run]):
        self.by_text: dict[str, Run] = {}
        self.by_real: dict[str, Run] = {}
        for run in sorted(runs, key=lambda r: r.path):
            rec = run.record
            for text in (getattr(rec, "output_dir", None), _run_dir_of(getattr(rec, "checkpoint", None))):
                if isinstance(text, str) and text:
                    self.by_text.setdefault(os.path.normpath(text), run)
            if run.folder is not None:
                self.by_real.setdefault(str(run.folder.resolve()), run)

    def find(self, source: str) -> Run | None:
        """The pretraining run holding `source`, or None."""
        p = Path(os.path.normpath(source))
        for cand in (p, *p.parents):
            hit = self.by_text.get(str(cand))
            if hit is not None and str(cand) not in (".", os.sep):
                return hit
        real = p.resolve()
        for cand in (real, *real.parents):
            hit = self.by_real.get(str(cand))
            if hit is not None:
                return hit
        return None


def _run_dir_of(checkpoint: Any) -> str | None:
    if not isinstance(checkpoint, str) or not checkpoint:
        return None
    p = Path(checkpoint)
    return str(p.parent.parent) if p.parent.name == "checkpoints" else None


def _external(source: str) -> str:
    return f"external: {Path(source).stem or source}"


def drop_reevaluations(runs: list[Run], warn: Callable[[str], None]) -> list[Run]:
    """Leave out eval-only detection records of a model another detection record already trained and
    evaluated (its OUTPUT_DIR/model_final.pth), so one fine-tuning counts once; each is reported."""
    trained = PretrainIndex(r for r in runs if r.kind == "detection" and not r.record.eval_only)
    kept = []
    for run in runs:
        if run.kind == "detection" and run.record.eval_only and run.record.source_checkpoint:
            hit = trained.find(run.record.source_checkpoint)
            if hit is not None and hit is not run:
                warn(f"{run.path}: re-evaluation of the model trained by {hit.path}; counted once (that record)")
                continue
        kept.append(run)
    return kept


def link_runs(runs: list[Run], warn: Callable[[str], None]) -> None:
    """Give every evaluation record the Pretraining it evaluates (random init, our run, or external)."""
    index = PretrainIndex(r for r in runs if r.kind == "pretrain")
    for run in runs:
        if run.kind in ("pretrain", "online-linear"):  # an online-linear run has its pretraining already
            continue
        rec = run.record
        if isinstance(rec, DetectionRecord):
            source = rec.source_checkpoint
            backbone = run.eval_key[1]
        else:
            source = rec.checkpoint or ""
            backbone = canon_backbone(rec.backbone)
        if run.kind != "detection" and rec.method == "raw-pixels":
            run.pre = Pretraining(RAW_PIXELS, DASH, DASH, DASH)
            continue
        if not source or (run.kind != "detection" and rec.method == "random-init"):
            run.pre = Pretraining(RANDOM_INIT, backbone, DASH, DASH)
            continue
        hit = index.find(source)
        if hit is not None and hit.pre is not None:
            pre = hit.pre
            m = re.fullmatch(r"epoch_(\d+)\.pth", Path(source).name)
            if m and str(int(m.group(1))) != pre.epochs:
                pre = Pretraining(pre.method, pre.backbone, pre.data, f"{int(m.group(1))}/{pre.epochs}", pre.rim,
                                  pre.ifm, pre.recipe)
            run.pre = pre
            if run.kind == "detection" or run.seed is None:
                run.seed = (hit.seed, run.seed)
            continue
        method = rec.method.lower() if run.kind != "detection" else ""
        if method in METHOD_NAMES and isinstance(rec.rim, dict) and isinstance(rec.ifm, dict):
            warn(f"{run.path}: its checkpoint {Path(source).name} has no pretraining record among the inputs; "
                 "pretraining data and epochs are shown as '?'")
            run.pre = Pretraining(method, backbone, "?", "?", normalise_knobs(rec.rim, "rim"),
                                  normalise_knobs(rec.ifm, "ifm"))
        else:
            warn(f"{run.path}: weights {Path(source).name} belong to no pretraining record among the inputs; "
                 "shown as external")
            run.pre = Pretraining(_external(source), backbone, "?", "?")


__all__ = ["CLASSIFICATION_KINDS", "METHOD_NAMES", "RANDOM_INIT", "RAW_PIXELS", "Pretraining", "Rejected", "Run", "binomial_se",
           "canon_backbone", "drop_reevaluations", "find_records", "link_runs", "load_runs", "normalise_knobs",
           "online_linear_run", "run_of"]
