"""Published baselines (results/baselines.csv): others' numbers, each with its source, shown beside our runs."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from reporting.protocols import split_protocol
from reporting.render import DASH
from reporting.runs import canon_backbone
from rimifm.errors import UserError
from rimifm.records import REPO_ROOT

DEFAULT_BASELINES = REPO_ROOT / "results" / "baselines.csv"
BASELINE_COLUMNS = ("kind", "method", "pretrain_data", "pretrain_epochs", "backbone", "dataset", "protocol",
                    "engine", "AP", "AP50", "AP75", "mask_AP", "top1", "unit", "note", "source")
#: optional: how a row's protocol differs from ours where it sits beside our runs ("max over epochs; 128-d head
#: output"), shown in its settings cell, the plots' labels and the CSV
OPTIONAL_COLUMNS = ("marks",)


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
    #: a classification row's protocol name (knn, online-linear, linear, linear-cached) and the settings
    #: after it ('k=200 T=0.1'); a detection row's protocol is the whole `protocol`
    protocol_name: str = ""
    settings: str = ""
    #: protocol differences the tables show beside the row (the `marks` column, split at ';')
    marks: tuple[str, ...] = ()

    def settings_text(self, empty: str = DASH) -> str:
        """The settings cell: the protocol's settings, then its marks in brackets."""
        marks = f"[{'; '.join(self.marks)}]" if self.marks else ""
        return " ".join(x for x in (self.settings, marks) if x) or empty


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
        name, settings = "", ""
        if row["kind"] == "classification":
            try:
                name, settings = split_protocol(row["protocol"])
            except ValueError as exc:
                raise bad("protocol", str(exc)) from None
        out.append(Published(row["kind"], row["method"].strip(), row["pretrain_data"].strip() or DASH,
                             row["pretrain_epochs"].strip() or DASH, canon_backbone(row["backbone"]),
                             row["dataset"].strip(), row["protocol"].strip(), row["engine"].strip(),
                             tuple(sorted(metrics.items())), row["note"].strip(), row["source"].strip(), name,
                             settings, tuple(m.strip() for m in (row.get("marks") or "").split(";") if m.strip())))
    return out


__all__ = ["BASELINE_COLUMNS", "DEFAULT_BASELINES", "Published", "read_baselines"]
