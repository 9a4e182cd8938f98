"""The table model and its Markdown, CSV and LaTeX text, with the fixed-digit number formats every table uses:
a value with its uncertainty and what that is, and a delta with its within-noise mark."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

DASH = "-"
#: the mark of a delta smaller than twice its combined uncertainty, and of one not decided (an unknown ±)
NOISE_MARK, UNDECIDED_MARK = "≈", "?"
#: the text of an unknown uncertainty
UNKNOWN_PM = "±?"


def fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    """Fixed-digit text of a number ('-' for none); `sign` adds '+' to positive values; never '-0.00'."""
    if value is None or math.isnan(value):
        return DASH
    if abs(value) < 0.5 * 10 ** -digits:
        value = 0.0
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def num(value: float | None, digits: int = 4) -> str:
    """A raw CSV number ('' for none)."""
    return "" if value is None else f"{value:.{digits}f}"


def stat_text(stat) -> str:
    """A reporting.groups.Stat as '46.00 ± 1.00 (sd, n=3)' (std over seeds), '45.00 ± 0.30 (SE)' (one run,
    sampling error of its evaluation set) or '45.00 ±?' (one run, no SE known); '-' for none."""
    if stat is None:
        return DASH
    if stat.unc is None:
        return f"{fmt(stat.mean)} {UNKNOWN_PM}"
    kind = f"sd, n={stat.n}" if stat.kind == "sd" else "SE"
    return f"{fmt(stat.mean)} ± {fmt(stat.unc)} ({kind})"


def delta_text(d) -> str:
    """A reporting.groups.Delta as '+4.00', '+0.40 ≈' (within noise) or '+0.40 ?' (undecided); '-' for none."""
    if d is None:
        return DASH
    mark = {True: f" {NOISE_MARK}", False: "", None: f" {UNDECIDED_MARK}"}[d.within_noise]
    return fmt(d.value, sign=True) + mark


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
        for note in self.notes:  # one paragraph each
            lines += ["", note]
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
        if self.notes:  # the legend under the table: what each ± and mark means
            lines += ["\\par\\smallskip", "{\\footnotesize"] + [latex_escape(n) + "\\par" for n in self.notes] + ["}"]
        return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "→": r"$\rightarrow$", "≈": r"$\approx$", "·": r"$\cdot$",
                  "≥": r"$\geq$", "²": r"$^2$",
                  "<": r"$<$", ">": r"$>$", "|": r"$|$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (and write ±, Δ, ≈, ·, ≥, ², <, > and | in math mode)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


__all__ = ["DASH", "NOISE_MARK", "UNDECIDED_MARK", "UNKNOWN_PM", "Table", "delta_text", "fmt", "latex_escape", "num",
           "stat_text"]
