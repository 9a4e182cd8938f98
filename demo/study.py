"""The study: do RIM and IFM help? Base, +RIM, +IFM and +RIM+IFM of one recipe over seeds, at equal budget,
beside a random backbone, the raw pixels and a supervised ceiling, with a paired test across seeds.

    python tools/study.py --config fmnist_cpu_byol.yaml --seeds 0 1 2 [DATA.ROOT DIR ...]

For every seed: each variant is pretrained with the recipe (same epochs, same seed) and its last.pth
evaluated by kNN (k=20, T=0.1 by default) on the validation split with the whole training split as the
bank; a random backbone built like the recipe with that seed (the weights the seed's pretraining starts
from) is evaluated the same way; and the recipe's backbone is trained with labels (METHOD supervised)
for the training time the base variant took (TRAIN.TIME_BUDGET_S), then evaluated likewise. The raw
pixels are evaluated once. The report (reporting/study.py) writes study.md, study.csv, per_seed.csv and
curves.png to the results folder. The demo runs the same study at a smaller size (demo/runner.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from demo.steps import Steps, read_json
from detection.config import read_config as read_detection_config
from detection.datasets import FMNIST_SCENES_FOLDER, dataset_root
from pretrain.config import config_hash, load_config, recipe_differences, recipe_hash, resolve_config_path
from reporting.provenance import calibrations
from reporting.study import backbone_title, dataset_title, write_report
from rimifm.errors import UserError
from rimifm.io import atomic_write_text
from rimifm.records import code_version

#: the four variants of the method: (folder tag, overrides)
VARIANTS: dict[str, tuple[str, ...]] = {
    "base": (),
    "rim": ("RIM.ENABLED", "true"),
    "ifm": ("IFM.ENABLED", "true"),
    "rim-ifm": ("RIM.ENABLED", "true", "IFM.ENABLED", "true"),
}
LABELS = {"base": "", "rim": "+RIM", "ifm": "+IFM", "rim-ifm": "+RIM+IFM"}
#: eval_classification.py's --dataset for each DATA.DATASET
EVAL_DATASETS = {"synthetic": "synthetic", "cifar10": "cifar10", "cifar100": "cifar100", "idx": "idx",
                 "imagefolder": "imagefolder"}
TESTS = ("paired-t", "none")


@dataclass
class Plan:
    """What a study runs; `opts` are KEY VALUE overrides for every pretraining run (e.g. DATA.ROOT)."""

    config: str
    seeds: list[int]
    out: Path
    results: Path
    variants: list[tuple[str, tuple[str, ...]]] = field(default_factory=lambda: list(VARIANTS.items()))
    opts: tuple[str, ...] = ()
    k: int = 20
    temperature: float = 0.1
    test: str = "paired-t"
    supervised: bool = True
    raw_pixels: bool = True
    #: also the fast linear probe on cached features (the demo's second protocol), with this many epochs
    linear_epochs: int = 0
    #: the detection transfer: a detection config (e.g. fmnist_scenes.yaml) every backbone is fine-tuned with
    #: ("" = none), and KEY VALUE overrides of every fine-tuning
    detection: str = ""
    det_opts: tuple[str, ...] = ()
    #: the variants fine-tuned for detection (None = all; random init and supervised are always), and the engine
    det_variants: list[str] | None = None
    det_engine: str = "auto"
    #: the Fashion-MNIST scenes made for the detection step when its config trains on them and they are missing:
    #: their folder ("" = the configs' default) and make_fmnist_scenes options
    scenes: str = ""
    scenes_opts: tuple[str, ...] = ()
    command: str = ""
    calibration: float | None = None
    name: str = "study"


class Study:
    """Runs a Plan's steps in order (finished ones are reused), then writes the report."""

    def __init__(self, plan: Plan, steps: Steps | None = None):
        self.plan = plan
        if plan.test not in TESTS:
            raise UserError(f"unknown --test {plan.test!r}; choose one of {', '.join(TESTS)}")
        if plan.test == "paired-t" and len(plan.seeds) < 2:
            raise UserError(f"a paired test across seeds needs at least 2 seeds (got {len(plan.seeds)}: "
                            f"{' '.join(map(str, plan.seeds))}); run more, e.g. --seeds 0 1 2, or pass --test none")
        names = [n for n, _ in plan.variants]
        if len(set(names)) != len(names) or "base" not in names:
            raise UserError(f"the variants must have distinct names and include base (got {', '.join(names)})")
        self.cfg = load_config(plan.config, list(plan.opts))  # a bad config or override stops here
        self.method = self.cfg.METHOD
        if self.method not in ("byol", "simsiam"):
            raise UserError(f"{plan.config}: a study compares variants of byol or simsiam, not METHOD {self.method}")
        self.dataset_args = self._dataset_args()
        self.steps = steps or Steps(plan.name)
        self.steps.total += self.step_count()
        self.runs: dict[tuple[str, int], Path] = {}  # (variant, seed) -> pretraining folder, once run
        self.scene_set = ""  # scenes_tag() of the scenes the detection steps use, once they exist (run)

    # ---------------------------------------------------------------------------------------- set-up

    def _dataset_args(self) -> list[str]:
        d = self.cfg.DATA
        if d.DATASET == "imagefolder":
            if not (d.KNN_TRAIN and d.KNN_VAL):
                raise UserError(f"{self.plan.config}: a study evaluates by kNN on labelled splits; an imagefolder "
                                "recipe needs DATA.KNN_TRAIN and DATA.KNN_VAL")
            return ["--dataset", "imagefolder", "--train-dir", d.KNN_TRAIN, "--val-dir", d.KNN_VAL]
        return ["--dataset", EVAL_DATASETS[d.DATASET], "--root", d.ROOT]

    def protocols(self) -> int:
        return 2 if self.plan.linear_epochs else 1

    def step_count(self) -> int:
        n = self.protocols()
        supervised = 1 if self.plan.supervised else 0
        per_seed = (1 + n) * (len(self.plan.variants) + supervised) + n
        if self.plan.detection:  # convert + fine-tune each pretrained backbone, and fine-tune from random init
            names = [v for v, _ in self.plan.variants]
            transferred = len(names if self.plan.det_variants is None else set(names) & set(self.plan.det_variants))
            per_seed += 2 * (transferred + supervised) + 1
        scenes = 1 if self.plan.detection and self._needs_scenes() else 0
        return len(self.plan.seeds) * per_seed + (n if self.plan.raw_pixels else 0) + scenes + 1  # + the report

    def _needs_scenes(self) -> bool:
        """True when the detection config (with its overrides) trains or tests on the Fashion-MNIST scenes."""
        merged = read_detection_config(self.plan.detection)
        opts = dict(zip(self.plan.det_opts[0::2], self.plan.det_opts[1::2]))
        names = [*merged.get("DATASETS", {}).get("TRAIN", ()), *merged.get("DATASETS", {}).get("TEST", ()),
                 opts.get("DATASETS.TRAIN", ""), opts.get("DATASETS.TEST", "")]
        return any("fmnist_scenes" in str(name) for name in names)

    def check_out_folder(self) -> None:
        """The runs folder remembers its recipe (file name and `recipe_hash`: a moved checkout or a key added since
        is the same recipe; older stamps hold the whole config_hash, or one of a time when only some of the added
        keys existed, and then the folder's recipe.yaml decides) and what each variant name overrides: another
        recipe, or a name that now means other overrides, needs another --out (new variants are added)."""
        stamp = self.plan.out / "study.json"
        recipe = self._recipe_cfg()
        want = {"config": str(resolve_config_path(self.plan.config).resolve()), "config_hash": recipe_hash(recipe)}
        variants = {name: list(overrides) for name, overrides in self.plan.variants}
        have = read_json(stamp) if stamp.is_file() else {**want, "variants": {}}
        matches = have.get("config_hash") in (want["config_hash"], config_hash(recipe))
        differ = None if matches else self._recipe_differences(recipe)
        if Path(str(have.get("config"))).name != Path(want["config"]).name or not (matches or differ == []):
            detail = f"; {'; '.join(differ[:3])}" if differ else ""
            raise UserError(f"{self.plan.out} holds {self.plan.name} runs of another recipe or other overrides "
                            f"({stamp}{detail}); pass another --out, or delete that folder to start again")
        known = have.get("variants") or {}
        changed = [n for n, o in variants.items() if n in known and known[n] != o]
        if changed:
            raise UserError(f"{self.plan.out} holds runs of variant(s) {', '.join(changed)} made with other overrides "
                            f"({stamp}); give the variant another name, or pass another --out")
        if not matches or not stamp.is_file() or set(variants) - set(known):
            self.plan.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(stamp, json.dumps({**want, "variants": {**known, **variants}}, indent=1) + "\n")

    def _recipe_differences(self, recipe) -> list[str] | None:
        """How the folder's merged recipe (recipe.yaml, written by every run of the study) differs from `recipe`;
        None when the folder has none."""
        path = self.plan.out / "recipe.yaml"
        if not path.is_file():
            return None
        return recipe_differences(yaml.safe_load(path.read_text()) or {}, recipe)

    def _recipe_cfg(self):
        """The merged recipe without what only names a run (seed, output folder)."""
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.SEED, cfg.OUTPUT_DIR = 0, ""
        return cfg

    def calibrations(self) -> list[dict]:
        """Every calibration figure an invocation that ran steps measured, oldest first, with its date: a study
        continued on another day keeps the figure its earlier steps ran at (an older manifest holds one)."""
        path = self.plan.out / "manifest.json"
        out = calibrations(read_json(path)) if path.is_file() else []
        if self.plan.calibration and (self.steps.ran or not out):
            out.append({"images_per_s": self.plan.calibration, "date": time.strftime("%Y-%m-%d")})
        return out

    # ------------------------------------------------------------------------------------------- steps

    def label(self, name: str) -> str:
        base = {"byol": "BYOL", "simsiam": "SimSiam"}[self.method]
        return base + LABELS.get(name, f"+{name}")

    def pretrain(self, name: str, overrides: tuple[str, ...], seed: int, tag: str | None = None) -> Path:
        run = self.plan.out / "pretrain" / f"{tag or self.method + ('' if name == 'base' else '-' + name)}-s{seed}"
        if not self.steps.start(f"pretrain {tag or self.label(name)}, seed {seed} -> {run}", run):
            self.steps.run(["tools/pretrain.py", "--config", self.plan.config, *self.plan.opts, *overrides,
                            "SEED", str(seed), "OUTPUT_DIR", str(run)])
        return run

    def evaluate(self, source: list[str], name: str, what: str, seed: int = 0) -> Path:
        """kNN of a backbone (and the cached linear probe when the plan has it); returns the kNN folder."""
        p = self.plan
        knn = p.out / "eval" / f"{name}-knn-k{p.k}"
        if not self.steps.start(f"kNN of {what} -> {knn}", knn):
            self.steps.run(["tools/eval_classification.py", *source, *self.dataset_args, "--protocol", "knn",
                            "--k", str(p.k), "--temperature", f"{p.temperature:g}", "--seed", str(seed),
                            "--out", str(knn), "--workers", "0"])
        if p.linear_epochs:
            linear = p.out / "eval" / f"{name}-linear-cached-e{p.linear_epochs}"
            if not self.steps.start(f"linear probe of {what} -> {linear}", linear):
                self.steps.run(["tools/eval_classification.py", *source, *self.dataset_args, "--protocol",
                                "linear-cached", "--epochs", str(p.linear_epochs), "--seed", str(seed),
                                "--out", str(linear), "--workers", "0", "--cache-dir", str(knn / "feature_cache")])
        return knn

    def convert(self, run: Path) -> Path:
        """The run's backbone as detectron2 weights, kept inside the run folder (the tables link it)."""
        pkl = run / "backbone_d2.pkl"
        what = f"convert {run.name} -> {pkl}"
        if pkl.is_file():
            self.steps.banner(what, skipped=True)
            return pkl
        self.steps.banner(what)
        self.steps.run(["tools/convert_to_d2.py", str(run / "checkpoints" / "last.pth"), str(pkl)])
        return pkl

    def detect(self, pkl: Path | None, seed: int, name: str, config: str, opts: tuple[str, ...] = (),
               engine: str = "auto") -> Path:
        """Fine-tune and evaluate the detector from converted weights, or from random init (pkl None).

        The folder is named after the backbone, the config, (a short hash of) the overrides and of the scene set
        trained and tested on, so that other overrides or other scenes never reuse a run."""
        out = self.plan.out / "detection" / f"{name}-{Path(config).stem}{opts_tag(opts)}{self.scene_set}"
        if not self.steps.start(f"detection fine-tune of {name} ({Path(config).name}) -> {out}", out):
            self.steps.run(["detection/train_net.py", "--config", config, "--engine", engine, "MODEL.WEIGHTS",
                            str(pkl) if pkl is not None else "", "OUTPUT_DIR", str(out), "SEED", str(seed), *opts])
        return out

    def scenes_folder(self) -> Path:
        """Where the detection step's Fashion-MNIST scenes are: the plan's, an RIMIFM.SCENES_ROOT of the detection
        overrides or of the config itself, or the configs' default."""
        root = dict(zip(self.plan.det_opts[0::2], self.plan.det_opts[1::2])).get("RIMIFM.SCENES_ROOT")
        if not root and self.plan.detection:  # the config's own
            root = (read_detection_config(self.plan.detection).get("RIMIFM") or {}).get("SCENES_ROOT")
        return Path(self.plan.scenes or root or Path(dataset_root()) / FMNIST_SCENES_FOLDER)

    def scenes_tag(self) -> str:
        """'-sc' and a short hash of the scene set's meta.json (its settings and source digest) when the detection
        config uses the Fashion-MNIST scenes, else ''."""
        meta = self.scenes_folder() / "meta.json"
        if not (self.plan.detection and self._needs_scenes() and meta.is_file()):
            return ""
        return "-sc" + hashlib.sha256(meta.read_bytes()).hexdigest()[:8]

    def make_scenes(self) -> None:
        """The Fashion-MNIST scenes from the recipe's own IDX files (DATA.ROOT); the generator reuses a set made
        with the same settings, and refuses one made with others."""
        folder = self.scenes_folder()
        self.steps.banner(f"Fashion-MNIST scenes from {self.cfg.DATA.ROOT} -> {folder}")
        self.steps.run(["tools/make_fmnist_scenes.py", "--root", self.cfg.DATA.ROOT, "--out", str(folder),
                        *self.plan.scenes_opts])

    def run(self) -> dict:
        """Every step, then the report; returns the manifest (also written to OUT/manifest.json)."""
        p = self.plan
        self.check_out_folder()
        recipe = p.out / "recipe.yaml"  # the merged recipe (file + overrides): the baselines are built from it
        atomic_write_text(recipe, self.cfg.dump())
        rows: dict[str, dict] = {}

        def add(key: str, label: str, kind: str, seed: int | None, pretrain: Path | None, knn: Path) -> None:
            row = rows.setdefault(key, {"label": label, "kind": kind, "runs": {}})
            row["runs"][str(seed) if seed is not None else "-"] = {
                "pretrain": str(pretrain / "record.json") if pretrain else None, "knn": str(knn / "record.json")}

        det_opts = (*p.det_opts, *(("RIMIFM.SCENES_ROOT", str(self.scenes_folder())) if p.scenes else ()))

        def transfer(key: str, seed: int, run: Path | None) -> None:
            """The detection step of one backbone (run None: the random init), recorded in its row."""
            if not p.detection:
                return
            pkl = self.convert(run) if run is not None else None
            det = self.detect(pkl, seed, run.name if run is not None else f"random-init-s{seed}", p.detection, det_opts,
                              p.det_engine)
            rows[key]["runs"][str(seed)]["detection"] = str(det / "record.json")

        def transferred(name: str) -> bool:
            return p.det_variants is None or name in p.det_variants

        if p.detection and self._needs_scenes():
            self.make_scenes()
            self.scene_set = self.scenes_tag()
        for seed in p.seeds:
            for name, overrides in p.variants:
                run = self.runs[name, seed] = self.pretrain(name, overrides, seed)
                knn = self.evaluate([str(run / "checkpoints" / "last.pth")], run.name,
                                    f"{self.label(name)}, seed {seed}", seed)
                add(name, self.label(name), "variant", seed, run, knn)
                if transferred(name):
                    transfer(name, seed, run)
            knn = self.evaluate(["none", "--random-init", "--config", str(recipe)], f"random-init-s{seed}",
                                f"a random backbone, seed {seed}", seed)
            add("random-init", "random init", "random-init", seed, None, knn)
            transfer("random-init", seed, None)
            if p.supervised:
                base_run = p.out / "pretrain" / f"{self.method}-s{seed}"
                budget = read_json(base_run / "record.json").get("train_time_s")
                if not budget:
                    raise UserError(f"{base_run}/record.json has no train_time_s to give the supervised run its budget; "
                                    f"delete {base_run} and run the {p.name} again")
                overrides = ("METHOD", "supervised", "TRAIN.TIME_BUDGET_S", f"{budget:.3f}",
                             "TRAIN.EPOCHS", str(4 * self.cfg.TRAIN.EPOCHS))
                run = self.pretrain("supervised", overrides, seed, tag="supervised")
                knn = self.evaluate([str(run / "checkpoints" / "last.pth")], run.name,
                                    f"the supervised backbone, seed {seed}", seed)
                add("supervised", "supervised (same training time)", "supervised", seed, run, knn)
                transfer("supervised", seed, run)
        if p.raw_pixels:
            knn = self.evaluate(["none", "--raw-pixels", "--config", str(recipe)], "raw-pixels", "the raw pixels")
            add("raw-pixels", "raw pixels", "raw-pixels", None, None, knn)

        manifest = {
            "title": f"{dataset_title(self.cfg)} · {backbone_title(self.cfg.MODEL.BACKBONE)} · "
                     f"{Path(p.config).stem}",
            "config": Path(p.config).name, "method": self.method, "seeds": list(p.seeds),
            "epochs": self.cfg.TRAIN.EPOCHS, "batch_size": self.cfg.DATA.BATCH_SIZE, "opts": list(p.opts),
            "k": p.k, "temperature": p.temperature, "test": p.test, "base": "base",
            "detection": Path(p.detection).name if p.detection else None, "det_opts": list(det_opts),
            "command": p.command, "code_version": code_version(), "calibrations": self.calibrations(),
            "rows": rows, "order": list(rows),
        }
        atomic_write_text(p.out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        self.steps.banner(f"report -> {p.results}")
        text = write_report(manifest, p.results)
        print("\n" + text)
        return manifest



def opts_tag(opts: tuple[str, ...] | list[str]) -> str:
    """Folder-name tag of overrides: '' for none, else '-o' and a short hash of them."""
    if not opts:
        return ""
    return "-o" + hashlib.sha256("\0".join(map(str, opts)).encode()).hexdigest()[:8]


__all__ = ["LABELS", "Plan", "Study", "TESTS", "VARIANTS", "opts_tag"]
