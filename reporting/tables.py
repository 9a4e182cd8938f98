"""Result tables from run records: classification, detection and ablation, beside published baselines.

Reads every `record.json` (kinds pretrain, knn, linear, detection) under some folders plus the
published baselines CSV, groups our runs by everything but the seed (mean ± std over seeds, n, delta
against the base method on the same protocol and engine) and writes Markdown, CSV and LaTeX tables and
PNG plots. Output bytes depend only on the records' content: rows are sorted, floats are formatted
with fixed digits, and no timestamp or absolute path is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rimifm.errors import UserError
from rimifm.io import atomic_write_text
from rimifm.records import REPO_ROOT, stable_hash

DEFAULT_BASELINES = REPO_ROOT / "results" / "baselines.csv"
TABLE_NAMES = ("classification", "detection", "ablation")
RECORD_KINDS = ("pretrain", "knn", "linear", "detection")
METHOD_NAMES = {"byol": "BYOL", "simsiam": "SimSiam"}
RANDOM_INIT = "random init"
DET_METRICS = ("AP", "AP50", "AP75", "mask_AP")
BASELINE_COLUMNS = ("kind", "method", "pretrain_data", "pretrain_epochs", "backbone", "dataset", "protocol",
                    "engine", "AP", "AP50", "AP75", "mask_AP", "top1", "unit", "note", "source")
#: pretraining config keys that do not change the learned weights (left out of the recipe hash)
_NON_RECIPE_KEYS = {
    "SEED", "OUTPUT_DIR", "RIM", "IFM", "DATA.ROOT", "DATA.NUM_WORKERS", "DATA.KNN_TRAIN", "DATA.KNN_VAL",
    "TRAIN.DEVICE", "TRAIN.LOG_PERIOD", "TRAIN.CHECKPOINT_PERIOD", "TRAIN.CHECKPOINT_PERIOD_STEPS",
    "TRAIN.KNN_PERIOD", "TRAIN.KNN_K", "TRAIN.KNN_T", "TRAIN.PROGRESS", "TRAIN.TENSORBOARD",
}
DASH = "-"


class RecordError(ValueError):
    """A record that cannot be used: the message says what is wrong (the caller adds the path)."""


# ----------------------------------------------------------------------------- small helpers


def fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    """Fixed-digit text of a number ('-' for none); `sign` adds '+' to positive values; never '-0.00'."""
    if value is None or math.isnan(value):
        return DASH
    if abs(value) < 0.5 * 10 ** -digits:
        value = 0.0
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value), order-independent."""
    vals = sorted(float(v) for v in values)
    m = math.fsum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def canon_backbone(name: Any) -> str:
    """'resnet18', 'R18', 'r18' -> 'R18', so classification and detection spellings compare equal."""
    text = str(name or "").strip()
    m = re.fullmatch(r"(?i)(?:resnet|r)-?(\d+)", text)
    return f"R{m.group(1)}" if m else text


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def _default_knobs() -> dict[str, dict[str, Any]]:
    """Default RIM/IFM settings of the pretraining config, to name only what a run changed."""
    from pretrain.config import config_to_dict, get_default_config

    cfg = config_to_dict(get_default_config())
    return {part: {k.lower(): v for k, v in cfg[part.upper()].items()} for part in ("rim", "ifm")}


def normalise_knobs(knobs: Any, what: str) -> tuple[tuple[str, Any], ...]:
    """RIM or IFM settings as a sorted tuple with lower-case keys; when disabled, only enabled=False
    (the other knobs then have no effect, so runs differing only there are the same experiment)."""
    if not isinstance(knobs, dict) or "enabled" not in {str(k).lower() for k in knobs}:
        raise RecordError(f"'{what}' must be a mapping with an 'enabled' key")
    items = {str(k).lower(): (tuple(v) if isinstance(v, list) else v) for k, v in knobs.items()}
    if not items["enabled"]:
        return (("enabled", False),)
    items["enabled"] = True
    return tuple(sorted(items.items()))


def _require(record: dict, dotted: str, types: type | tuple[type, ...] | None = None) -> Any:
    """The value at a dotted path; RecordError when it is absent or of the wrong type (bool is no number)."""
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RecordError(f"missing field '{dotted}'")
        node = node[part]
    if types is not None:
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(node, allowed) or (isinstance(node, bool) and bool not in allowed):
            raise RecordError(f"field '{dotted}' has the wrong type ({type(node).__name__}: {node!r})")
    return node


def _number(record: dict, dotted: str) -> float:
    value = _require(record, dotted, (int, float))
    if not math.isfinite(value):
        raise RecordError(f"field '{dotted}' is not a finite number ({value!r})")
    return float(value)


# ----------------------------------------------------------------------------- records


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
    """One usable record: its kind, what it evaluates, its seed and its metrics."""

    path: str  # as found, for messages only
    kind: str
    record: dict
    pre: Pretraining | None = None
    seed: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    eval_key: tuple = ()
    folder: Path | None = None


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


def _pretraining_of(rec: dict) -> Pretraining:
    """The Pretraining identity of a pretrain record."""
    method = str(_require(rec, "method", str)).lower()
    data = _require(rec, "dataset")
    if isinstance(data, dict):
        name = data.get("name")
        if not isinstance(name, str):
            raise RecordError("missing field 'dataset.name'")
    elif isinstance(data, str):
        name = data
    else:
        raise RecordError("field 'dataset' must be a name or a mapping with 'name'")
    epochs = _require(rec, "epochs", int)
    config = rec.get("config")
    recipe = ""
    if isinstance(config, dict):
        flat = _flatten(config)
        recipe = stable_hash({k: v for k, v in flat.items()
                              if k not in _NON_RECIPE_KEYS and k.split(".")[0] not in _NON_RECIPE_KEYS})
    return Pretraining(method, canon_backbone(_require(rec, "backbone", str)), name, str(epochs),
                       normalise_knobs(_require(rec, "rim"), "rim"), normalise_knobs(_require(rec, "ifm"), "ifm"),
                       recipe)


def _flatten(node: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_record(path: Path, text: str) -> Run:
    """Check one record's fields (RecordError says which is wrong) and keep what the tables need."""
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(rec, dict):
        raise RecordError("not a JSON object")
    kind = _require(rec, "kind", str)
    if kind not in RECORD_KINDS:
        raise RecordError(f"unknown kind {kind!r} (expected one of {', '.join(RECORD_KINDS)})")
    run = Run(str(path), kind, rec, folder=path.parent)
    if kind == "pretrain":
        run.pre = _pretraining_of(rec)
        run.seed = _require(rec, "seed")
        metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
        for key in ("knn_top1", "knn_top1_init", "loss"):
            if isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key]):
                run.metrics[key] = float(metrics[key])
    elif kind in ("knn", "linear"):
        _require(rec, "method", str)
        _require(rec, "backbone", str)
        dataset = _require(rec, "dataset", str)
        settings = _require(rec, "protocol", dict)
        _require(rec, "checkpoint", (str, type(None)))
        run.metrics["top1"] = _number(rec, "metrics.top1")
        run.seed = rec.get("seed")
        if kind == "knn":
            k, t = _require(rec, "protocol.k", int), _number(rec, "protocol.temperature")
            family = f"kNN k={k} T={t:g}"
            detail = family
        else:
            family = "linear"
            detail = "linear ({} ep, {}, lr {:g}{})".format(
                settings.get("epochs", "?"), settings.get("optimizer", "?"), float(settings.get("lr") or 0),
                ", aug" if settings.get("augment") else "")
        run.eval_key = (dataset, family, detail, stable_hash(settings))
    else:
        _require(rec, "engine", str)
        protocol = _require(rec, "protocol", str)
        _require(rec, "source_checkpoint", str)
        backbone = canon_backbone(_require(rec, "backbone", str))
        for key in DET_METRICS:
            if key == "AP":
                run.metrics[key] = _number(rec, "metrics.AP")
            elif isinstance(rec.get("metrics", {}).get(key), (int, float)):
                run.metrics[key] = float(rec["metrics"][key])
        run.seed = _require(rec, "seed")
        run.eval_key = (protocol, backbone, rec["engine"])
    return run


def load_runs(paths: Sequence[Path], warn: Callable[[str], None]) -> tuple[list[Run], list[str]]:
    """Parse each record; bad ones are reported through `warn` (with their path) and skipped."""
    runs: list[Run] = []
    skipped: list[str] = []
    for path in paths:
        try:
            runs.append(parse_record(path, path.read_text()))
        except (RecordError, OSError, UnicodeDecodeError) as exc:
            skipped.append(str(path))
            warn(f"skipped {path}: {exc}")
    return runs, skipped


# ----------------------------------------------------------------------------- linking evaluations to pretraining


class PretrainIndex:
    """Finds the run a checkpoint (or converted .pkl) path belongs to: the run whose output folder is
    the path or one of its parents, compared first as written, then resolved. Built over pretraining
    records (and, to spot re-evaluations, over detection records)."""

    def __init__(self, runs: Iterable[Run]):
        self.by_text: dict[str, Run] = {}
        self.by_real: dict[str, Run] = {}
        for run in sorted(runs, key=lambda r: r.path):
            for text in (run.record.get("output_dir"), _run_dir_of(run.record.get("checkpoint"))):
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
    trained = PretrainIndex(r for r in runs if r.kind == "detection" and not r.record.get("eval_only"))
    kept = []
    for run in runs:
        if run.kind == "detection" and run.record.get("eval_only") and run.record["source_checkpoint"]:
            hit = trained.find(run.record["source_checkpoint"])
            if hit is not None and hit is not run:
                warn(f"{run.path}: re-evaluation of the model trained by {hit.path}; counted once (that record)")
                continue
        kept.append(run)
    return kept


def link_runs(runs: list[Run], warn: Callable[[str], None]) -> None:
    """Give every evaluation record the Pretraining it evaluates (random init, our run, or external)."""
    index = PretrainIndex(r for r in runs if r.kind == "pretrain")
    for run in runs:
        if run.kind == "pretrain":
            continue
        rec = run.record
        if run.kind == "detection":
            source = rec["source_checkpoint"]
            backbone = run.eval_key[1]
        else:
            source = rec.get("checkpoint") or ""
            backbone = canon_backbone(rec["backbone"])
        if not source or (run.kind != "detection" and rec.get("method") == "random-init"):
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
        method = str(rec.get("method", "")).lower()
        if run.kind != "detection" and method in METHOD_NAMES and isinstance(rec.get("rim"), dict) \
                and isinstance(rec.get("ifm"), dict):
            warn(f"{run.path}: its checkpoint {Path(source).name} has no pretraining record among the inputs; "
                 "pretraining data and epochs are shown as '?'")
            run.pre = Pretraining(method, backbone, "?", "?", normalise_knobs(rec["rim"], "rim"),
                                  normalise_knobs(rec["ifm"], "ifm"))
        else:
            warn(f"{run.path}: weights {Path(source).name} belong to no pretraining record among the inputs; "
                 "shown as external")
            run.pre = Pretraining(_external(source), backbone, "?", "?")


# ----------------------------------------------------------------------------- labels


def method_label(pre: Pretraining, defaults: dict[str, dict[str, Any]] | None = None) -> str:
    """'BYOL', 'BYOL+RIM', 'SimSiam+RIM(ratio=0.5)+IFM(level=projector)', 'random init', ..."""
    if not pre.ours:
        return pre.method
    defaults = defaults or _default_knobs()
    label = METHOD_NAMES[pre.method]
    for part, knobs in (("rim", pre.rim), ("ifm", pre.ifm)):
        d = dict(knobs)
        if not d.get("enabled"):
            continue
        changed = [f"{k}={_knob_text(v)}" for k, v in sorted(d.items())
                   if k != "enabled" and _knob_text(v) != _knob_text(defaults[part].get(k))]
        label += f"+{part.upper()}" + (f"({','.join(changed)})" if changed else "")
    return label


def _knob_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_knob_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return DASH if value is None else str(value)


class Labeller:
    """Row labels: the method label, plus the recipe hash when two recipes would share one label."""

    def __init__(self, pres: Iterable[Pretraining]):
        self.defaults = _default_knobs()
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


# ----------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class Published:
    """One published number set, with its source."""

    kind: str
    method: str
    data: str
    epochs: str
    backbone: str
    dataset: str
    protocol: str
    engine: str
    metrics: tuple
    note: str
    source: str


def read_baselines(path: str | os.PathLike) -> list[Published]:
    """Parse the baselines CSV; a bad row is a UserError naming the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"baselines file {path} does not exist (pass --baselines FILE, or restore "
                        "results/baselines.csv)")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    with open(path) as fh:
        header = next(csv.reader(fh), [])
    missing = [c for c in BASELINE_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(BASELINE_COLUMNS)}")
    out: list[Published] = []
    for line, row in enumerate(rows, start=2):
        def bad(col: str, why: str, line: int = line) -> UserError:
            return UserError(f"{path} line {line}, column {col}: {why}")

        if row["kind"] not in ("classification", "detection"):
            raise bad("kind", f"{row['kind']!r} is not classification or detection")
        for col in ("method", "protocol", "backbone", "dataset", "source"):
            if not (row[col] or "").strip():
                raise bad(col, "empty; every published number needs it")
        scale = {"%": 1.0, "fraction": 100.0}.get(row["unit"])
        if scale is None:
            raise bad("unit", f"{row['unit']!r} is neither % nor fraction")
        metrics = {}
        for col in ("AP", "AP50", "AP75", "mask_AP", "top1"):
            text = (row[col] or "").strip()
            if not text:
                continue
            try:
                metrics[col] = float(text) * scale
            except ValueError:
                raise bad(col, f"{text!r} is not a number") from None
        needed = "AP" if row["kind"] == "detection" else "top1"
        if needed not in metrics:
            raise bad(needed, f"a {row['kind']} row needs a {needed} value")
        if row["kind"] == "detection" and not row["engine"].strip():
            raise bad("engine", "empty; detection numbers must name their engine")
        out.append(Published(row["kind"], row["method"].strip(), row["pretrain_data"].strip() or DASH,
                             row["pretrain_epochs"].strip() or DASH, canon_backbone(row["backbone"]),
                             row["dataset"].strip(), row["protocol"].strip(), row["engine"].strip(),
                             tuple(sorted(metrics.items())), row["note"].strip(), row["source"].strip()))
    return out


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A table as display text (Markdown/LaTeX) and as raw values (CSV)."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    csv_columns: list[str]
    csv_rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    bars: list[dict] = field(default_factory=list)  # for the plot: section, label, value, err, published

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        lines = [f"# {self.title}", ""]
        lines.append("| " + " | ".join(map(cell, self.columns)) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(map(cell, r)) + " |" for r in self.rows]
        if self.notes:
            lines += [""] + [f"{n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_columns)
        writer.writerows(self.csv_rows)
        return buf.getvalue()

    def latex(self) -> str:
        lines = ["% " + self.title, "\\begin{tabular}{" + "l" * len(self.columns) + "}", "\\hline",
                 " & ".join(latex_escape(c) for c in self.columns) + " \\\\", "\\hline"]
        lines += [" & ".join(latex_escape(c) for c in r) + " \\\\" for r in self.rows]
        lines += ["\\hline", "\\end{tabular}"]
        return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "→": r"$\rightarrow$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (and write ± and Δ in math mode)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


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
        return ";".join(sorted(_seed_text(r.seed) for r in self.runs))


def _seed_text(seed: Any) -> str:
    if isinstance(seed, tuple):
        return "/".join(_seed_text(s) for s in seed)
    return DASH if seed is None else str(seed)


def group_runs(runs: Iterable[Run]) -> dict[tuple, Group]:
    """Group evaluation (or pretraining) runs by (pretraining, evaluation), i.e. everything but seeds."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = (run.pre, run.eval_key)
        groups.setdefault(key, Group(run.pre, run.eval_key, [])).runs.append(run)
    for g in groups.values():
        g.runs.sort(key=lambda r: r.path)
    return groups


def _mean_pm(stat: tuple[float, float | None, int] | None) -> str:
    if stat is None:
        return DASH
    m, s, _ = stat
    return fmt(m) if s is None else f"{fmt(m)} ± {fmt(s)}"


def _delta(group: Group, groups: dict[tuple, Group], metric: str) -> float | None:
    """mean(row) - mean(base row): same method, no RIM/IFM, same backbone, data, epochs, recipe and evaluation."""
    if not group.pre.ours or group.pre.is_base:
        return None
    base = groups.get((group.pre.base(), group.eval_key))
    a, b = group.stat(metric), base.stat(metric) if base else None
    if a is None or b is None:
        return None
    return a[0] - b[0]


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def classification_table(runs: list[Run], published: list[Published], label: Labeller) -> Table | None:
    """kNN and linear top-1 per dataset and method (mean ± std over seeds), published rows beside."""
    evals = [r for r in runs if r.kind in ("knn", "linear") and r.pre is not None]
    if not evals:
        return None
    groups = group_runs(evals)
    sections = sorted({(g.eval_key[0], g.eval_key[1], g.pre.backbone) for g in groups.values()})
    columns = ["dataset", "protocol", "backbone", "method", "pretrain data", "epochs", "top-1 (%)", "Δ top-1",
               "n", "source"]
    csv_columns = ["dataset", "protocol", "eval_settings", "backbone", "method", "rim", "ifm", "pretrain_data",
                   "pretrain_epochs", "from", "top1_mean", "top1_std", "n", "delta_top1", "seeds", "note",
                   "source"]
    table = Table("classification", "Classification: top-1 (%), mean ± std over seeds", columns, [],
                  csv_columns, [])
    for dataset, family, backbone in sections:
        section = f"{dataset} {family} {backbone}"
        mine = sorted((g for g in groups.values()
                       if g.eval_key[:2] == (dataset, family) and g.pre.backbone == backbone),
                      key=lambda g: (g.pre.sort_key(), g.eval_key))
        for g in mine:
            st = g.stat("top1")
            d = _delta(g, groups, "top1")
            table.rows.append([dataset, g.eval_key[2], backbone, label(g.pre), g.pre.data, g.pre.epochs,
                               _mean_pm(st), fmt(d, sign=True), str(st[2]), "ours"])
            table.csv_rows.append([dataset, family, g.eval_key[2], backbone, label(g.pre),
                                   json.dumps(dict(g.pre.rim), sort_keys=True),
                                   json.dumps(dict(g.pre.ifm), sort_keys=True), g.pre.data, g.pre.epochs, "ours",
                                   _num(st[0]), _num(st[1]), str(st[2]), _num(d), g.seeds(), "", ""])
            table.bars.append({"section": section, "label": label(g.pre), "value": st[0], "err": st[1] or 0.0,
                               "published": False})
        for p in published:
            if p.kind == "classification" and (p.dataset, p.protocol, p.backbone) == (dataset, family, backbone):
                top1 = dict(p.metrics)["top1"]
                table.rows.append([dataset, p.protocol, backbone, f"{p.method} (published)", p.data, p.epochs,
                                   fmt(top1), DASH, DASH, p.source + (f" ({p.note})" if p.note else "")])
                table.csv_rows.append([dataset, p.protocol, "", backbone, p.method, "", "", p.data, p.epochs,
                                       "published", _num(top1), "", "", "", "", p.note, p.source])
                table.bars.append({"section": section, "label": f"{p.method} ({p.epochs} ep)", "value": top1,
                                   "err": 0.0, "published": True})
    table.notes = ["Δ: difference of means against the same method without RIM/IFM (same backbone, pretraining "
                   "data and epochs, same evaluation). Published rows: numbers as published, shown only beside "
                   "our runs of the same dataset, protocol and backbone."]
    return table


def detection_table(runs: list[Run], published: list[Published], label: Labeller) -> Table | None:
    """AP / AP50 / AP75 per protocol, engine and method, published rows (with their engine) beside."""
    dets = [r for r in runs if r.kind == "detection" and r.pre is not None]
    if not dets:
        return None
    groups = group_runs(dets)
    sections = sorted({(g.eval_key[0], g.eval_key[1]) for g in groups.values()})
    shown = [p for p in published if p.kind == "detection" and (p.protocol, p.backbone) in sections]
    metrics = ["AP", "AP50", "AP75"]
    if any("mask_AP" in r.metrics for r in dets) or any(dict(p.metrics).get("mask_AP") is not None for p in shown):
        metrics.append("mask_AP")
    columns = ["protocol", "engine", "backbone", "method", "pretrain data", "epochs",
               *[m.replace("_", " ") for m in metrics], "Δ AP", "Δ AP50", "Δ AP75", "n", "source"]
    csv_columns = ["protocol", "engine", "backbone", "method", "rim", "ifm", "pretrain_data", "pretrain_epochs",
                   "from"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + \
                  ["delta_AP", "delta_AP50", "delta_AP75", "n", "seeds", "note", "source"]
    table = Table("detection", "Detection: box AP (%), mean ± std over seeds; engine shown per row", columns, [],
                  csv_columns, [])
    for protocol, backbone in sections:
        mine = sorted((g for g in groups.values() if g.eval_key[:2] == (protocol, backbone)),
                      key=lambda g: (g.eval_key[2], g.pre.sort_key()))
        for g in mine:
            engine = g.eval_key[2]
            stats = [g.stat(m) for m in metrics]
            deltas = [_delta(g, groups, m) for m in ("AP", "AP50", "AP75")]
            n = len(g.runs)
            table.rows.append([protocol, engine, backbone, label(g.pre), g.pre.data, g.pre.epochs,
                               *map(_mean_pm, stats), *(fmt(d, sign=True) for d in deltas), str(n), "ours"])
            raw = [x for st in stats for x in ((_num(st[0]), _num(st[1])) if st else ("", ""))]
            table.csv_rows.append([protocol, engine, backbone, label(g.pre),
                                   json.dumps(dict(g.pre.rim), sort_keys=True),
                                   json.dumps(dict(g.pre.ifm), sort_keys=True), g.pre.data, g.pre.epochs, "ours",
                                   *raw, *map(_num, deltas), str(n), g.seeds(), "", ""])
            ap = g.stat("AP")
            table.bars.append({"section": f"{protocol} {backbone}", "label": f"{label(g.pre)} [{engine}]",
                               "value": ap[0], "err": ap[1] or 0.0, "published": False})
        for p in shown:
            if (p.protocol, p.backbone) != (protocol, backbone):
                continue
            vals = dict(p.metrics)
            table.rows.append([protocol, p.engine, backbone, f"{p.method} (published)", p.data, p.epochs,
                               *(fmt(vals.get(m)) for m in metrics), DASH, DASH, DASH, DASH,
                               p.source + (f" ({p.note})" if p.note else "")])
            table.csv_rows.append([protocol, p.engine, backbone, p.method, "", "", p.data, p.epochs, "published",
                                   *[x for m in metrics for x in (_num(vals.get(m)), "")], "", "", "", "", "",
                                   p.note, p.source])
            table.bars.append({"section": f"{protocol} {backbone}", "label": f"{p.method} [{p.engine}]",
                               "value": vals["AP"], "err": 0.0, "published": True})
    table.notes = ["Δ: difference of means against the same method without RIM/IFM on the same protocol and "
                   "engine. Numbers from different engines are never differenced; published rows name their "
                   "engine and source."]
    return table


def ablation_table(runs: list[Run], label: Labeller) -> Table | None:
    """One row per pretraining setting (RIM/IFM knobs that vary across the runs), one column per
    evaluation: the pretraining's own kNN monitor, each kNN/linear protocol and each detection protocol."""
    pres = [r for r in runs if r.kind == "pretrain" and r.pre is not None and r.pre.ours]
    if not pres:
        return None
    settings = sorted({r.pre for r in pres}, key=Pretraining.sort_key)
    knob_cols: list[tuple[str, str]] = []
    for part in ("rim", "ifm"):
        names = sorted({k for p in settings for k, _ in getattr(p, part)}, key=lambda k: (k != "enabled", k))
        for name in names:  # a sub-knob varies when it differs among the runs that switch its part on
            pool = [dict(getattr(p, part)) for p in settings]
            if name != "enabled":
                pool = [d for d in pool if d.get("enabled")]
            if len({_knob_text(d.get(name)) for d in pool}) > 1:
                knob_cols.append((part, name))
    # evaluation columns: (header, kind, eval_key, metric)
    eval_cols: list[tuple[str, str, tuple, str]] = []
    if any("knn_top1" in r.metrics for r in pres):
        eval_cols.append(("pretrain kNN monitor", "pretrain", (), "knn_top1"))
    evals = [r for r in runs if r.kind != "pretrain" and r.pre is not None and r.pre.ours]
    cls_keys = sorted({(r.kind, r.eval_key) for r in evals if r.kind in ("knn", "linear")})
    for kind, key in cls_keys:
        same = [k for kk, k in cls_keys if k[:2] == key[:2]]
        head = f"{key[0]} {key[1]}" if len(same) == 1 else f"{key[0]} {key[2]}"
        eval_cols.append((head, kind, key, "top1"))
    for key in sorted({r.eval_key for r in evals if r.kind == "detection"}):
        eval_cols.append((f"AP {key[0]} [{key[2]}]", "detection", key, "AP"))
    columns = ["method", "backbone", "pretrain data", "epochs"] + \
              [f"{part.upper()}" + (f" {name}" if name != "enabled" else "") for part, name in knob_cols] + \
              [c[0] for c in eval_cols] + ["n"]
    csv_columns = ["method", "backbone", "pretrain_data", "pretrain_epochs"] + \
                  [f"{part}_{name}" for part, name in knob_cols] + \
                  [f"{c[0]} {s}" for c in eval_cols for s in ("mean", "std", "n")] + ["n", "seeds"]
    table = Table("ablation", "Ablation over the RIM/IFM settings present in the runs (mean ± std over seeds)",
                  columns, [], csv_columns, [])
    for pre in settings:
        own = sorted((r for r in pres if r.pre == pre), key=lambda r: r.path)
        knobs = []
        for part, name in knob_cols:
            d = dict(getattr(pre, part))
            knobs.append(_knob_text(d.get(name)) if (d.get("enabled") or name == "enabled") else DASH)
        cells, raw = [], []
        n = len(own)
        for head, kind, key, metric in eval_cols:
            pool = own if kind == "pretrain" else [r for r in evals if r.pre == pre and r.kind == kind
                                                   and r.eval_key == key]
            vals = [r.metrics[metric] for r in pool if metric in r.metrics]
            st = (*mean_std(vals), len(vals)) if vals else None
            text = _mean_pm(st)
            if st is not None and st[2] != n:
                text += f" (n={st[2]})"
            cells.append(text)
            raw += [_num(st[0]), _num(st[1]), str(st[2])] if st else ["", "", "0"]
            if st is not None:
                table.bars.append({"section": head, "label": label(pre), "value": st[0], "err": st[1] or 0.0,
                                   "published": False})
        table.rows.append([label(pre), pre.backbone, pre.data, pre.epochs, *knobs, *cells, str(n)])
        table.csv_rows.append([label(pre), pre.backbone, pre.data, pre.epochs, *knobs, *raw, str(n),
                               ";".join(sorted(_seed_text(r.seed) for r in own))])
    table.notes = ["Columns list only the RIM/IFM knobs whose value differs between runs ('-': the knob has no "
                   "effect because its switch is off); (n=k) marks a cell with a different number of seeds."]
    return table


# ----------------------------------------------------------------------------- driver


@dataclass
class Result:
    """What make_tables did: counts, the tables, the files written (relative to the out folder)."""

    found: int
    read: int
    skipped: list[str]
    tables: dict[str, Table]
    files: list[str]


def make_tables(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike,
                baselines: str | os.PathLike = DEFAULT_BASELINES, plots: bool = True,
                warn: Callable[[str], None] | None = None) -> Result:
    """Read records and baselines, write the tables (and plots) into `out`; returns a summary."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    published = read_baselines(baselines)
    paths = find_records(run_dirs)
    runs, skipped = load_runs(paths, warn)
    read = len(runs)
    runs = drop_reevaluations(runs, warn)
    link_runs(runs, warn)
    label = Labeller(r.pre for r in runs if r.pre is not None)
    tables = {name: t for name, t in (("classification", classification_table(runs, published, label)),
                                      ("detection", detection_table(runs, published, label)),
                                      ("ablation", ablation_table(runs, label))) if t is not None}
    files: list[str] = []
    if not runs:
        return Result(len(paths), read, skipped, tables, files)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLE_NAMES:
        for ext in ("md", "csv", "tex", "png"):
            stale = out / f"{name}.{ext}"
            if name not in tables and stale.is_file():
                stale.unlink()
    for name, table in tables.items():
        for ext, text in (("md", table.markdown()), ("csv", table.csv_text()), ("tex", table.latex())):
            _write(out / f"{name}.{ext}", text)
            files.append(f"{name}.{ext}")
    if plots:
        from reporting.plots import bar_chart, training_curves

        for name, table in tables.items():
            if table.bars:
                bar_chart(table.bars, table.title, out / f"{name}.png")
                files.append(f"{name}.png")
        curve_dir = out / "curves"
        written = training_curves(runs, label, curve_dir, warn)
        if curve_dir.is_dir():
            for old in curve_dir.glob("*.png"):
                if old.name not in written:
                    old.unlink()
        files += [f"curves/{n}" for n in written]
    return Result(len(paths), read, skipped, tables, sorted(files))


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


__all__ = ["make_tables", "read_baselines", "parse_record", "find_records", "method_label", "mean_std",
           "canon_backbone", "latex_escape", "Result", "Table", "RecordError", "DEFAULT_BASELINES"]
