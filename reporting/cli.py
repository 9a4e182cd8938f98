"""Make the result tables (Markdown, CSV, LaTeX) and plots from run records and published baselines.

Usage: python tools/make_tables.py [RUNS_DIR ...] [--out results/] [--baselines results/baselines.csv]
Reads every record.json under RUNS_DIR (default outputs/); records that fail validation are listed
(path and reason) here and in OUT/rejected.md, and --strict then exits 1.
"""

from __future__ import annotations

import argparse
import sys

from reporting.baselines import DEFAULT_BASELINES
from reporting.tables import REJECTED, make_tables
from rimifm.cli import ArgumentParser
from rimifm.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the table maker."""
    p = ArgumentParser(description="Tables and plots from record.json files: mean ± uncertainty (sd over seeds, or "
                            "the SE of one run), delta against the base method (marked when within noise), "
                            "published baselines beside runs of the same dataset, backbone and protocol.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python tools/make_tables.py                              # every record under outputs/ -> results/
  python tools/make_tables.py outputs/study/fmnist_cpu_byol --out /tmp/tables --no-plots
""")
    p.add_argument("runs", nargs="*", default=["outputs"], help="folders searched for record.json (default outputs)")
    p.add_argument("--out", default="results", help="folder the tables and plots go to (default results)")
    p.add_argument("--baselines", default=str(DEFAULT_BASELINES),
                   help="published numbers (CSV, default results/baselines.csv of this checkout)")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument("--strict", action="store_true", help="exit 1 when any record was rejected (failed validation)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write the tables, then print a summary, the rejected records and the classification and detection tables."""
    args = build_parser().parse_args(argv)
    result = make_tables(args.runs, args.out, args.baselines, plots=not args.no_plots)
    rejected = result.rejected
    summary = f"records: {result.found} found, {result.read} read, {len(rejected)} rejected"
    if rejected and result.read:
        summary += f" (listed in {args.out}/{REJECTED})"
    print(summary)
    for r in rejected:
        print(f"  rejected {r.path}: {r.reason}")
    failed = 1 if args.strict and rejected else 0
    if not result.read:
        print(f"no usable run records under {', '.join(args.runs)}; nothing written to {args.out} "
              "(run pretraining / evaluation / detection first)")
        return failed
    print(f"tables and plots written to {args.out}/: {', '.join(result.files)}")
    for name in ("classification", "detection"):
        table = result.tables.get(name)
        print()
        print(table.markdown() if table else f"# {name}: no {name} records\n", end="")
    if failed:
        print(f"--strict: {len(rejected)} record(s) rejected (listed above)", file=sys.stderr)
    return failed


def cli() -> None:
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    cli()
