"""The study's command line: `python tools/study.py --config RECIPE --seeds 0 1 2 [KEY VALUE ...]` (demo/study.py
runs it). Options and pretraining overrides may be mixed; a KEY VALUE pair goes to every pretraining run."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from demo.study import TESTS, VARIANTS, Plan, Study
from rimifm.cli import ArgumentParser
from rimifm.errors import UserError, run_cli
from rimifm.records import code_version

#: a pretraining config key (MODEL.BACKBONE, DATA.ROOT, ...): with its value, an override wherever it stands
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(options, KEY VALUE overrides): the overrides may stand anywhere, after --seeds 0 1 2 too (but those
    after --extra NAME, up to the next option, are that variant's own, and those after --det-opts the
    detection's)."""
    options, overrides = [], []
    in_extra = False
    it = iter(argv)
    for arg in it:
        if arg.startswith("--"):
            in_extra = arg in ("--extra", "--det-opts")
        if _KEY.match(arg) and not in_extra:
            value = next(it, None)
            if value is None:
                raise UserError(f"override {arg} has no value; overrides are KEY VALUE pairs")
            overrides += [arg, value]
        else:
            options.append(arg)
    return options, overrides


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Do RIM and IFM help? Base, +RIM, +IFM and +RIM+IFM of a recipe over seeds, beside a random "
                    "backbone, the raw pixels and a supervised ceiling, with a paired test across seeds.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="pretraining recipe (file or name in pretrain/configs/)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which of the four variants (default all; base is always run)")
    p.add_argument("--extra", nargs="+", action="append", default=[], metavar="NAME KEY VALUE",
                   help="one more variant row: a name, then its overrides, e.g. --extra rim-r50 RIM.ENABLED true "
                        "RIM.RATIO 0.5 (repeatable)")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="pretraining epochs of every run (default: the recipe's TRAIN.EPOCHS); the study's size: "
                        "fmnist_cpu_byol.yaml's 5 take about 3 hours on a slow 2-core machine, --epochs 2 about 75 minutes "
                        "(22 minutes on a machine 3.4x faster). "
                        "The default folders get an -eN suffix")
    p.add_argument("--k", type=int, default=20, help="kNN neighbours (default 20)")
    p.add_argument("--temperature", type=float, default=0.1, help="kNN temperature (default 0.1)")
    p.add_argument("--test", choices=TESTS, default="paired-t",
                   help="paired-t: Δ against base with a paired t-test across seeds (needs >= 2 seeds); none")
    p.add_argument("--no-supervised", dest="supervised", action="store_false",
                   help="skip the supervised ceiling (one labelled run per seed)")
    p.add_argument("--no-calibration", dest="calibration", action="store_false",
                   help="do not measure the machine's calibration figure (about 10-40 s) for the report")
    p.add_argument("--detection", default="", metavar="CONFIG",
                   help="also fine-tune every backbone (and the random init) with this detection config and report "
                        "AP, e.g. fmnist_scenes.yaml (the scenes are made from DATA.ROOT when missing)")
    p.add_argument("--det-opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="overrides of every detection fine-tuning, e.g. SOLVER.MAX_ITER 500")
    p.add_argument("--out", default=None, help="runs folder (default outputs/study/<config>)")
    p.add_argument("--results", default=None, help="report folder (default results/study/<config>)")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE",
                   help="overrides for every pretraining run, anywhere on the line, e.g. DATA.ROOT DIR")
    return p


EXAMPLES = """examples:
  python tools/study.py --config fmnist_cpu_byol.yaml --seeds 0 1 2 DATA.ROOT /usr/share/datasets/fashion-mnist
  python tools/study.py --config fmnist_cpu_byol.yaml --epochs 2 DATA.ROOT /usr/share/datasets/fashion-mnist
  python tools/study.py --config fmnist_cpu_byol.yaml --detection fmnist_scenes.yaml DATA.ROOT /usr/share/datasets/fashion-mnist
  python tools/study.py --config fmnist_cpu_simsiam.yaml --seeds 0 1 2 --extra rim-r50 RIM.ENABLED true RIM.RATIO 0.5
"""


def plan_from_args(a: argparse.Namespace, command: str) -> Plan:
    if len(a.opts) % 2:
        raise UserError(f"overrides must be KEY VALUE pairs; {a.opts[-1]!r} has no value")
    if len(a.det_opts) % 2:
        raise UserError(f"--det-opts takes KEY VALUE pairs; {a.det_opts[-1]!r} has no value")
    if a.det_opts and not a.detection:
        raise UserError("--det-opts without --detection CONFIG: name the detection config to fine-tune with")
    variants = [(n, VARIANTS[n]) for n in dict.fromkeys(["base", *a.variants])]
    for extra in a.extra:
        name, pairs = extra[0], tuple(extra[1:])
        if not pairs or len(pairs) % 2:
            raise UserError(f"--extra {' '.join(extra)}: give a name, then KEY VALUE pairs")
        if name in VARIANTS or not name.replace("-", "").isalnum():
            raise UserError(f"--extra name {name!r}: use letters, digits and '-', not one of {', '.join(VARIANTS)}")
        variants.append((name, pairs))
    stem, opts = Path(a.config).stem, tuple(a.opts)
    if a.epochs is not None:
        if a.epochs < 1:
            raise UserError(f"--epochs {a.epochs}: give at least 1 pretraining epoch")
        if "TRAIN.EPOCHS" in opts[0::2]:
            raise UserError("--epochs and a TRAIN.EPOCHS override both set the pretraining length; keep one")
        stem, opts = f"{stem}-e{a.epochs}", (*opts, "TRAIN.EPOCHS", str(a.epochs))
    return Plan(config=a.config, seeds=list(dict.fromkeys(a.seeds)), out=Path(a.out or f"outputs/study/{stem}"),
                results=Path(a.results or f"results/study/{stem}"), variants=variants, opts=opts,
                k=a.k, temperature=a.temperature, test=a.test, supervised=a.supervised, command=command,
                detection=a.detection, det_opts=tuple(a.det_opts))


def main(argv: list[str] | None = None) -> int:
    import shlex
    import sys

    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    options, overrides = split_overrides(argv)
    a = build_parser().parse_args(options)
    code_version()  # the code as it is when the study starts: steps that follow a commit keep this version
    a.opts = [*a.opts, *overrides]
    plan = plan_from_args(a, "python tools/study.py " + " ".join(shlex.quote(x) for x in argv))
    study = Study(plan)  # every check before the calibration and the first step
    if a.calibration:
        from pretrain.training.throughput import calibration_figure

        print("measuring this machine's calibration figure (base BYOL ResNet-18, 32 px, batch 64)...", flush=True)
        plan.calibration = round(calibration_figure(), 1)
        print(f"calibration: {plan.calibration} images/s")
    study.run()
    print(f"\n{plan.name} finished in {study.steps.elapsed()}; report: {plan.results}/ (runs: {plan.out}/)")
    return 0


def cli() -> None:
    """Console entry point."""
    run_cli(main)


__all__ = ["build_parser", "cli", "main", "plan_from_args", "split_overrides"]
