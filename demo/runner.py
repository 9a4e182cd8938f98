"""The whole chain on the synthetic default, in one command (the README's demo).

    data -> pretrain BYOL base, +RIM, +IFM, +RIM+IFM -> kNN and linear probe of each (and of a random
    backbone) -> convert to detectron2 .pkl -> detection fine-tune (base, +RIM+IFM, random init)
    -> tables and plots

Every step is the command a user would type (tools/pretrain.py, tools/eval_classification.py,
tools/convert_to_d2.py, detection/train_net.py, tools/make_tables.py): it is printed, then run by that
command's own main() in this process (one start-up of torch for the whole chain), so the progress
bars, errors and records are theirs. A step whose output is already complete is skipped, so
running the demo again reuses what is done and an interrupted demo continues where it stopped
(pretraining resumes from its last checkpoint). Output folder names carry the settings that change
the result (epochs, iterations, seed), so a demo with other settings never reuses a wrong run.

    python tools/demo.py                     # about 15 minutes on 2 CPU cores
    python tools/demo.py --seeds 0 1 2       # mean +- std over three seeds in the tables
    python tools/demo.py --quick --data /tmp/s --out /tmp/o --tables /tmp/t   # tiny, for tests
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rimifm.errors import UserError, clean_message, run_cli
from rimifm.io import atomic_write_text
from synthetic.generator import generate, is_complete, read_meta

#: (name, overrides) of the four pretraining variants; names end up in the output folder names
VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("byol", ()),
    ("byol-rim", ("RIM.ENABLED", "true")),
    ("byol-ifm", ("IFM.ENABLED", "true")),
    ("byol-rim-ifm", ("RIM.ENABLED", "true", "IFM.ENABLED", "true")),
)
#: variants fine-tuned for detection (besides random init): the base and the full method
DETECTION_VARIANTS = ("byol", "byol-rim-ifm")

#: the demo's own synthetic set: the default benchmark's classification split (100 + 50 images per class,
#: so top-1 has a standard error of about 2.7 points) with fewer pretraining and detection images, so that
#: the whole chain fits in 15 minutes on the slowest 2-core machine we measured (README, "Timings")
DEMO_SIZES = dict(pretrain_images=1536, cls_train_per_class=100, cls_val_per_class=50, det_trainval=120, det_test=60,
                  image_size=32, det_image_size=128)
#: said at the start and the end of every demo: what its numbers can and cannot show
WHAT_IT_SHOWS = (
    "A demo of minutes on a CPU measures the pipeline, not the method: no self-supervised run that short "
    "learns class structure (measured: no kNN gain on the synthetic set after 12,500 CPU steps, and BYOL's "
    "kNN top-1 on Fashion-MNIST fell from 79.3% at initialisation to 76.4% after 300 steps), so its deltas "
    "are noise. What measures the method is a GPU run of a real recipe, for example "
    "`bash tools/run_pretrain.sh cifar10_byol.yaml DATA.ROOT <cifar-10 folder> [RIM.ENABLED true] "
    "[IFM.ENABLED true]` (1000 epochs), then `python tools/eval_classification.py` on its checkpoint.")
#: tiny sizes of --quick (the test suite's version of the demo)
QUICK_SIZES = dict(pretrain_images=48, cls_train_per_class=4, cls_val_per_class=2, det_trainval=6, det_test=4,
                   image_size=32, det_image_size=96)


@dataclass
class Settings:
    """What the demo runs, from the command line (or --quick)."""

    data: Path
    out: Path
    tables: Path
    seeds: list[int]
    epochs: int
    det_config: str
    det_iters: int
    engine: str
    linear_epochs: int
    quick: bool
    detection: bool = True
    pretrain_opts: tuple[str, ...] = ()


class Demo:
    """Runs the steps in order, skipping finished ones, and reports progress and time."""

    def __init__(self, s: Settings):
        self.s = s
        self.t0 = time.perf_counter()
        self.step_no = 0
        self.steps_total = self._count_steps()

    def _count_steps(self) -> int:
        s = self.s
        n_pre = len(VARIANTS) * len(s.seeds)
        n_eval = 2 * (n_pre + 1)
        n_det = (len(DETECTION_VARIANTS) * 2 + 1) * len(s.seeds) if s.detection else 0  # convert + fine-tune, random init
        return 1 + n_pre + n_eval + n_det + 1

    # ---------------------------------------------------------------------------------------- plumbing

    def _banner(self, what: str, skipped: bool = False) -> None:
        self.step_no += 1
        mins, secs = divmod(int(time.perf_counter() - self.t0), 60)
        state = "done already, reused" if skipped else "running"
        print(f"\n[demo {self.step_no}/{self.steps_total} | {mins:02d}:{secs:02d}] {what} ({state})", flush=True)

    def _skip_or_announce(self, what: str, folder: Path) -> bool:
        """Print the step's banner; True when the step is done already (its folder has a record)."""
        done = _finished(folder)
        self._banner(what, skipped=done)
        return done

    def _run(self, args: list[str]) -> None:
        """Run one step: the command a user would type, echoed, then executed by its own main() in this process.

        One Python process for the whole chain saves torch's start-up per step (about 5 s each on a slow
        2-core machine, some twenty steps). A step's error stops the demo with that step's message.
        """
        print("  $ " + " ".join(_shell_quote(a) for a in ["python", *args]), flush=True)
        main = _step_main(args[0])
        try:
            code = main(args[1:])
        except UserError as exc:
            raise UserError(f"demo step failed: {' '.join(args[:2])} ...: {clean_message(exc)}\nFix it and run "
                            "the demo again: finished steps are reused") from None
        if code:
            raise UserError(f"demo step failed (exit {code}): {' '.join(args[:2])} ...; the message above says why. "
                            "Fix it and run the demo again: finished steps are reused")

    # ------------------------------------------------------------------------------------------- steps

    def data(self) -> None:
        s = self.s
        if is_complete(s.data):
            self._banner(f"synthetic benchmark in {s.data}", skipped=True)
            return
        self._banner(f"synthetic benchmark -> {s.data}")
        generate(s.data, seed=0, **(QUICK_SIZES if s.quick else DEMO_SIZES))

    def pretrain(self, name: str, overrides: tuple[str, ...], seed: int) -> Path:
        """Pretrain one variant; returns its run folder (which holds checkpoints/last.pth)."""
        s = self.s
        run = s.out / "pretrain" / f"{name}-e{s.epochs}{_opts_tag(s.pretrain_opts)}-s{seed}"
        what = f"pretrain {name}, {s.epochs} epochs, seed {seed} -> {run}"
        if self._skip_or_announce(what, run):
            return run
        args = ["tools/pretrain.py", "--config", "synthetic_byol.yaml", "OUTPUT_DIR", str(run),
                "DATA.ROOT", str(s.data), "TRAIN.EPOCHS", str(s.epochs), "SEED", str(seed),
                "TRAIN.KNN_PERIOD", str(s.epochs), *overrides]
        if s.quick:
            args += ["DATA.BATCH_SIZE", "16", "DATA.NUM_WORKERS", "0", "TRAIN.KNN_K", "4",
                     "MODEL.PROJ_HIDDEN_DIM", "64", "MODEL.PRED_HIDDEN_DIM", "64", "MODEL.PROJ_OUTPUT_DIM", "32"]
        self._run(args + list(s.pretrain_opts))
        return run

    def evaluate(self, run: Path | None, protocol: str, seed: int, like: Path | None = None) -> None:
        """kNN or linear probe of a run's checkpoint, or of a random backbone (run None) built like the
        pretraining run `like` (same backbone and stem)."""
        s = self.s
        name = run.name if run is not None else f"random-init{_opts_tag(s.pretrain_opts)}-s{seed}"
        setting = f"k{4 if s.quick else 200}" if protocol == "knn" else f"e{s.linear_epochs}"
        out = s.out / "eval" / f"{name}-{protocol}-{setting}"
        what = f"{protocol} evaluation of {name} -> {out}"
        if self._skip_or_announce(what, out):
            return
        source = [str(run / "checkpoints" / "last.pth")] if run is not None else \
            ["none", "--random-init", *_backbone_args(like)]
        args = ["tools/eval_classification.py", *source, "--dataset", "synthetic", "--root", str(s.data),
                "--protocol", protocol, "--out", str(out), "--seed", str(seed), "--workers", "0"]
        if protocol == "linear-cached":  # the fast probe: the published linear protocol is too slow for a CPU demo
            args += ["--epochs", str(s.linear_epochs)]
        if s.quick and protocol == "knn":
            args += ["--k", "4"]
        self._run(args)

    def convert(self, run: Path) -> Path:
        """The run's backbone as detectron2 weights, kept inside the run folder (the tables link it)."""
        pkl = run / "backbone_d2.pkl"
        what = f"convert {run.name} -> {pkl}"
        if pkl.is_file():
            self._banner(what, skipped=True)
            return pkl
        self._banner(what)
        self._run(["tools/convert_to_d2.py", str(run / "checkpoints" / "last.pth"), str(pkl)])
        return pkl

    def detect(self, pkl: Path | None, seed: int) -> None:
        """Fine-tune and evaluate the detector from converted weights, or from random init (pkl None)."""
        s = self.s
        name = pkl.parent.name if pkl is not None else f"random-init-s{seed}"
        out = s.out / "detection" / f"{name}-{Path(s.det_config).stem}-{s.det_iters}it"
        what = f"detection fine-tune of {name}, {s.det_iters} iterations -> {out}"
        if self._skip_or_announce(what, out):
            return
        steps = (int(s.det_iters * 2 / 3), int(s.det_iters * 8 / 9))
        args = ["detection/train_net.py", "--config", s.det_config, "--engine", s.engine,
                "MODEL.WEIGHTS", str(pkl) if pkl is not None else "", "OUTPUT_DIR", str(out),
                "SOLVER.MAX_ITER", str(s.det_iters), "SOLVER.STEPS", f"({steps[0]}, {steps[1]})",
                "SOLVER.WARMUP_ITERS", str(min(50, max(1, s.det_iters // 5))),
                "SOLVER.CHECKPOINT_PERIOD", str(s.det_iters), "SEED", str(seed),
                "RIMIFM.SYNTHETIC_ROOT", str(s.data)]
        if s.quick:  # two 64 px images a batch: the same code paths at a quarter of the compute
            args += ["TEST.PRECISE_BN.NUM_ITER", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
                     "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "107", "INPUT.MIN_SIZE_TEST", "64",
                     "INPUT.MAX_SIZE_TEST", "107"]
        self._run(args)

    def make_tables(self) -> None:
        self._banner(f"tables and plots -> {self.s.tables}")
        self._run(["tools/make_tables.py", str(self.s.out), "--out", str(self.s.tables)])

    # --------------------------------------------------------------------------------------------- all

    def run(self) -> None:
        # the detection datasets read the synthetic set from RIMIFM_SYNTHETIC (see detection/datasets.py);
        # set for the demo's steps only, so that a caller's environment is left as it was
        before = os.environ.get("RIMIFM_SYNTHETIC")
        os.environ["RIMIFM_SYNTHETIC"] = str(self.s.data)
        try:
            self._run_all()
        finally:
            if before is None:
                os.environ.pop("RIMIFM_SYNTHETIC", None)
            else:
                os.environ["RIMIFM_SYNTHETIC"] = before

    def _run_all(self) -> None:
        s = self.s
        print(f"note: {WHAT_IT_SHOWS}", flush=True)
        self.data()
        _check_out_folder(s)  # now with the dataset's version, seed and sizes
        runs: dict[tuple[str, int], Path] = {}
        for seed in s.seeds:
            for name, overrides in VARIANTS:
                runs[name, seed] = self.pretrain(name, overrides, seed)
        for protocol in ("knn", "linear-cached"):
            self.evaluate(None, protocol, s.seeds[0], like=runs[VARIANTS[0][0], s.seeds[0]])
            for (_, seed), run in runs.items():
                self.evaluate(run, protocol, seed)
        for seed in s.seeds if s.detection else ():
            self.detect(None, seed)
            for name in DETECTION_VARIANTS:
                self.detect(self.convert(runs[name, seed]), seed)
        self.make_tables()
        mins, secs = divmod(int(time.perf_counter() - self.t0), 60)
        print(f"\ndemo finished in {mins} min {secs:02d} s; tables and plots: {s.tables}/ "
              f"(runs and records: {s.out}/)")
        print(f"note: {WHAT_IT_SHOWS}")


#: the module whose main(argv) each user command of the chain runs
_STEP_MODULES = {
    "tools/pretrain.py": "pretrain.training.loop",
    "tools/eval_classification.py": "pretrain.evaluation.cli",
    "tools/convert_to_d2.py": "detection.convert",
    "detection/train_net.py": "detection.train_net",
    "tools/make_tables.py": "reporting.cli",
}


def _step_main(script: str) -> Callable[[list[str]], int | None]:
    """The main(argv) behind a user command of the chain (imported when first needed)."""
    return importlib.import_module(_STEP_MODULES[script]).main


def _check_out_folder(s: Settings) -> None:
    """The runs folder remembers which data (and --quick) made it, so that no run is reused across them.

    The stamp names the data folder and, once the set exists, its generator version, seed and sizes:
    a set regenerated with other settings (or by another version of the generator) in the same folder
    must not reuse the runs made from the old one. Called before the first step and after the data step.
    """
    stamp = s.out / "demo.json"
    want: dict = {"data": str(s.data.resolve()), "quick": s.quick}
    if is_complete(s.data):
        meta = read_meta(s.data)
        want["dataset"] = {"version": meta["version"], "seed": meta["seed"], "sizes": meta["sizes"]}
    have = None
    if stamp.is_file():
        try:
            have = json.loads(stamp.read_text())
        except ValueError:
            have = {}
        if not isinstance(have, dict):
            have = {}
        runs_made = any(p.name != "demo.json" for p in s.out.iterdir())
        same_folder = {k: have.get(k) for k in ("data", "quick")} == {k: want[k] for k in ("data", "quick")}
        same_data = "dataset" not in want or have.get("dataset") == want["dataset"] or \
            ("dataset" not in have and not runs_made)
        if not (same_folder and same_data):
            raise UserError(f"{s.out} holds demo runs made with other settings or other data ({stamp}: {have}, "
                            f"now {want}); pass another --out, or delete that folder to start again")
        if have == want or "dataset" not in want:
            return  # nothing new to record (the data is checked again once it exists)
    s.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(want, indent=1) + "\n")


def _opts_tag(opts: tuple[str, ...]) -> str:
    """Folder-name tag of extra pretraining overrides: '' for none, else '-o' and a short hash of them."""
    if not opts:
        return ""
    return "-o" + hashlib.sha256("\0".join(opts).encode()).hexdigest()[:8]


def _backbone_args(run: Path | None) -> list[str]:
    """eval_classification.py arguments for a random backbone shaped like pretraining run `run`."""
    model: dict = {}
    if run is not None:
        try:
            model = json.loads((run / "record.json").read_text())["config"]["MODEL"]
        except (OSError, ValueError, KeyError, TypeError):
            model = {}
    args = ["--backbone", str(model.get("BACKBONE", "resnet18"))]
    return args + ["--cifar-stem"] if model.get("CIFAR_STEM") else args


def _finished(folder: Path) -> bool:
    """A step is done when its folder holds a record.json that parses (records are written last)."""
    try:
        json.loads((folder / "record.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _shell_quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:,+" for c in arg) else "'" + arg.replace("'", "'\\''") + "'"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="synthetic set, made when missing (default datasets/synthetic-demo; "
                   "--quick: datasets/synthetic-quick)")
    p.add_argument("--out", default=None, help="folder of the demo's runs and records (default outputs/demo; "
                   "--quick: outputs/demo-quick)")
    p.add_argument("--tables", default=None, help="folder the tables and plots go to (default results/demo; "
                   "--quick: results/demo-quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="pretraining/fine-tuning seeds (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs per variant (default 1)")
    p.add_argument("--det-config", default="synthetic_r18_c4.yaml", help="detection config (default synthetic_r18_c4)")
    p.add_argument("--det-iters", type=int, default=None, help="detection iterations (default 30; quick 4)")
    p.add_argument("--engine", default="auto", choices=("auto", "detectron2", "torchvision"),
                   help="detection engine (auto: detectron2 when it imports)")
    p.add_argument("--linear-epochs", type=int, default=None,
                   help="linear-cached probe epochs (default 100; quick 5)")
    p.add_argument("--no-detection", dest="detection", action="store_false",
                   help="stop after pretraining and the classification evaluations (no convert / fine-tune steps)")
    p.add_argument("--pretrain-opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="extra KEY VALUE overrides for every pretraining run, e.g. DATA.NUM_WORKERS 12 "
                   "MODEL.CIFAR_STEM true (run folders get a tag naming them, so they are never mixed up)")
    p.add_argument("--quick", action="store_true", help="tiny data and runs: the CI-sized demo (about a minute)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    quick = a.quick
    if len(a.pretrain_opts) % 2:
        raise UserError(f"--pretrain-opts takes KEY VALUE pairs; got an odd number of items: {' '.join(a.pretrain_opts)}")
    for key in ("epochs", "det_iters", "linear_epochs"):
        if getattr(a, key) is not None and getattr(a, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1")

    def pick(value: int | None, quick_default: int, default: int) -> int:
        return value if value is not None else quick_default if quick else default

    s = Settings(data=Path(a.data or ("datasets/synthetic-quick" if quick else "datasets/synthetic-demo")), out=Path(a.out or ("outputs/demo-quick" if quick else "outputs/demo")),
                 tables=Path(a.tables or ("results/demo-quick" if quick else "results/demo")),
                 seeds=list(dict.fromkeys(a.seeds)), epochs=pick(a.epochs, 1, 1), det_config=a.det_config,
                 det_iters=pick(a.det_iters, 4, 30), engine=a.engine,
                 linear_epochs=pick(a.linear_epochs, 5, 100), quick=quick, detection=a.detection,
                 pretrain_opts=tuple(a.pretrain_opts))
    _check_out_folder(s)
    Demo(s).run()
    return 0



def cli() -> None:
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    cli()
