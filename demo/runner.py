"""The whole chain in one command (the README's demo).

    classification: the study (demo/study.py) at a small size -> pretrain BYOL base, +RIM, +IFM, +RIM+IFM and
      evaluate each beside a random backbone (and the raw pixels):
        on Fashion-MNIST when its files are here (the CPU recipe fmnist_cpu_byol.yaml, kNN), where a CPU
        run of minutes learns; else on the synthetic set (synthetic_byol.yaml, kNN and a linear probe)
    detection: convert the base and +RIM+IFM backbones to detectron2 .pkl -> fine-tune Faster R-CNN from them
      and from random init: on Fashion-MNIST scenes (made from the same IDX files) after a Fashion-MNIST study,
      else on the synthetic set's detection split
    -> tables and plots

Every step is the command a user would type, run by that command's own main() in this process (see
demo/steps.py): a finished step is reused, so running the demo again (or after Ctrl-C) continues where
it stopped. Output folder names carry the settings that change the result (epochs, iterations, seed,
overrides), so a demo with other settings never reuses a wrong run.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from demo.steps import Steps
from demo.study import VARIANTS, Plan, Study, opts_tag
from rimifm.errors import UserError, run_cli
from rimifm.idx import FMNIST_PLACES, find_fmnist
from rimifm.io import atomic_write_text
from synthetic.generator import generate, is_complete, read_meta

#: variants fine-tuned for detection (besides random init): the base and the full method
DETECTION_VARIANTS = ("base", "rim-ifm")

#: the demo's own synthetic set: the default benchmark's classification split (100 + 50 images per class,
#: so top-1 has a standard error of about 2.7 points) with fewer pretraining and detection images, so that
#: the whole chain fits in 15 minutes on the slowest 2-core machine we measured (docs/benchmarks.md, "Timings")
DEMO_SIZES = dict(pretrain_images=1536, cls_train_per_class=100, cls_val_per_class=50, det_trainval=120, det_test=60,
                  image_size=32, det_image_size=128)
#: tiny sizes of --quick (the test suite's version of the demo)
QUICK_SIZES = dict(pretrain_images=48, cls_train_per_class=4, cls_val_per_class=2, det_trainval=6, det_test=4,
                   image_size=32, det_image_size=96)
#: pretraining overrides of --quick: small batches and heads
QUICK_PRETRAIN_OPTS = ("DATA.BATCH_SIZE", "16", "DATA.NUM_WORKERS", "0", "TRAIN.KNN_K", "4", "MODEL.PROJ_HIDDEN_DIM", "64",
                       "MODEL.PRED_HIDDEN_DIM", "64", "MODEL.PROJ_OUTPUT_DIM", "32")
#: the demo's size of the Fashion-MNIST study: base and +RIM+IFM (the study runs all four), one epoch of the
#: 60,000 training images each (the recipe runs five). One epoch of 20,480 images, tried first so that all four
#: fitted, left BYOL 0.55 points below its random init (76.87 against 77.42): no learning to show.
FMNIST_DEMO_VARIANTS = ("base", "rim-ifm")
#: the demo's Fashion-MNIST scenes (tools/make_fmnist_scenes.py options) and fine-tuning iterations on them
DEMO_SCENES = dict(trainval=500, test=300)
FMNIST_DEMO_DET_ITERS = 150
#: tiny scenes of --quick
QUICK_SCENES = dict(trainval=6, test=4, canvas=64, item_min=16, item_max=32)

#: said at the start and the end of a demo on the synthetic set: what its numbers can and cannot show
WHAT_IT_SHOWS = (
    "A demo of minutes on a CPU on the synthetic set measures the pipeline, not the method: no self-supervised "
    "run that short learns its classes (measured: no kNN gain on the synthetic set after 12,500 CPU steps), so "
    "its deltas are noise. Fashion-MNIST is where a CPU run of minutes learns: `apt-get install "
    "dataset-fashion-mnist` (or its four IDX files in datasets/fashion-mnist/) and run the demo again. What "
    "measures the method at full scale is a GPU run of a real recipe, for example `bash tools/run_pretrain.sh "
    "cifar10_byol.yaml DATA.ROOT <cifar-10 folder> [RIM.ENABLED true] [IFM.ENABLED true]` (1000 epochs).")
#: the same for a demo whose classification half runs on Fashion-MNIST
WHAT_IT_SHOWS_FMNIST = (
    "The classification half runs on real Fashion-MNIST with the CPU recipe fmnist_cpu_byol.yaml, cut to one "
    "epoch of BYOL and of BYOL+RIM+IFM so that it fits the demo (the study runs all four variants for five): each "
    "row is kNN top-1 on the "
    "10k test images with its standard error, beside a random backbone and the raw pixels. The full recipe and "
    "its study over seeds: `python tools/study.py --config fmnist_cpu_byol.yaml --seeds 0 1 2 DATA.ROOT <folder>`. "
    "The detection half fine-tunes Faster R-CNN (fmnist_scenes.yaml, cut to the demo's iterations) on Fashion-MNIST "
    "scenes, canvases of training-split items for training and of test-split items for testing, from the BYOL and "
    "BYOL+RIM+IFM backbones and from random init; each AP50 comes with its bootstrap SE.")


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
    fmnist: Path | None = None
    scenes: Path | None = None


class Demo:
    """The classification study at the demo's size, then the detection steps and the tables.

    On Fashion-MNIST the study itself runs the detection transfer (its base and +RIM+IFM backbones and the random
    init, fine-tuned on Fashion-MNIST scenes made from the same files); on the synthetic set the demo fine-tunes
    the study's backbones on the set's detection split."""

    def __init__(self, s: Settings):
        self.s = s
        self.steps = Steps("demo")
        self.study = Study(self._plan(), self.steps)
        synthetic_det = s.detection and s.fmnist is None
        n_det = (len(DETECTION_VARIANTS) * 2 + 1) * len(s.seeds) if synthetic_det else 0  # convert + fine-tune, random
        self.steps.total += (1 if s.fmnist is None else 0) + n_det + 1  # data, detection, tables

    def det_opts(self) -> tuple[str, ...]:
        """Overrides of every detection fine-tuning: the demo's schedule (and tiny sizes with --quick)."""
        s = self.s
        steps = (int(s.det_iters * 2 / 3), int(s.det_iters * 8 / 9))
        opts = ("SOLVER.MAX_ITER", str(s.det_iters), "SOLVER.STEPS", f"({steps[0]}, {steps[1]})",
                "SOLVER.WARMUP_ITERS", str(min(50, max(1, s.det_iters // 5))), "SOLVER.CHECKPOINT_PERIOD", str(s.det_iters))
        if s.fmnist is None:
            opts += ("RIMIFM.SYNTHETIC_ROOT", str(s.data))
        if s.quick:  # two 64 px images a batch: the same code paths at a fraction of the compute
            opts += ("TEST.PRECISE_BN.NUM_ITER", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
                     "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "107", "INPUT.MIN_SIZE_TEST", "64",
                     "INPUT.MAX_SIZE_TEST", "107")
        return opts

    def _plan(self) -> Plan:
        s = self.s
        tag = f"e{s.epochs}{opts_tag(s.pretrain_opts)}"
        quick = QUICK_PRETRAIN_OPTS if s.quick else ()
        common = ["TRAIN.EPOCHS", str(s.epochs), "TRAIN.KNN_PERIOD", str(s.epochs)]
        test = "paired-t" if len(s.seeds) >= 2 else "none"
        if s.fmnist is not None:
            limit = ("DATA.LIMIT", "96") if s.quick else ()
            scenes = QUICK_SCENES if s.quick else DEMO_SCENES
            return Plan(config="fmnist_cpu_byol.yaml", seeds=s.seeds, out=s.out / "fmnist" / tag,
                        results=s.tables / "fmnist", variants=[(n, VARIANTS[n]) for n in FMNIST_DEMO_VARIANTS],
                        opts=("DATA.ROOT", str(s.fmnist), *limit, *common, *quick, *s.pretrain_opts),
                        k=4 if s.quick else 20, test=test, supervised=False, raw_pixels=True, name="demo",
                        detection=s.det_config if s.detection else "", det_opts=self.det_opts(),
                        det_variants=list(DETECTION_VARIANTS), det_engine=s.engine, scenes=str(s.scenes),
                        scenes_opts=tuple(x for k, v in scenes.items() for x in (f"--{k.replace('_', '-')}", str(v))))
        return Plan(config="synthetic_byol.yaml", seeds=s.seeds, out=s.out / "synthetic" / tag,
                    results=s.tables / "synthetic", variants=list(VARIANTS.items()),
                    opts=("DATA.ROOT", str(s.data), *common, *quick, *s.pretrain_opts), k=4 if s.quick else 200,
                    test=test, supervised=False, raw_pixels=False, linear_epochs=s.linear_epochs, name="demo")

    # ------------------------------------------------------------------------------------------- steps

    def data(self) -> None:
        s = self.s
        if is_complete(s.data):
            self.steps.banner(f"synthetic benchmark in {s.data}", skipped=True)
            return
        self.steps.banner(f"synthetic benchmark -> {s.data}")
        generate(s.data, seed=0, **(QUICK_SIZES if s.quick else DEMO_SIZES))

    def make_tables(self) -> None:
        self.steps.banner(f"tables and plots -> {self.s.tables}")
        self.steps.run(["tools/make_tables.py", str(self.s.out), "--out", str(self.s.tables)])

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
        note = WHAT_IT_SHOWS if s.fmnist is None else WHAT_IT_SHOWS_FMNIST
        print(f"note: {note}", flush=True)
        if s.fmnist is not None:
            print(f"Fashion-MNIST: {s.fmnist}", flush=True)
        else:
            self.data()
        _check_out_folder(s)  # now with the dataset's version, seed and sizes
        self.study.run()
        for seed in s.seeds if s.detection and s.fmnist is None else ():
            study, opts = self.study, self.det_opts()
            study.detect(None, seed, f"random-init-s{seed}", s.det_config, opts, s.engine)
            for name in DETECTION_VARIANTS:
                run = study.runs[name, seed]
                study.detect(study.convert(run), seed, run.name, s.det_config, opts, s.engine)
        self.make_tables()
        print(f"\ndemo finished in {self.steps.elapsed()}; the classification study: {self.study.plan.results}/"
              f"study.md; all tables and plots: {s.tables}/ (runs and records: {s.out}/)")
        print(f"note: {note}")


def _check_out_folder(s: Settings) -> None:
    """The runs folder remembers which data (and --quick) made it, so that no run is reused across them.

    The stamp names the data folder and, once the set exists, its generator version, seed and sizes:
    a set regenerated with other settings (or by another version of the generator) in the same folder
    must not reuse the runs made from the old one. Called before the first step and after the data step.
    """
    stamp = s.out / "demo.json"
    want: dict = {"data": str((s.fmnist or s.data).resolve()), "quick": s.quick}
    if s.fmnist is None and is_complete(s.data):
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


EXAMPLES = """examples:
  python tools/demo.py                     # under 15 minutes on a slow 2-core CPU
  python tools/demo.py --seeds 0 1 2       # mean +- std over three seeds in the tables
  python tools/demo.py --quick --data /tmp/s --out /tmp/o --tables /tmp/t   # tiny, for tests
"""

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="synthetic set, made when missing (default datasets/synthetic-demo; "
                   "--quick: datasets/synthetic-quick)")
    p.add_argument("--fmnist", default=None,
                   help="Fashion-MNIST's IDX folder for the classification half (default: the first of "
                        f"{', '.join(FMNIST_PLACES)} that holds the files)")
    p.add_argument("--no-fmnist", dest="use_fmnist", action="store_false",
                   help="classification on the synthetic set even when Fashion-MNIST is here")
    p.add_argument("--out", default=None, help="folder of the demo's runs and records (default outputs/demo; "
                   "--quick: outputs/demo-quick)")
    p.add_argument("--tables", default=None, help="folder the tables and plots go to (default results/demo; "
                   "--quick: results/demo-quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="pretraining/fine-tuning seeds (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs per variant (default 1)")
    p.add_argument("--scenes", default=None,
                   help="Fashion-MNIST scenes for the detection half, made when missing (default "
                        "datasets/fmnist-scenes-demo; --quick: datasets/fmnist-scenes-quick)")
    p.add_argument("--det-config", default=None,
                   help="detection config (default fmnist_scenes.yaml on Fashion-MNIST, else synthetic_r18_c4.yaml)")
    p.add_argument("--det-iters", type=int, default=None,
                   help=f"detection iterations (default {FMNIST_DEMO_DET_ITERS} on Fashion-MNIST, 30 on the synthetic "
                        "set; quick 4)")
    p.add_argument("--engine", default="auto", choices=("auto", "detectron2", "torchvision"),
                   help="detection engine (auto: detectron2 when it imports)")
    p.add_argument("--linear-epochs", type=int, default=None,
                   help="synthetic set: linear-cached probe epochs (default 100; quick 5)")
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

    fmnist = find_fmnist(a.fmnist, "--fmnist") if a.use_fmnist else None
    s = Settings(data=Path(a.data or ("datasets/synthetic-quick" if quick else "datasets/synthetic-demo")),
                 out=Path(a.out or ("outputs/demo-quick" if quick else "outputs/demo")),
                 tables=Path(a.tables or ("results/demo-quick" if quick else "results/demo")),
                 seeds=list(dict.fromkeys(a.seeds)), epochs=pick(a.epochs, 1, 1),
                 det_config=a.det_config or ("synthetic_r18_c4.yaml" if fmnist is None else "fmnist_scenes.yaml"),
                 det_iters=pick(a.det_iters, 4, 30 if fmnist is None else FMNIST_DEMO_DET_ITERS), engine=a.engine,
                 linear_epochs=pick(a.linear_epochs, 5, 100), quick=quick, detection=a.detection,
                 pretrain_opts=tuple(a.pretrain_opts), fmnist=fmnist,
                 scenes=Path(a.scenes or ("datasets/fmnist-scenes-quick" if quick else "datasets/fmnist-scenes-demo")))
    demo = Demo(s)  # the plan's checks (config, overrides) before anything is written
    _check_out_folder(s)
    demo.run()
    return 0


def cli() -> None:
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    cli()
