"""Result tables from run records: classification, detection and ablation, beside published baselines.

Reads every `record.json` (kinds pretrain, knn, linear, detection; a pretraining record's online linear
classifier is one more classification run) under some folders plus the published baselines CSV, groups
our runs by everything but the seed (mean and its uncertainty: sd over seeds, or the SE of one run's
evaluation set; n; delta against the base method on the same protocol and engine, marked when within
noise) and writes Markdown, CSV and LaTeX tables and PNG plots. Published rows sit beside ours only on
the same dataset, backbone and protocol. A record that fails validation is in no table: it is listed, with the reason, in
rejected.md and in the result. Output bytes depend only on the records' content: rows are sorted,
floats are formatted with fixed digits, and no timestamp or absolute path is written.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reporting.baselines import DEFAULT_BASELINES, Published, read_baselines
from reporting.groups import Delta, Stat, compare, group_runs, seed_text, summarise
from reporting.labels import Labeller, knob_text
from reporting.plots import bar_chart, training_curves
from reporting.protocols import PROTOCOL_MEANING, same_protocol
from reporting.render import (
    DASH,
    NOISE_MARK,
    UNDECIDED_MARK,
    UNKNOWN_PM,
    Table,
    delta_text,
    fmt,
    num,
    stat_text,
)
from reporting.runs import (
    CLASSIFICATION_KINDS,
    Pretraining,
    Rejected,
    Run,
    drop_reevaluations,
    find_records,
    link_runs,
    load_runs,
)
from rimifm.io import atomic_write_text

TABLE_NAMES = ("classification", "detection", "ablation")
REJECTED = "rejected.md"
#: the legend of every table's ± and of the within-noise mark
SD_NOTE = "± u (sd, n=k): sample standard deviation over the k runs (seeds) of the row."
TOP1_SE_NOTE = ("± u (SE): one run; the binomial standard error sqrt(p(1-p)/N) of its top-1 p on the N validation "
                f"images its record names (num_val). {UNKNOWN_PM}: one run whose record names no N; uncertainty "
                "unknown.")
AP_SE_NOTE = ("± u (SE): one run; the bootstrap standard error over test images its record gives (metrics_se). "
              f"{UNKNOWN_PM}: one run without metrics_se (written before it existed; mask AP has none); "
              "uncertainty unknown.")
NOISE_NOTE = (f"{NOISE_MARK}: within noise, |Δ| < 2·sqrt(u_a² + u_b²) with u_a, u_b the uncertainties (±) of the "
              f"row and of its base row; {UNDECIDED_MARK}: one of them is unknown, so not decided. A Δ without a "
              "mark is at least twice its combined uncertainty. Plots: error bars are these ±, bars of a row "
              f"within noise are hatched and labelled {NOISE_MARK}.")
PUBLISHED_NOTE = "Published rows: the number as its source gives it, without an uncertainty (CSV unc_kind 'published')."


def _bar(section: str, text: str, st: Stat, d: Delta | None = None, published: bool = False) -> dict:
    """One bar of a table's plot: the value, its uncertainty (error bar) and its delta's noise mark."""
    return {"section": section, "label": text + (f"  Δ {delta_text(d)}" if d is not None else ""),
            "value": st.mean, "err": st.unc, "published": published,
            "within_noise": d is not None and d.within_noise is True}


def _delta_csv(d: Delta | None) -> list[str]:
    return ["", "", ""] if d is None else [num(d.value), num(d.combined), d.noise_text]


def classification_table(runs: list[Run], published: list[Published], label: Labeller) -> Table | None:
    """Top-1 per dataset, protocol and method (mean ± uncertainty), published rows of the same dataset,
    backbone and protocol beside."""
    evals = [r for r in runs if r.kind in CLASSIFICATION_KINDS and r.pre is not None]
    if not evals:
        return None
    groups = group_runs(evals)
    sections = sorted({(g.eval_key[0], g.eval_key[1], g.pre.backbone) for g in groups.values()})
    columns = ["dataset", "protocol", "settings", "backbone", "method", "pretrain data", "epochs", "top-1 (%)",
               "Δ top-1", "n", "source"]
    csv_columns = ["dataset", "protocol", "eval_settings", "backbone", "method", "rim", "ifm", "pretrain_data",
                   "pretrain_epochs", "from", "top1_mean", "top1_unc", "unc_kind", "n", "delta_top1",
                   "delta_top1_unc", "delta_top1_noise", "seeds", "note", "source"]
    table = Table("classification", "Classification: top-1 (%), mean ± uncertainty (sd over seeds, or SE of one "
                  "run's evaluation set)", columns, [], csv_columns, [])
    for dataset, protocol, backbone in sections:
        section = f"{dataset} {protocol} {backbone}"
        mine = sorted((g for g in groups.values()
                       if g.eval_key[:2] == (dataset, protocol) and g.pre.backbone == backbone),
                      key=lambda g: (g.pre.sort_key(), g.eval_key))
        for g in mine:
            st, d = g.stat("top1"), compare(g, groups, "top1")
            table.rows.append([dataset, protocol, g.eval_key[2], backbone, label(g.pre), g.pre.data, g.pre.epochs,
                               stat_text(st), delta_text(d), str(st.n), "ours"])
            table.csv_rows.append([dataset, protocol, g.eval_key[2], backbone, label(g.pre),
                                   json.dumps(dict(g.pre.rim), sort_keys=True),
                                   json.dumps(dict(g.pre.ifm), sort_keys=True), g.pre.data, g.pre.epochs, "ours",
                                   num(st.mean), num(st.unc), st.kind, str(st.n), *_delta_csv(d), g.seeds(), "",
                                   ""])
            table.bars.append(_bar(section, label(g.pre), st, d))
        settings = {g.eval_key[2] for g in mine}
        for p in published:
            if p.kind != "classification" or (p.dataset, p.backbone) != (dataset, backbone) or \
                    not same_protocol(p.protocol_name, p.settings, protocol, settings):
                continue
            top1 = dict(p.metrics)["top1"]
            table.rows.append([dataset, protocol, p.settings_text(), backbone, f"{p.method} (published)", p.data,
                               p.epochs, fmt(top1), DASH, DASH, p.source + (f" ({p.note})" if p.note else "")])
            table.csv_rows.append([dataset, protocol, p.settings_text(""), backbone, p.method, "", "", p.data, p.epochs,
                                   "published", num(top1), "", "published", "", "", "", "", "", p.note, p.source])
            marks = "".join(f", {m}" for m in p.marks)
            table.bars.append(_bar(section, f"{p.method} ({p.epochs} ep{marks})", Stat(top1, None, "published", 0),
                                   published=True))
    table.notes = [SD_NOTE + " " + TOP1_SE_NOTE,
                   "Δ: difference of means against the same method without RIM/IFM (same backbone, pretraining "
                   "data and epochs, same evaluation). " + NOISE_NOTE,
                   "Protocols: " + "; ".join(f"{k}: {v}" for k, v in PROTOCOL_MEANING.items()) + ".",
                   "Published rows sit only beside our runs of the same dataset, backbone and protocol name (and "
                   "the same settings where the published row names them; a published linear row names its recipe "
                   "and an online-linear one needs a run whose classifier saw unmasked views). Marks in brackets "
                   "say how a published protocol differs from ours. " + PUBLISHED_NOTE]
    return table


def detection_table(runs: list[Run], published: list[Published], label: Labeller) -> Table | None:
    """AP / AP50 / AP75 (mean ± uncertainty) per protocol, engine and method, published rows (with their
    engine) beside."""
    dets = [r for r in runs if r.kind == "detection" and r.pre is not None]
    if not dets:
        return None
    groups = group_runs(dets)
    sections = sorted({(g.eval_key[0], g.eval_key[1]) for g in groups.values()})
    shown = [p for p in published if p.kind == "detection" and (p.protocol, p.backbone) in sections]
    metrics = ["AP", "AP50", "AP75"]
    if any("mask_AP" in r.metrics for r in dets) or any(dict(p.metrics).get("mask_AP") is not None for p in shown):
        metrics.append("mask_AP")
    deltas = ("AP", "AP50", "AP75")
    columns = ["protocol", "engine", "backbone", "method", "pretrain data", "epochs",
               *[m.replace("_", " ") for m in metrics], *[f"Δ {m}" for m in deltas], "n", "source"]
    csv_columns = ["protocol", "engine", "backbone", "method", "rim", "ifm", "pretrain_data", "pretrain_epochs",
                   "from"] + [f"{m}_{s}" for m in metrics for s in ("mean", "unc", "unc_kind")] + \
                  [f"delta_{m}{s}" for m in deltas for s in ("", "_unc", "_noise")] + ["n", "seeds", "note", "source"]
    table = Table("detection", "Detection: box AP (%), mean ± uncertainty (sd over seeds, or bootstrap SE of one "
                  "run); engine shown per row", columns, [], csv_columns, [])
    for protocol, backbone in sections:
        mine = sorted((g for g in groups.values() if g.eval_key[:2] == (protocol, backbone)),
                      key=lambda g: (g.eval_key[2], g.pre.sort_key()))
        for g in mine:
            engine = g.eval_key[2]
            stats = [g.stat(m) for m in metrics]
            diffs = [compare(g, groups, m) for m in deltas]
            n = len(g.runs)
            table.rows.append([protocol, engine, backbone, label(g.pre), g.pre.data, g.pre.epochs,
                               *map(stat_text, stats), *map(delta_text, diffs), str(n), "ours"])
            raw = [x for st in stats for x in ((num(st.mean), num(st.unc), st.kind) if st else ("", "", ""))]
            table.csv_rows.append([protocol, engine, backbone, label(g.pre),
                                   json.dumps(dict(g.pre.rim), sort_keys=True),
                                   json.dumps(dict(g.pre.ifm), sort_keys=True), g.pre.data, g.pre.epochs, "ours",
                                   *raw, *[x for d in diffs for x in _delta_csv(d)], str(n), g.seeds(), "", ""])
            table.bars.append(_bar(f"{protocol} {backbone}", f"{label(g.pre)} [{engine}]", stats[0], diffs[0]))
        for p in shown:
            if (p.protocol, p.backbone) != (protocol, backbone):
                continue
            vals = dict(p.metrics)
            table.rows.append([protocol, p.engine, backbone, f"{p.method} (published)", p.data, p.epochs,
                               *(fmt(vals.get(m)) for m in metrics), *(DASH for _ in deltas), DASH,
                               p.source + (f" ({p.note})" if p.note else "")])
            table.csv_rows.append([protocol, p.engine, backbone, p.method, "", "", p.data, p.epochs, "published",
                                   *[x for m in metrics for x in (num(vals.get(m)), "",
                                                                  "published" if m in vals else "")],
                                   *("" for _ in range(3 * len(deltas))), "", "", p.note, p.source])
            table.bars.append(_bar(f"{protocol} {backbone}", f"{p.method} [{p.engine}]",
                                   Stat(vals["AP"], None, "published", 0), published=True))
    table.notes = [SD_NOTE + " " + AP_SE_NOTE,
                   "Δ: difference of means against the same method without RIM/IFM on the same protocol and "
                   "engine. " + NOISE_NOTE,
                   "Numbers from different engines are never differenced; published rows name their engine and "
                   "source. " + PUBLISHED_NOTE]
    return table


def ablation_table(runs: list[Run], label: Labeller) -> Table | None:
    """One row per pretraining setting (RIM/IFM knobs that vary across the runs), one column per
    evaluation (mean ± uncertainty): the pretraining's own kNN monitor, each classification protocol and
    each detection protocol."""
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
            if len({knob_text(d.get(name)) for d in pool}) > 1:
                knob_cols.append((part, name))
    # evaluation columns: (header, kind, eval_key, metric)
    eval_cols: list[tuple[str, str, tuple, str]] = []
    if any("knn_top1" in r.metrics for r in pres):
        eval_cols.append(("pretrain kNN monitor", "pretrain", (), "knn_top1"))
    evals = [r for r in runs if r.kind != "pretrain" and r.pre is not None and r.pre.ours]
    cls_keys = sorted({(r.kind, r.eval_key) for r in evals if r.kind in CLASSIFICATION_KINDS})
    for kind, key in cls_keys:
        same = [k for kk, k in cls_keys if k[:2] == key[:2]]
        head = f"{key[0]} {key[1]}" if len(same) == 1 else f"{key[0]} {key[1]} ({key[2]})"
        eval_cols.append((head, kind, key, "top1"))
    for key in sorted({r.eval_key for r in evals if r.kind == "detection"}):
        eval_cols.append((f"AP {key[0]} [{key[2]}]", "detection", key, "AP"))
    columns = ["method", "backbone", "pretrain data", "epochs"] + \
              [f"{part.upper()}" + (f" {name}" if name != "enabled" else "") for part, name in knob_cols] + \
              [c[0] for c in eval_cols] + ["n"]
    csv_columns = ["method", "backbone", "pretrain_data", "pretrain_epochs"] + \
                  [f"{part}_{name}" for part, name in knob_cols] + \
                  [f"{c[0]} {s}" for c in eval_cols for s in ("mean", "unc", "unc_kind", "n")] + ["n", "seeds"]
    table = Table("ablation", "Ablation over the RIM/IFM settings present in the runs (mean ± uncertainty)",
                  columns, [], csv_columns, [])
    for pre in settings:
        own = sorted((r for r in pres if r.pre == pre), key=lambda r: r.path)
        knobs = []
        for part, name in knob_cols:
            d = dict(getattr(pre, part))
            knobs.append(knob_text(d.get(name)) if (d.get("enabled") or name == "enabled") else DASH)
        cells, raw = [], []
        for head, kind, key, metric in eval_cols:
            pool = own if kind == "pretrain" else [r for r in evals if r.pre == pre and r.kind == kind
                                                   and r.eval_key == key]
            st = summarise(pool, metric)
            cells.append(stat_text(st))
            raw += [num(st.mean), num(st.unc), st.kind, str(st.n)] if st else ["", "", "", "0"]
            if st is not None:
                table.bars.append(_bar(head, label(pre), st))
        table.rows.append([label(pre), pre.backbone, pre.data, pre.epochs, *knobs, *cells, str(len(own))])
        table.csv_rows.append([label(pre), pre.backbone, pre.data, pre.epochs, *knobs, *raw, str(len(own)),
                               ";".join(sorted(seed_text(r.seed) for r in own))])
    table.notes = ["Columns list only the RIM/IFM knobs whose value differs between runs ('-': the knob has no "
                   "effect because its switch is off); n counts the pretraining runs.",
                   "± u (sd, n=k): sample standard deviation over the k runs of the cell. ± u (SE): one run; for a "
                   "top-1 the binomial standard error sqrt(p(1-p)/N) on the N validation images its record names "
                   "(num_val), for an AP the bootstrap standard error its record gives (metrics_se). "
                   f"{UNKNOWN_PM}: one run whose record gives neither (the pretraining kNN monitor records no "
                   "image count); uncertainty unknown."]
    return table


# ----------------------------------------------------------------------------- driver


@dataclass
class Result:
    """What make_tables did: counts, the tables, the rejected records, the files written (relative to out)."""

    found: int
    read: int
    rejected: list[Rejected]
    tables: dict[str, Table]
    files: list[str]


def shown_path(path: str | os.PathLike, run_dirs: Sequence[str | os.PathLike]) -> str:
    """A record's path from the name of the runs folder it was found under: the same text wherever that
    folder lies, so the written output holds no absolute path."""
    path = Path(path)
    for d in map(Path, run_dirs):
        if path == d:
            return f"{d.resolve().parent.name}/{d.name}"
        try:
            rel = path.relative_to(d)
        except ValueError:
            continue
        return (Path(d.name or d.resolve().name) / rel).as_posix()
    return path.name


def rejected_table(rejected: Sequence[Rejected], run_dirs: Sequence[str | os.PathLike]) -> Table:
    """The records left out of every table, with the reason each failed validation, sorted by path."""
    rows = sorted([shown_path(r.path, run_dirs), r.reason] for r in rejected)
    return Table("rejected", "Rejected records: they failed validation and are in no table", ["record", "reason"],
                 rows, ["record", "reason"], rows,
                 ["Paths start at the runs folder each record was found in. Fix or remove each record (the "
                  "reason names the field), then make the tables again; --strict fails while any is listed."])


def make_tables(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike,
                baselines: str | os.PathLike = DEFAULT_BASELINES, plots: bool = True,
                warn: Callable[[str], None] | None = None) -> Result:
    """Read records and baselines, write the tables (and plots) into `out`; returns a summary.

    Records that fail validation are returned in `Result.rejected` and listed in `out`/rejected.md."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    published = read_baselines(baselines)
    paths = find_records(run_dirs)
    runs, rejected = load_runs(paths)
    read = len(paths) - len(rejected)  # records, not runs (an online_linear block adds a run)
    runs = drop_reevaluations(runs, warn)
    link_runs(runs, warn)
    label = Labeller(r.pre for r in runs if r.pre is not None)
    tables = {name: t for name, t in (("classification", classification_table(runs, published, label)),
                                      ("detection", detection_table(runs, published, label)),
                                      ("ablation", ablation_table(runs, label))) if t is not None}
    files: list[str] = []
    if not runs:
        return Result(len(paths), read, rejected, tables, files)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLE_NAMES:
        for ext in ("md", "csv", "tex", "png"):
            stale = out / f"{name}.{ext}"
            if name not in tables and stale.is_file():
                stale.unlink()
    for name, table in tables.items():
        for ext, text in (("md", table.markdown()), ("csv", table.csv_text()), ("tex", table.latex())):
            atomic_write_text(out / f"{name}.{ext}", text)
            files.append(f"{name}.{ext}")
    if rejected:
        atomic_write_text(out / REJECTED, rejected_table(rejected, run_dirs).markdown())
        files.append(REJECTED)
    elif (out / REJECTED).is_file():
        (out / REJECTED).unlink()
    if plots:
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
    return Result(len(paths), read, rejected, tables, sorted(files))


__all__ = ["TABLE_NAMES", "Result", "ablation_table", "classification_table", "detection_table", "make_tables",
           "rejected_table"]
