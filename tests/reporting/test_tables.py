"""Result tables: hand-computed means/stds/deltas from a fixture of records, published rows only beside
matching protocols, invalid records rejected (listed with path and reason, never dropped silently),
byte-identical regeneration, the CLI. Uncertainties, within-noise marks and protocols: test_uncertainty.py."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reporting.baselines import DEFAULT_BASELINES, read_baselines
from reporting.groups import mean_std
from reporting.render import fmt, latex_escape
from reporting.runs import canon_backbone
from reporting.tables import make_tables
from rimifm.errors import UserError
from tests.helpers import REPO

TOOL = REPO / "tools" / "make_tables.py"
RIM_ON = {"enabled": True, "ratio": 0.3, "patch_size": 0, "fill": "zero", "prob": 0.5, "branch": "online"}
IFM_ON = {"enabled": True, "alpha": 1.0, "level": "backbone", "target": "feature", "partner": "permute",
          "weight": 1.0, "start_epoch": 0}
OFF_RIM = {**RIM_ON, "enabled": False}
OFF_IFM = {**IFM_ON, "enabled": False}

# kNN / linear top-1 and detection AP per (variant, seed): means, stds and deltas are easy by hand
KNN = {("base", 0): 40.0, ("base", 1): 42.0, ("base", 2): 44.0,
       ("both", 0): 45.0, ("both", 1): 46.0, ("both", 2): 47.0}
LINEAR = {("base", 0): 50.0, ("base", 1): 52.0, ("both", 0): 55.0, ("both", 1): 57.0, ("both", 2): 59.0}
C4 = "synthetic R18-C4 300it"
FPN = "synthetic R18-FPN 300it"
DET = {  # (protocol, engine, variant, pretraining seed): AP
    (C4, "torchvision", "base", 0): 10.0, (C4, "torchvision", "base", 1): 12.0,
    (C4, "torchvision", "both", 0): 14.0, (C4, "torchvision", "both", 1): 16.0,
    (C4, "detectron2", "base", 0): 20.0, (C4, "detectron2", "both", 0): 21.0,
    (FPN, "torchvision", "base", 0): 8.0, (FPN, "torchvision", "both", 0): 9.0,
}

BASELINES = """kind,method,pretrain_data,pretrain_epochs,backbone,dataset,protocol,engine,AP,AP50,AP75,mask_AP,top1,unit,note,source
classification,BYOL,cifar10,200,resnet18,cifar10,kNN k=200 T=0.1,,,,,,0.868,fraction,batch 512,lightly docs
classification,BYOL,cifar100,1000,resnet18,cifar100,linear,,,,,,70.46,%,,solo-learn README
detection,random init,-,,R18,synthetic test,synthetic R18-C4 300it,detectron2,4.5,9.0,3.5,,,%,,Paper X Tab. 1
detection,MoCo v2,ImageNet-1k,200,R50,VOC07 test,VOC07+12 R50-C4 24k,detectron2,57.0,82.4,63.6,,,%,,moco detection/README.md
"""


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) if not isinstance(data, str) else data)
    return path


def _pretrain(runs: Path, name: str, seed: int, rim: dict, ifm: dict, knn_final: float,
              online: dict | None = None) -> Path:
    out = runs / "pretrain" / f"{name}-s{seed}"
    cfg = {"METHOD": "byol", "SEED": seed, "OUTPUT_DIR": str(out), "MODEL": {"BACKBONE": "resnet18"},
           "RIM": {k.upper(): v for k, v in rim.items()}, "IFM": {k.upper(): v for k, v in ifm.items()},
           "TRAIN": {"EPOCHS": 2, "PROGRESS": False}, "DATA": {"DATASET": "synthetic", "ROOT": "/somewhere"}}
    _write(out / "record.json", {
        "run_id": f"pretrain-{name}-s{seed}", "kind": "pretrain", "method": "byol", "rim": rim, "ifm": ifm,
        "backbone": "resnet18", "dataset": {"name": "synthetic", "root": "/somewhere", "images": 64},
        "epochs": 2, "steps": 4, "seed": seed, "metrics": {"loss": 0.5, "knn_top1": knn_final},
        "config": cfg, "checkpoint": str(out / "checkpoints" / "last.pth"), "output_dir": str(out),
        "wall_time_s": 1.0 + seed, **({"online_linear": online} if online else {})})
    rows = [{"step": 0, "epoch": 0, "knn_top1": 20.0}]
    rows += [{"step": s, "epoch": (s - 1) // 2, "loss": 1.0 - 0.1 * s - 0.01 * seed, "base_loss": 0.9,
              "z_std": 0.06, "lr": 0.05, "images_per_s": 100.0 + s} for s in (1, 2, 3, 4)]
    rows += [{"step": 4, "epoch": 2, "knn_top1": knn_final}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return out


def _eval(runs: Path, protocol: str, run_dir: Path | None, seed: int, top1: float, method: str = "byol",
          rim: dict | None = None, ifm: dict | None = None, num_val: int | None = None,
          name: str | None = None, dataset: str = "cifar10", recipe: str | None = None) -> None:
    """A kNN or linear record (`name`: the linear protocol name; None writes none, as old records did)."""
    settings = ({"k": 200, "temperature": 0.1, "image_size": 32} if protocol == "knn" else
                {"epochs": 100, "lr": 0.1, "optimizer": "sgd", "batch_size": 256, "weight_decay": 0.0,
                 "augment": name == "linear", "image_size": 32, **({"name": name} if name else {}),
                 **({"recipe": recipe} if recipe else {})})
    tag = protocol if name is None else f"{protocol}-{name}"
    folder = f"{run_dir.name if run_dir else f'random-init-s{seed}'}-{tag}-{dataset}"
    _write(runs / "eval" / folder / "record.json", {
        "run_id": f"{protocol}-{folder}", "kind": protocol, "method": method,
        "rim": {k.upper(): v for k, v in (rim or {}).items()} or None,
        "ifm": {k.upper(): v for k, v in (ifm or {}).items()} or None, "backbone": "resnet18", "seed": seed,
        "source": "ours" if run_dir else "random-init", "dataset": dataset, "protocol": settings,
        "metrics": {"top1": top1, "top5": 99.0}, **({"num_val": num_val} if num_val is not None else {}),
        "checkpoint": str(run_dir / "checkpoints" / "last.pth") if run_dir else None})


def _detection(runs: Path, protocol: str, engine: str, weights: str, seed: int, ap: float,
               se: dict | None = None) -> None:
    stem = Path(weights).parent.name if weights else "random"
    out = runs / "detection" / f"{protocol.split()[1]}-{engine}-{stem}-s{seed}"
    _write(out / "record.json", {
        "run_id": f"detection-{out.name}", "kind": "detection", "engine": engine, "eval_only": False,
        "source_checkpoint": weights, "protocol": protocol, "backbone": "R18",
        "metrics": {"AP": ap, "AP50": ap + 20.0, "AP75": ap - 2.0}, "iterations": 300, "seed": 0,
        "output_dir": str(out), "finished_at": f"2024-01-0{seed + 1}T00:00:00",
        **({"metrics_se": se} if se else {})})


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """Records of base BYOL and BYOL+RIM+IFM (3 seeds), a RIM-ratio variant, their evaluations,
    detection on two protocols and two engines, random init, and two broken records."""
    root = tmp_path / "runs"
    dirs = {}
    for seed in range(3):
        dirs[("base", seed)] = _pretrain(root, "byol", seed, OFF_RIM, OFF_IFM, 30.0 + seed)
        dirs[("both", seed)] = _pretrain(root, "byol-rim-ifm", seed, RIM_ON, IFM_ON, 33.0 + seed)
    _pretrain(root, "byol-rim05", 0, {**RIM_ON, "ratio": 0.5}, OFF_IFM, 31.0)
    for (variant, seed), top1 in KNN.items():
        _eval(root, "knn", dirs[(variant, seed)], seed, top1)
    for (variant, seed), top1 in LINEAR.items():
        _eval(root, "linear", dirs[(variant, seed)], seed, top1)
    _eval(root, "knn", None, 0, 30.0, method="random-init")
    for (protocol, engine, variant, seed), ap in DET.items():
        _detection(root, protocol, engine, str(dirs[(variant, seed)] / "backbone.pkl"), seed, ap)
    _detection(root, C4, "torchvision", "", 0, 5.0)
    # an eval-only re-run of a model that a detection record above trained: counted once
    trained = root / "detection" / "R18-C4-torchvision-byol-s0-s0"
    _write(root / "detection" / "reeval" / "record.json", {
        **json.loads((trained / "record.json").read_text()), "eval_only": True,
        "source_checkpoint": str(trained / "model_final.pth"), "metrics": {"AP": 99.0}})
    _write(root / "eval" / "broken" / "record.json", '{"kind": "knn", "metrics": ')
    _write(root / "eval" / "no-top1" / "record.json", {
        "kind": "knn", "method": "byol", "backbone": "resnet18", "dataset": "cifar10",
        "protocol": {"k": 200, "temperature": 0.1}, "metrics": {"top5": 1.0}, "checkpoint": None})
    return root


@pytest.fixture()
def baselines(tmp_path: Path) -> Path:
    return _write(tmp_path / "baselines.csv", BASELINES)


def _rows(csv_path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(csv_path.open()))


def _make(runs: Path, out: Path, baselines: Path, messages: list[str] | None = None, plots: bool = True):
    return make_tables([runs], out, baselines, plots=plots,
                       warn=(messages.append if messages is not None else lambda m: None))


def test_helpers() -> None:
    assert mean_std([44.0, 40.0, 42.0]) == (42.0, 2.0)
    assert mean_std([5.0]) == (5.0, None)
    assert fmt(-0.001, sign=True) == "+0.00" and fmt(1.5, sign=True) == "+1.50" and fmt(None) == "-"
    assert canon_backbone("resnet18") == canon_backbone("R18") == "R18"
    assert latex_escape("a_b & 5% ± 1") == r"a\_b \& 5\% $\pm$ 1"


def test_classification_table(runs: Path, baselines: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    result = _make(runs, tmp_path / "out", baselines, messages, plots=False)
    assert (result.found, result.read, len(result.rejected)) == (31, 29, 2)
    rows = _rows(tmp_path / "out" / "classification.csv")
    by = {(r["protocol"], r["method"], r["from"]): r for r in rows}
    base = by[("knn", "BYOL", "ours")]
    assert (base["top1_mean"], base["top1_unc"], base["unc_kind"], base["n"], base["delta_top1"]) == (
        "42.0000", "2.0000", "sd", "3", "")
    assert (base["eval_settings"], base["pretrain_data"], base["pretrain_epochs"], base["seeds"]) == (
        "k=200 T=0.1", "synthetic", "2", "0;1;2")
    both = by[("knn", "BYOL+RIM+IFM", "ours")]
    assert (both["top1_mean"], both["top1_unc"], both["n"], both["delta_top1"]) == ("46.0000", "1.0000", "3", "4.0000")
    # Δ 4 against sqrt(2² + 1²) = 2.236: within noise (4 < 4.47)
    assert (both["delta_top1_unc"], both["delta_top1_noise"]) == ("2.2361", "within")
    # the fixture's linear records name no protocol: the old cached probe
    lin = by[("linear-cached", "BYOL+RIM+IFM", "ours")]
    assert (lin["top1_mean"], lin["top1_unc"], lin["n"], lin["delta_top1"]) == ("57.0000", "2.0000", "3", "6.0000")
    assert (lin["delta_top1_unc"], lin["delta_top1_noise"]) == ("2.4495", "outside")  # 6 > 2 sqrt(2 + 4)
    lin_base = by[("linear-cached", "BYOL", "ours")]
    assert (lin_base["top1_mean"], lin_base["top1_unc"], lin_base["n"]) == ("51.0000", "1.4142", "2")
    rnd = by[("knn", "random init", "ours")]  # one run, no num_val in its record: uncertainty unknown
    assert (rnd["top1_mean"], rnd["top1_unc"], rnd["unc_kind"], rnd["n"], rnd["delta_top1"], rnd["pretrain_data"]) \
        == ("30.0000", "", "unknown", "1", "", "-")
    # the published kNN row (a fraction in the file, 'kNN' in any case) sits beside our kNN rows of the same
    # settings, in percent, with its source; the cifar100 linear row has no run of its protocol and is absent
    pub = by[("knn", "BYOL", "published")]
    assert (pub["top1_mean"], pub["source"], pub["pretrain_epochs"], pub["eval_settings"], pub["unc_kind"]) == (
        "86.8000", "lightly docs", "200", "k=200 T=0.1", "published")
    assert not any(r["dataset"] == "cifar100" for r in rows)
    md = (tmp_path / "out" / "classification.md").read_text()
    assert "| cifar10 | knn | k=200 T=0.1 | R18 | BYOL+RIM+IFM | synthetic | 2 | 46.00 ± 1.00 (sd, n=3) | " \
           "+4.00 ≈ | 3 | ours |" in md
    assert "| BYOL (published) | cifar10 | 200 | 86.80 | - | - | lightly docs (batch 512) |" in md
    assert "| 51.00 ± 1.41 (sd, n=2) | - | 2 | ours |" in md
    assert "| 57.00 ± 2.00 (sd, n=3) | +6.00 | 3 | ours |" in md
    assert "| 30.00 ±? | - | 1 | ours |" in md


def test_detection_table(runs: Path, baselines: Path, tmp_path: Path) -> None:
    _make(runs, tmp_path / "out", baselines, plots=False)
    rows = _rows(tmp_path / "out" / "detection.csv")
    by = {(r["protocol"], r["engine"], r["method"], r["from"]): r for r in rows}
    tv_base = by[(C4, "torchvision", "BYOL", "ours")]
    assert (tv_base["AP_mean"], tv_base["AP_unc"], tv_base["AP_unc_kind"], tv_base["n"], tv_base["seeds"]) == (
        "11.0000", "1.4142", "sd", "2", "0/0;1/0")
    tv = by[(C4, "torchvision", "BYOL+RIM+IFM", "ours")]
    assert (tv["AP_mean"], tv["AP50_mean"], tv["AP75_mean"]) == ("15.0000", "35.0000", "13.0000")
    assert (tv["delta_AP"], tv["delta_AP50"], tv["delta_AP75"]) == ("4.0000", "4.0000", "4.0000")
    d2 = by[(C4, "detectron2", "BYOL+RIM+IFM", "ours")]  # delta within its own engine only
    assert (d2["AP_mean"], d2["AP_unc"], d2["AP_unc_kind"], d2["n"], d2["delta_AP"]) == (
        "21.0000", "", "unknown", "1", "1.0000")
    assert (d2["delta_AP_unc"], d2["delta_AP_noise"]) == ("", "unknown")  # one run without metrics_se
    # Δ 4 against sqrt(1.41² + 1.41²) = 2: exactly twice its uncertainty, which is not within noise
    assert (tv["delta_AP_unc"], tv["delta_AP_noise"]) == ("2.0000", "outside")
    assert by[(FPN, "torchvision", "BYOL+RIM+IFM", "ours")]["delta_AP"] == "1.0000"
    rnd = by[(C4, "torchvision", "random init", "ours")]
    assert (rnd["AP_mean"], rnd["pretrain_data"], rnd["delta_AP"]) == ("5.0000", "-", "")
    published = [r for r in rows if r["from"] == "published"]
    assert [(r["protocol"], r["method"], r["engine"], r["source"]) for r in published] == [
        (C4, "random init", "detectron2", "Paper X Tab. 1")]  # not beside FPN, no VOC run -> no VOC row
    md = (tmp_path / "out" / "detection.md").read_text()
    assert f"| {C4} | torchvision | R18 | BYOL+RIM+IFM | synthetic | 2 | 15.00 ± 1.41 (sd, n=2) | " \
           "35.00 ± 1.41 (sd, n=2) | 13.00 ± 1.41 (sd, n=2) | +4.00 | +4.00 | +4.00 | 2 | ours |" in md
    assert f"| {C4} | detectron2 | R18 | BYOL+RIM+IFM | synthetic | 2 | 21.00 ±? | 41.00 ±? | 19.00 ±? | " \
           "+1.00 ? | +1.00 ? | +1.00 ? | 1 | ours |" in md
    assert "VOC07+12" not in md


def test_ablation_table(runs: Path, baselines: Path, tmp_path: Path) -> None:
    _make(runs, tmp_path / "out", baselines, plots=False)
    md = (tmp_path / "out" / "ablation.md").read_text()
    header = md.splitlines()[2]
    assert header.startswith("| method | backbone | pretrain data | epochs | RIM | RIM ratio | IFM | ")
    assert "fill" not in header  # knobs that never vary are not columns
    rows = {r["method"]: r for r in _rows(tmp_path / "out" / "ablation.csv")}
    assert set(rows) == {"BYOL", "BYOL+RIM+IFM", "BYOL+RIM(ratio=0.5)"}
    assert (rows["BYOL"]["rim_enabled"], rows["BYOL"]["rim_ratio"], rows["BYOL"]["n"]) == ("off", "-", "3")
    assert rows["BYOL+RIM(ratio=0.5)"]["rim_ratio"] == "0.5"
    assert rows["BYOL"]["pretrain kNN monitor mean"] == "31.0000"  # 30, 31, 32
    assert rows["BYOL+RIM+IFM"]["cifar10 knn mean"] == "46.0000"
    assert (rows["BYOL+RIM+IFM"]["cifar10 knn unc"], rows["BYOL+RIM+IFM"]["cifar10 knn unc_kind"]) == ("1.0000", "sd")
    assert rows["BYOL"]["cifar10 linear-cached n"] == "2"
    assert "| 51.00 ± 1.41 (sd, n=2) |" in md
    assert rows["BYOL+RIM(ratio=0.5)"]["cifar10 linear-cached n"] == "0"
    assert "| 31.00 ±? |" in md  # one pretraining run: its kNN monitor names no image count


def test_broken_records_rejected_and_listed(runs: Path, baselines: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    result = _make(runs, tmp_path / "out", baselines, messages, plots=False)
    broken = str(runs / "eval" / "broken" / "record.json")
    no_top1 = str(runs / "eval" / "no-top1" / "record.json")
    reasons = {r.path: r for r in result.rejected}
    assert sorted(reasons) == sorted([broken, no_top1])
    assert reasons[broken].reason.startswith("not valid JSON")
    assert reasons[no_top1].reason == "missing field 'metrics.top1'" and reasons[no_top1].field == "metrics.top1"
    listing = (tmp_path / "out" / "rejected.md").read_text()
    assert "| runs/eval/broken/record.json | not valid JSON (" in listing
    assert "| runs/eval/no-top1/record.json | missing field 'metrics.top1' |" in listing
    assert "rejected.md" in result.files
    reeval = str(runs / "detection" / "reeval" / "record.json")
    assert any(m.startswith(f"{reeval}: re-evaluation of the model trained by ") for m in messages)


def test_byte_identical_regeneration(runs: Path, baselines: Path, tmp_path: Path) -> None:
    first = _make(runs, tmp_path / "a", baselines)
    second = _make(runs, tmp_path / "b", baselines)
    assert first.files == second.files
    assert {"classification.png", "detection.png", "ablation.png"} <= set(first.files)
    assert sum(f.startswith("curves/") for f in first.files) == 3
    for name in first.files:
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name
        if not name.endswith(".png"):
            assert str(tmp_path) not in a.decode(), f"{name} holds an absolute path"
    assert b"Software" not in (tmp_path / "a" / "detection.png").read_bytes()
    tex = (tmp_path / "a" / "classification.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 and r"46.00 $\pm$ 1.00 (sd, n=3) & +4.00 $\approx$" in tex
    assert r"$\approx$: within noise, $|$$\Delta$$|$ $<$ 2$\cdot$sqrt" in tex  # the legend under the table


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


def test_cli(runs: Path, baselines: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    proc = _cli(runs, "--out", out, "--baselines", baselines, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert f"records: 31 found, 29 read, 2 rejected (listed in {out}/rejected.md)" in proc.stdout
    assert f"rejected {runs / 'eval' / 'broken' / 'record.json'}: not valid JSON" in proc.stdout
    assert f"rejected {runs / 'eval' / 'no-top1' / 'record.json'}: missing field 'metrics.top1'" in proc.stdout
    assert f"written to {out}/" in proc.stdout
    assert "# Classification" in proc.stdout and "# Detection" in proc.stdout
    assert "46.00 ± 1.00 (sd, n=3)" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{t}.{e}" for t in ("classification", "detection", "ablation") for e in ("md", "csv", "tex")]
        + ["rejected.md"])
    assert _cli(runs, "--out", out, "--baselines", baselines, "--no-plots", "--strict").returncode == 1


def test_cli_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _cli(tmp_path / "empty", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "no usable run records" in proc.stdout and not (tmp_path / "out").exists()
    proc = _cli(tmp_path / "nope", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.startswith("error: runs folder") and "Traceback" not in proc.stderr


def test_bad_baselines_file(tmp_path: Path) -> None:
    bad = _write(tmp_path / "b.csv", BASELINES.replace("lightly docs", ""))
    with pytest.raises(UserError, match=r"line 2, column source"):
        read_baselines(bad)


def test_shipped_baselines_parse_with_sources() -> None:
    rows = read_baselines(DEFAULT_BASELINES)
    assert len(rows) == 49
    assert all(r.source for r in rows)
    voc = {(r.method, r.epochs): dict(r.metrics) for r in rows if r.protocol == "VOC07+12 R50-C4 24k"}
    assert voc[("MoCo v2", "800")] == {"AP": 57.4, "AP50": 82.5, "AP75": 64.0}
    # the detection protocols are spelled exactly as our detection records spell them
    from detection.config import protocol_string, read_config

    protocols = {r.protocol for r in rows if r.kind == "detection"}
    cfg = read_config("voc_r50.yaml")
    assert protocol_string(cfg) in protocols
    for name in ("coco_r50_c4_1x.yaml", "coco_r50_fpn_1x.yaml"):
        cfg = read_config(name)
        cfg["MODEL"]["MASK_ON"] = True
        assert protocol_string(cfg) in protocols
