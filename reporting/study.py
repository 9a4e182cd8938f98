"""The report of a study (demo/study.py): one table of kNN top-1 per variant and baseline, the paired test of
each variant against base across seeds, and the learning curves.

Input: the study's manifest (rows of {seed: record paths}); every number is read from the run records.
Output, in the results folder: study.md (the table, what it shows in words, the command, commit and
calibration figure), study.csv (one line per row), per_seed.csv (one line per run) and curves.png (the
online kNN against step of each variant, mean over seeds with the seeds' range shaded). Bytes depend only
on the records and the manifest (no timestamp, no absolute path).

Uncertainty: with two or more seeds a row's ± is the sample sd over seeds, and a Δ's ± the sd of the
per-seed differences, tested with the paired t-test (reporting/paired.py). With one seed every ± is the
binomial SE of one top-1 on the N validation images, a Δ's the combined SE of its two numbers, and a Δ
is within noise when smaller than twice that (the rule of the other tables).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from reporting.groups import mean_std
from reporting.paired import ALPHA, paired_test
from reporting.plots import Figure, _save, matplotlib
from reporting.provenance import calibration_line, code_line, dates_line, read_step_record, step_records
from reporting.runs import binomial_se
from rimifm.errors import UserError
from rimifm.io import atomic_write_text

DASH = "—"
DET_METRICS = ("AP50", "AP", "AP75")
BACKBONE_TITLES = {"resnet_tiny": "ResNet-tiny"}


def dataset_title(cfg: Any) -> str:
    """The dataset as a reader names it: DATA.NAME, else DATA.DATASET."""
    return str(cfg.DATA.NAME or cfg.DATA.DATASET)


def backbone_title(name: str) -> str:
    """'resnet18' -> 'ResNet-18', 'resnet_tiny' -> 'ResNet-tiny'."""
    if name in BACKBONE_TITLES:
        return BACKBONE_TITLES[name]
    return f"ResNet-{name[len('resnet'):]}" if name.startswith("resnet") and name[6:].isdigit() else name


class Row:
    """One row: kNN top-1 per seed, plus the training time and online curve of each seed's pretraining."""

    def __init__(self, key: str, spec: dict):
        self.key, self.label, self.kind = key, spec["label"], spec["kind"]
        self.top1: dict[str, float] = {}
        self.num_val: dict[str, int] = {}
        self.time: dict[str, float] = {}
        self.curves: dict[str, list[dict]] = {}
        self.pixels_online: float | None = None
        for seed, paths in sorted(spec["runs"].items()):
            knn = read_step_record(paths.get("knn"), "kNN")
            if "metrics" not in knn:
                raise UserError(f"{paths.get('knn')}: no kNN result; run the study again to redo it")
            self.top1[seed] = float(knn["metrics"]["top1"])
            self.num_val[seed] = int(knn.get("num_val") or 0)
            pre = read_step_record(paths.get("pretrain"), "pretraining")
            if pre.get("train_time_s") is not None:
                self.time[seed] = float(pre["train_time_s"])
            if pre.get("knn_curve"):
                self.curves[seed] = pre["knn_curve"]
            if (pre.get("metrics") or {}).get("knn_top1_pixels") is not None:
                self.pixels_online = float(pre["metrics"]["knn_top1_pixels"])

    @property
    def n(self) -> int:
        return len(self.top1)

    def stat(self) -> tuple[float, float | None, str]:
        """Mean, its ± and what the ± is ('sd' over seeds, 'SE' of one run's top-1)."""
        mean, sd = mean_std(list(self.top1.values()))
        if self.n >= 2:
            return mean, sd, "sd"
        n_val = next(iter(self.num_val.values()), 0)
        return mean, (binomial_se(mean, n_val) if n_val else None), "SE"


def p_text(p: float) -> str:
    """A p-value as the report writes it: three decimals, or two significant digits below 0.001."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _pm(value: float, unc: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" + ("" if unc is None else f" ± {unc:.{digits}f}")


class DetRow:
    """One row's detection transfer: AP50, AP and AP75 per seed, with each run's bootstrap SE."""

    def __init__(self, key: str, spec: dict):
        self.key, self.label, self.kind = key, spec["label"], spec["kind"]
        self.values: dict[str, dict[str, float]] = {m: {} for m in DET_METRICS}
        self.se: dict[str, dict[str, float]] = {m: {} for m in DET_METRICS}
        self.protocol, self.iterations = "", 0
        for seed, paths in sorted(spec["runs"].items()):
            if not paths.get("detection"):
                continue
            record = read_step_record(paths["detection"], "detection")
            metrics, se = record.get("metrics") or {}, record.get("metrics_se") or {}
            if "AP50" not in metrics:
                raise UserError(f"{paths['detection']}: no AP50; run the study again to redo that fine-tuning")
            for m in DET_METRICS:
                if metrics.get(m) is not None:
                    self.values[m][seed] = float(metrics[m])
                if se.get(m) is not None:
                    self.se[m][seed] = float(se[m])
            self.protocol, self.iterations = str(record.get("protocol") or ""), int(record.get("iterations") or 0)

    @property
    def n(self) -> int:
        return len(self.values["AP50"])

    def stat(self, metric: str) -> tuple[float, float | None, str]:
        """Mean, its ± and what the ± is ('sd' over seeds, else the bootstrap 'SE' of the one run)."""
        values = self.values[metric]
        mean, sd = mean_std(list(values.values()))
        if len(values) >= 2:
            return mean, sd, "sd"
        return mean, next(iter(self.se[metric].values()), None), "SE"


def _delta(row: Row, base: Row, test: str) -> dict | None:
    """Δ of row's kNN top-1 against base's (see _compare)."""
    return _compare(row.top1, base.top1, test, row.stat()[1], base.stat()[1])


def _compare(values: dict[str, float], base: dict[str, float], test: str, unc: float | None,
             base_unc: float | None) -> dict | None:
    """Δ of {seed: value} against base's: paired over common seeds (n >= 2), else with the combined SE of one
    run each (unc, base_unc: each run's SE)."""
    common = sorted(set(values) & set(base))
    if not common:
        return None
    if len(common) >= 2 and test == "paired-t":
        t = paired_test({s: values[s] for s in common}, {s: base[s] for s in common})
        return {"value": t.mean, "unc": t.sd, "unc_kind": "sd", "t": t.t, "p": t.p, "n": t.n,
                "verdict": t.verdict, "test": f"t = {t.t:.2f}, p = {p_text(t.p)} (n = {t.n})"}
    diffs = [values[s] - base[s] for s in common]
    value = math.fsum(diffs) / len(diffs)
    if len(common) >= 2:
        _, sd = mean_std(diffs)
        return {"value": value, "unc": sd, "unc_kind": "sd", "t": None, "p": None, "n": len(common),
                "verdict": "", "test": "no test (--test none)"}
    combined = None if unc is None or base_unc is None else math.hypot(unc, base_unc)
    verdict = "" if combined is None else ("within noise" if abs(value) < 2 * combined else "beyond 2 SE")
    return {"value": value, "unc": combined, "unc_kind": "SE", "t": None, "p": None, "n": 1, "verdict": verdict,
            "test": f"1 seed: {verdict} (|Δ| vs 2 SE)" if verdict else "1 seed"}


def _delta_text(d: dict | None) -> str:
    if d is None:
        return DASH
    return f"{d['value']:+.2f}" + ("" if d["unc"] is None else f" ± {d['unc']:.2f}")


#: the four variants in the paper's order; extra rows follow in the order the study ran them
_VARIANTS = ("base", "rim", "ifm", "rim-ifm")


def _variant_rank(key: str, manifest: dict) -> tuple[int, int]:
    """Rows in a fixed order, whatever order the manifest's JSON keeps its keys in."""
    if key in _VARIANTS:
        return 0, _VARIANTS.index(key)
    ran = list(manifest.get("order") or sorted(manifest["rows"]))
    return 1, ran.index(key) if key in ran else len(ran)


def build_report(manifest: dict) -> tuple[str, list[list[str]], list[list[str]], dict[str, Row], list[list[str]]]:
    """(study.md text, study.csv rows, per_seed.csv rows, the rows, transfer.csv rows) of a manifest."""
    rows = {key: Row(key, spec) for key, spec in manifest["rows"].items()}
    base_key = manifest.get("base", "base")
    if base_key not in rows:
        raise UserError(f"the study has no {base_key!r} row; run it with the base variant")
    base, test = rows[base_key], manifest.get("test", "paired-t")
    random = rows.get("random-init")
    seeds = manifest.get("seeds", [])
    n_val = next(iter(base.num_val.values()), 0)
    lines = [f"# {manifest['title']}", ""]
    lines.append(f"kNN top-1 (%) of the frozen backbone (k={manifest['k']}, T={manifest['temperature']:g}, cosine) "
                 f"on the {n_val} validation images, every training image in the bank; "
                 f"{len(seeds)} seed(s) ({' '.join(map(str, seeds))}), each variant pretrained for "
                 f"{manifest['epochs']} epoch(s) at batch {manifest['batch_size']}.")
    lines.append("")
    header = ["row", "kNN top-1 (%)", f"Δ vs {base.label}", "test", "Δ vs random init", "training time (s)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = [["row", "kind", "n", "seeds", "top1_mean", "top1_unc", "unc_kind", "delta_base", "delta_base_unc",
                 "t", "p", "verdict", "delta_random_init", "delta_random_init_unc", "train_time_s"]]
    order = sorted(rows.values(), key=lambda r: ({"variant": 0, "supervised": 1, "random-init": 2,
                                                  "raw-pixels": 3}.get(r.kind, 4), r.key != base_key,
                                                 _variant_rank(r.key, manifest)))
    rows = {row.key: row for row in order}  # the findings and the curves follow the table's order too
    deltas: dict[str, dict | None] = {}
    for row in order:
        mean, unc, kind = row.stat()
        vs_base = _delta(row, base, test) if row is not base and row.kind in ("variant", "supervised") else None
        vs_random = _delta(row, random, test) if random is not None and row.kind in ("variant", "supervised") else None
        deltas[row.key] = vs_base
        times = list(row.time.values())
        time_text = DASH if not times else _pm(*mean_std(times), digits=0) if len(times) > 1 else f"{times[0]:.0f}"
        n_text = f" (n={row.n})" if row.n > 1 else f" ({kind})" if unc is not None else ""
        lines.append("| " + " | ".join([row.label, _pm(mean, unc) + n_text, _delta_text(vs_base),
                                         vs_base["test"] if vs_base else DASH, _delta_text(vs_random),
                                         time_text]) + " |")
        csv_rows.append([row.label, row.kind, str(row.n), " ".join(sorted(row.top1)), f"{mean:.4f}",
                         "" if unc is None else f"{unc:.4f}", kind,
                         *(["", "", "", "", ""] if vs_base is None else
                           [f"{vs_base['value']:.4f}", "" if vs_base["unc"] is None else f"{vs_base['unc']:.4f}",
                            "" if vs_base["t"] is None else f"{vs_base['t']:.4f}",
                            "" if vs_base["p"] is None else f"{vs_base['p']:.4f}", vs_base["verdict"]]),
                         *(["", ""] if vs_random is None else
                           [f"{vs_random['value']:.4f}", "" if vs_random["unc"] is None else f"{vs_random['unc']:.4f}"]),
                         "" if not times else f"{mean_std(times)[0]:.1f}"])
    lines += ["", "## What it shows", ""]
    lines += _findings(rows, base, deltas, test)
    transfer_lines, transfer_table = _transfer(manifest, base_key, test)
    lines += transfer_lines
    lines += ["", "## How it was made", ""]
    unc_text = ("± is the sample sd over seeds; a Δ's ± is the sd of the per-seed differences, and its test the "
                f"paired t-test across seeds (significant when p < {ALPHA:g})." if len(seeds) >= 2 else
                "± is the binomial SE of one top-1 on the validation images; a Δ's ± is the combined SE of its "
                "two numbers, within noise when |Δ| < 2 SE.")
    lines.append(f"- Uncertainty: {unc_text}")
    lines.append("- random init: the recipe's backbone with each seed's initial weights (those its pretraining starts "
                 "from); raw pixels: the normalised evaluation view, flattened; supervised: the same backbone trained "
                 "with labels (cross-entropy on the same views) for the training time the base variant took.")
    lines.append("- training time: data and compute of pretraining, online evaluations excluded.")
    if transfer_table:
        lines.append("- Detection: with one seed a ± is the run's bootstrap SE over test images and a Δ is beyond "
                     "noise when larger than twice the combined SE; with more, as above. Overrides of every "
                     f"fine-tuning: `{' '.join(manifest.get('det_opts') or []) or 'none'}`.")
    if manifest.get("command"):
        lines.append(f"- Command: `{manifest['command']}`")
    records = step_records(manifest)  # read once for both lines
    lines.append(f"- Code: {code_line(manifest, records)}")
    lines.append(f"- When: {dates_line(manifest, records)}")
    lines.append(f"- Machine: {calibration_line(manifest)}"
                 + " (`python benchmarks/pretrain_throughput.py --batch 64`, base; a slow 2-core machine gives "
                   "about 36-56).")
    if manifest.get("opts"):
        lines.append(f"- Overrides of every pretraining run: `{' '.join(manifest['opts'])}`")
    per_seed = [["row", "seed", "top1", "num_val", "train_time_s"]]
    for row in order:
        for seed in sorted(row.top1):
            per_seed.append([row.label, seed, f"{row.top1[seed]:.4f}", str(row.num_val[seed]),
                             "" if seed not in row.time else f"{row.time[seed]:.1f}"])
    return "\n".join(lines) + "\n", csv_rows, per_seed, rows, transfer_table


def _verdict(d: dict, base: str) -> str:
    """A Δ's verdict with its direction: 'significant, lower than BYOL', 'within noise', 'not tested'."""
    if not d["verdict"]:
        return "not tested"
    if d["verdict"] == "within noise":
        return d["verdict"]
    return f"{d['verdict']}, {'higher' if d['value'] > 0 else 'lower'} than {base}"


def _transfer(manifest: dict, base_key: str, test: str) -> tuple[list[str], list[list[str]]]:
    """The detection transfer section (Markdown lines) and transfer.csv rows; nothing when no row has one."""
    rows = {key: DetRow(key, spec) for key, spec in manifest["rows"].items()}
    rows = {key: row for key, row in rows.items() if row.n}
    if base_key not in rows:
        return [], []
    base, random = rows[base_key], rows.get("random-init")
    order = sorted(rows.values(), key=lambda r: ({"variant": 0, "supervised": 1, "random-init": 2}.get(r.kind, 3),
                                                 r.key != base_key, _variant_rank(r.key, manifest)))
    lines = ["", f"## Detection transfer: {manifest.get('detection') or 'detection'}", "",
             f"Faster R-CNN fine-tuned from each backbone ({base.protocol}, {base.iterations} iterations, the same seed "
             "for every row of a seed) and evaluated on the test split: AP50, AP (the mean over IoU 0.50-0.95) and AP75, "
             "in %.", ""]
    header = ["row", "AP50", "AP", "AP75", f"Δ AP50 vs {base.label}", "test", "Δ AP50 vs random init", "test "]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = [["row", "kind", "n", *[f"{m}_{x}" for m in DET_METRICS for x in ("mean", "unc")], "unc_kind",
              "delta_ap50_base", "delta_ap50_base_unc", "p_base", "verdict_base", "delta_ap50_random",
              "delta_ap50_random_unc", "p_random", "verdict_random"]]
    found = []

    def compare(row: DetRow, other: DetRow | None) -> dict | None:
        if other is None or row is other:
            return None
        return _compare(row.values["AP50"], other.values["AP50"], test, row.stat("AP50")[1], other.stat("AP50")[1])

    for row in order:
        stats = {m: row.stat(m) for m in DET_METRICS}
        kind = stats["AP50"][2]
        vs_base = compare(row, base) if row.kind in ("variant", "supervised") else None
        vs_random = compare(row, random) if row.kind in ("variant", "supervised") else None
        n_text = f" (n={row.n})" if row.n > 1 else f" ({kind})" if stats["AP50"][1] is not None else ""
        lines.append("| " + " | ".join([row.label, *[_pm(*stats[m][:2]) + (n_text if m == "AP50" else "")
                                                     for m in DET_METRICS],
                                         _delta_text(vs_base), vs_base["test"] if vs_base else DASH,
                                         _delta_text(vs_random), vs_random["test"] if vs_random else DASH]) + " |")
        cells = [row.label, row.kind, str(row.n)]
        for m in DET_METRICS:
            cells += [f"{stats[m][0]:.4f}", "" if stats[m][1] is None else f"{stats[m][1]:.4f}"]
        cells.append(kind)
        for d in (vs_base, vs_random):
            cells += ["", "", "", ""] if d is None else [
                f"{d['value']:.4f}", "" if d["unc"] is None else f"{d['unc']:.4f}",
                "" if d["p"] is None else f"{d['p']:.4f}", d["verdict"]]
        table.append(cells)
        for d, other in ((vs_base, base), (vs_random, random)):
            if d is not None and other is not None and (row.kind == "variant" or other is random):
                p = f", p = {p_text(d['p'])}" if d.get("p") is not None else ""
                found.append(f"- {row.label} vs {other.label}: AP50 {d['value']:+.2f}{p}: {_verdict(d, other.label)}.")
    lines += ["", "What it shows:", "", *found]
    return lines, table


def _findings(rows: dict[str, Row], base: Row, deltas: dict[str, dict | None], test: str) -> list[str]:
    """Sentences a reader takes away: each variant's Δ and verdict, and where base sits between the anchors."""
    out = []
    for row in rows.values():
        d = deltas.get(row.key)
        if row.kind != "variant" or d is None:
            continue
        p = f", p = {p_text(d['p'])}" if d.get("p") is not None else ""
        out.append(f"- {row.label} vs {base.label}: {d['value']:+.2f} points{p}: {_verdict(d, base.label)}.")
    b = base.stat()[0]
    anchors = [f"{name} {b - rows[key].stat()[0]:+.2f}" for key, name in
               (("random-init", "random init"), ("raw-pixels", "raw pixels"), ("supervised", "supervised ceiling"))
               if key in rows]
    if anchors:
        out.append(f"- {base.label} minus each anchor, in points: " + ", ".join(anchors) + ".")
    return out


def curves_plot(rows: dict[str, Row], title: str, path: Path) -> bool:
    """Online kNN top-1 against step: one line per row with curves (mean over seeds, range shaded)."""
    series = [r for r in rows.values() if r.curves]
    if not series:
        return False
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(7.5, 4.2))
        ax = fig.subplots()
        for row in series:
            by_step: dict[int, list[float]] = {}
            for curve in row.curves.values():
                for point in curve:
                    by_step.setdefault(int(point["step"]), []).append(float(point["top1"]))
            steps = sorted(by_step)
            means = [math.fsum(by_step[s]) / len(by_step[s]) for s in steps]
            line, = ax.plot(steps, means, marker=".", linewidth=1.2, label=f"{row.label} (n={row.n})")
            if row.n > 1:
                ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                                color=line.get_color(), alpha=0.15, linewidth=0)
        pixels = next((r.pixels_online for r in series if r.pixels_online is not None), None)
        if pixels is not None:
            ax.axhline(pixels, color="grey", linestyle="--", linewidth=1, label="raw pixels")
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel("online kNN top-1 (%)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(linewidth=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{title}\nonline monitor (the record's bank and query subsets; mean over seeds, range shaded)",
                     fontsize=9)
        fig.tight_layout()
        _save(fig, path)
    return True


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_report(manifest: dict, out_dir: Path) -> str:
    """Write study.md, study.csv, per_seed.csv, curves.png (and transfer.csv with a detection step) to out_dir;
    returns the Markdown."""
    text, table, per_seed, rows, transfer = build_report(manifest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if curves_plot(rows, manifest["title"], out_dir / "curves.png"):
        text += "\n![online kNN against step](curves.png)\n"
    atomic_write_text(out_dir / "study.md", text)
    atomic_write_text(out_dir / "study.csv", _csv_text(table))
    atomic_write_text(out_dir / "per_seed.csv", _csv_text(per_seed))
    if transfer:
        atomic_write_text(out_dir / "transfer.csv", _csv_text(transfer))
    return text


__all__ = ["backbone_title", "build_report", "dataset_title", "write_report"]
