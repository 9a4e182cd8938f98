"""The table model and its Markdown, CSV and LaTeX text, with the fixed-digit number formats every table uses."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

DASH = "-"


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


def mean_pm(stat: tuple[float, float | None, int] | None) -> str:
    """'mean ± std' of a (mean, std, n) statistic; the mean alone for one value, '-' for none."""
    if stat is None:
        return DASH
    m, s, _ = stat
    return fmt(m) if s is None else f"{fmt(m)} ± {fmt(s)}"


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


__all__ = ["DASH", "Table", "fmt", "latex_escape", "mean_pm", "num"]
