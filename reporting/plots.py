"""PNG plots of the result tables and of pretraining curves, byte-reproducible.

Figures are drawn with the Agg canvas (no pyplot state, no display) under matplotlib's default style
(a user's matplotlibrc cannot change them), and saved without the Software tag, so the same inputs
give the same PNG bytes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.style  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from reporting.runs import Run  # noqa: E402

OURS_COLOUR, PUBLISHED_COLOUR = "#4C72B0", "#BBBBBB"
CURVES = (("loss", "loss"), ("knn_top1", "kNN top-1 (%)"), ("z_std", "z_std (collapse monitor)"))


def _save(fig: Figure, path: Path) -> None:
    """Write a PNG with no metadata that changes between machines or versions."""
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


NOISE_HATCH, PUBLISHED_HATCH = "xx", "//"
LEGEND = ("Error bars: sd over seeds (n >= 2) or SE of one run's evaluation set; none where unknown. "
          "Hatched xx, ≈: Δ against the base row within noise (|Δ| < 2·combined uncertainty). Grey //: published.")


def bar_chart(bars: Sequence[dict], title: str, path: Path) -> None:
    """Horizontal bars with uncertainty error bars (`err`; None or 0: none), one panel per section;
    published rows grey and hatched //, rows whose delta is within noise hatched xx (their label ends in ≈)."""
    sections: dict[str, list[dict]] = {}
    for bar in bars:
        sections.setdefault(bar["section"], []).append(bar)
    with matplotlib.style.context("default"):
        heights = [0.6 + 0.35 * len(v) for v in sections.values()]
        height = 1.2 + sum(heights)
        fig = Figure(figsize=(9, height))
        axes = fig.subplots(len(sections), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
        for ax, (section, items) in zip(axes, sections.items()):
            ys = list(range(len(items)))[::-1]
            ax.barh(ys, [b["value"] for b in items],
                    color=[PUBLISHED_COLOUR if b["published"] else OURS_COLOUR for b in items],
                    edgecolor="black", linewidth=0.5)
            spread = [(y, b) for y, b in zip(ys, items) if b.get("err")]
            if spread:
                ax.errorbar([b["value"] for _, b in spread], [y for y, _ in spread],
                            xerr=[b["err"] for _, b in spread], fmt="none", ecolor="black", capsize=3, linewidth=1)
            for y, b in zip(ys, items):
                hatch = PUBLISHED_HATCH if b["published"] else NOISE_HATCH if b.get("within_noise") else None
                if hatch:
                    ax.barh([y], [b["value"]], color="none", hatch=hatch, edgecolor="#666666", linewidth=0)
            ax.set_yticks(ys)
            ax.set_yticklabels([b["label"] + (" (published)" if b["published"] else "") for b in items],
                               fontsize=8)
            ax.set_title(section, fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", linewidth=0.3)
        fig.suptitle(title, fontsize=10)
        fig.text(0.01, 0.005, LEGEND, fontsize=6.5, ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.4 / height, 1, 1))  # the legend's two lines below the panels
        _save(fig, path)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a metrics.jsonl and the number of unreadable lines (a line torn by a kill)."""
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def training_curves(runs: Sequence[Run], label: Callable, out_dir: Path, warn: Callable[[str], None]) -> list[str]:
    """One PNG per pretraining setting: loss, kNN top-1 and z_std against step, one line per seed.
    Returns the file names written."""
    groups: dict[Any, list[Run]] = {}
    for run in runs:
        if run.kind == "pretrain" and run.pre is not None:
            groups.setdefault(run.pre, []).append(run)
    names: dict[str, int] = {}
    written: list[str] = []
    for pre in sorted(groups, key=lambda p: p.sort_key()):
        series = []
        for run in sorted(groups[pre], key=lambda r: (str(r.seed), r.path)):
            mpath = run.folder / "metrics.jsonl" if run.folder is not None else None
            if mpath is None or not mpath.is_file():
                warn(f"{run.path}: no metrics.jsonl beside it; no training curve for this run")
                continue
            rows, bad = read_metrics(mpath)
            if bad:
                warn(f"{mpath}: {bad} unreadable line(s) ignored")
            series.append((f"seed {run.seed}", rows))
        if not series:
            continue
        base = re.sub(r"[^A-Za-z0-9]+", "-", f"{label(pre)}-{pre.backbone}-{pre.data}-{pre.epochs}ep").strip("-")
        base = base.lower()
        names[base] = names.get(base, 0) + 1
        name = f"curves-{base}" + (f"-{names[base]}" if names[base] > 1 else "") + ".png"
        with matplotlib.style.context("default"):
            fig = Figure(figsize=(12, 3.4))
            axes = fig.subplots(1, len(CURVES))
            for ax, (key, title) in zip(axes, CURVES):
                for seed_label, rows in series:
                    pts = [(r["step"], r[key]) for r in rows
                           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if key == "knn_top1" else None,
                                linewidth=1, label=seed_label)
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("step", fontsize=8)
                ax.tick_params(labelsize=8)
                ax.grid(linewidth=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7)
            fig.suptitle(f"{label(pre)}, {pre.backbone}, {pre.data}, {pre.epochs} epochs", fontsize=10)
            fig.tight_layout()
            _save(fig, out_dir / name)
        written.append(name)
    return written
