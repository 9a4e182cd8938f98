"""Every top-1 and AP carries its uncertainty (sd over seeds, else the SE of the one run's evaluation set),
a Δ within twice its combined uncertainty is marked in every output, classification rows name their
protocol, and a published row sits beside ours only on the same dataset, backbone and protocol."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from matplotlib.axes import Axes

from reporting.baselines import DEFAULT_BASELINES, read_baselines
from reporting.groups import Delta, binomial_se
from reporting.protocols import PROTOCOL_MEANING, split_protocol
from reporting.render import latex_escape
from reporting.tables import make_tables
from rimifm.errors import UserError
from rimifm.schemas import CLASSIFICATION_PROTOCOLS
from tests.reporting.test_tables import (
    BASELINES,
    C4,
    IFM_ON,
    OFF_IFM,
    OFF_RIM,
    RIM_ON,
    _detection,
    _eval,
    _pretrain,
    _write,
)

HEADER = BASELINES.splitlines()[0]
PUBLISHED = HEADER + """
classification,BYOL,cifar10,1000,resnet18,cifar10,online-linear,,,,,,92.58,%,,solo-learn README
classification,Someone,cifar10,100,resnet18,cifar10,linear solo-learn,,,,,,90.00,%,,Paper Y
classification,Nobody,cifar10,100,resnet18,cifar10,linear,,,,,,91.00,%,,Paper W
classification,Other,cifar10,100,resnet18,cifar10,knn k=20 T=0.1,,,,,,80.00,%,,Paper Z
classification,BYOL,cifar100,1000,resnet18,cifar100,online-linear,,,,,,70.46,%,,solo-learn README
"""
ONLINE = {"top1": 91.0, "top5": 99.5, "num_val": 10000, "lr": 0.1, "dataset": "cifar10"}


def _se(top1: float, n: int) -> float:
    p = top1 / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _make(runs: Path, out: Path, baselines: Path, plots: bool = False):
    return make_tables([runs], out, baselines, plots=plots, warn=lambda m: None)


@pytest.fixture()
def baselines(tmp_path: Path) -> Path:
    return _write(tmp_path / "baselines.csv", PUBLISHED)


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """One seed of base BYOL (online linear on cifar10) and BYOL+RIM+IFM (online linear on its
    pretraining data), each with kNN on cifar10 (Δ +0.40, within noise) and cifar100 (Δ +5.00, outside),
    on 10000 validation images."""
    root = tmp_path / "runs"
    base = _pretrain(root, "byol", 0, OFF_RIM, OFF_IFM, 30.0, online=ONLINE)
    both = _pretrain(root, "byol-rim-ifm", 0, RIM_ON, IFM_ON, 33.0, online={**ONLINE, "dataset": None})
    for run, c10, c100 in ((base, 90.0, 60.0), (both, 90.4, 65.0)):
        _eval(root, "knn", run, 0, c10, num_val=10000)
        _eval(root, "knn", run, 0, c100, num_val=10000, dataset="cifar100")
    return root, base, both


def test_standard_errors_and_noise_rule() -> None:
    assert binomial_se(90.0, 10000) == pytest.approx(0.3)
    assert binomial_se(50.0, 100) == pytest.approx(5.0)
    assert binomial_se(100.0, 6) == 0.0
    with pytest.raises(ValueError, match="num_val"):
        binomial_se(50.0, 0)
    assert Delta(0.5, 0.3).within_noise is True and Delta(-0.5, 0.3).within_noise is True
    assert Delta(0.7, 0.3).within_noise is False and Delta(0.6, 0.3).within_noise is False  # a tie is not
    assert Delta(0.1, None).within_noise is None
    assert latex_escape("+0.40 ≈") == r"+0.40 $\approx$"


def test_one_run_top1_carries_its_binomial_se_and_deltas_are_marked(pair, baselines: Path, tmp_path: Path) -> None:
    root, _, _ = pair
    _make(root, tmp_path / "out", baselines)
    rows = {(r["dataset"], r["protocol"], r["method"], r["from"]): r
            for r in _rows(tmp_path / "out" / "classification.csv")}
    base, both = rows[("cifar10", "knn", "BYOL", "ours")], rows[("cifar10", "knn", "BYOL+RIM+IFM", "ours")]
    assert (base["top1_unc"], base["unc_kind"], base["n"]) == (f"{_se(90.0, 10000):.4f}", "se-binomial", "1")
    assert (both["top1_unc"], both["unc_kind"]) == (f"{_se(90.4, 10000):.4f}", "se-binomial")
    combined = math.hypot(_se(90.0, 10000), _se(90.4, 10000))  # 0.42: |Δ| 0.40 < 0.84
    assert (both["delta_top1"], both["delta_top1_unc"], both["delta_top1_noise"]) == (
        "0.4000", f"{combined:.4f}", "within")
    far = rows[("cifar100", "knn", "BYOL+RIM+IFM", "ours")]
    combined = math.hypot(_se(60.0, 10000), _se(65.0, 10000))  # 0.68: |Δ| 5.00 > 1.37
    assert (far["delta_top1"], far["delta_top1_unc"], far["delta_top1_noise"]) == (
        "5.0000", f"{combined:.4f}", "outside")
    md = (tmp_path / "out" / "classification.md").read_text()
    assert "| cifar10 | knn | k=200 T=0.1 | R18 | BYOL+RIM+IFM | synthetic | 2 | 90.40 ± 0.29 (SE) | +0.40 ≈ | 1 |" in md
    assert "| cifar100 | knn | k=200 T=0.1 | R18 | BYOL+RIM+IFM | synthetic | 2 | 65.00 ± 0.48 (SE) | +5.00 | 1 |" in md
    assert md.count(" ≈ |") == 1 and "≈: within noise, |Δ| < 2·sqrt(u_a² + u_b²)" in md
    tex = (tmp_path / "out" / "classification.tex").read_text()
    assert r"90.40 $\pm$ 0.29 (SE) & +0.40 $\approx$ & 1" in tex and r"65.00 $\pm$ 0.48 (SE) & +5.00 & 1" in tex
    abl = {r["method"]: r for r in _rows(tmp_path / "out" / "ablation.csv")}
    assert (abl["BYOL"]["cifar10 knn unc"], abl["BYOL"]["cifar10 knn unc_kind"]) == ("0.3000", "se-binomial")


def test_online_linear_rows_and_published_rows_of_the_same_protocol(pair, baselines: Path, tmp_path: Path) -> None:
    root, base, _ = pair
    _eval(root, "linear", base, 0, 88.0, num_val=10000)  # no protocol name: the old cached probe
    result = _make(root, tmp_path / "a", baselines)
    assert (result.found, result.read) == (7, 7)  # an online_linear block is a row, not one more record
    rows = _rows(tmp_path / "a" / "classification.csv")
    ours = {(r["dataset"], r["protocol"], r["method"]): r for r in rows if r["from"] == "ours"}
    online = ours[("cifar10", "online-linear", "BYOL")]
    assert (online["eval_settings"], online["top1_mean"], online["top1_unc"], online["unc_kind"]) == (
        "during pretraining, lr 0.1", "91.0000", "0.2862", "se-binomial")
    assert ("synthetic", "online-linear", "BYOL+RIM+IFM") in ours  # no online_linear.dataset: the pretraining data
    assert ours[("cifar10", "linear-cached", "BYOL")]["eval_settings"] == "100 ep, sgd, lr 0.1"
    published = [(r["dataset"], r["protocol"], r["method"]) for r in rows if r["from"] == "published"]
    # beside the online-linear row only: not the linear row (our probe is the cached one), not the kNN row of
    # other settings (k=20), not cifar100 (no online-linear run there)
    assert published == [("cifar10", "online-linear", "BYOL")]
    md = (tmp_path / "a" / "classification.md").read_text()
    assert "| cifar10 | online-linear | - | R18 | BYOL (published) | cifar10 | 1000 | 92.58 | - | - | solo-learn README |" \
        in md
    for name, meaning in PROTOCOL_MEANING.items():
        assert f"{name}: {meaning}" in md
    # a probe named "linear" (the offline standard protocol) of another recipe gets no published linear row ...
    _eval(root, "linear", base, 0, 89.0, num_val=10000, name="linear", recipe="moco")
    _make(root, tmp_path / "m", baselines)
    rows = _rows(tmp_path / "m" / "classification.csv")
    assert [(r["protocol"], r["method"]) for r in rows if r["from"] == "published"] == [("online-linear", "BYOL")]
    # ... one of the row's recipe does; a published linear row that names no recipe sits beside none
    _eval(root, "linear", base, 0, 89.0, num_val=10000, name="linear", recipe="solo-learn")
    _make(root, tmp_path / "b", baselines)
    rows = _rows(tmp_path / "b" / "classification.csv")
    assert [(r["protocol"], r["method"]) for r in rows if r["from"] == "published"] == [
        ("linear", "Someone"), ("online-linear", "BYOL")]
    assert ("solo-learn, 100 ep, sgd, lr 0.1, aug") in {r["eval_settings"] for r in rows if r["from"] == "ours"}
    assert {r["protocol"] for r in rows if r["from"] == "ours"} == {"knn", "linear", "linear-cached", "online-linear"}


def test_unknown_linear_protocol_is_rejected_with_its_field(pair, baselines: Path, tmp_path: Path) -> None:
    root, base, _ = pair
    _eval(root, "linear", base, 0, 88.0, name="probe")
    result = _make(root, tmp_path / "out", baselines)
    [bad] = result.rejected
    assert bad.field == "protocol.name" and "'probe'" in bad.reason and "linear, linear-cached" in bad.reason


def test_bad_published_protocol_is_one_clear_error(tmp_path: Path) -> None:
    bad = _write(tmp_path / "b.csv", PUBLISHED.replace("knn k=20 T=0.1", "probe k=20"))
    with pytest.raises(UserError, match=r"line 5, column protocol: 'probe k=20' does not start with a classification"):
        read_baselines(bad)
    assert split_protocol("kNN k=200  T=0.1") == ("knn", "k=200 T=0.1")


def test_detection_ap_shows_its_bootstrap_se(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    base = _pretrain(root, "byol", 0, OFF_RIM, OFF_IFM, 30.0)
    both = _pretrain(root, "byol-rim-ifm", 0, RIM_ON, IFM_ON, 33.0)
    se = {"AP": 0.4, "AP50": 0.6, "AP75": 0.5, "resamples": 200}
    _detection(root, C4, "torchvision", str(base / "backbone.pkl"), 0, 10.0, se=se)
    _detection(root, C4, "torchvision", str(both / "backbone.pkl"), 0, 12.0, se=se)
    _detection(root, C4, "detectron2", str(both / "backbone.pkl"), 0, 12.0)  # no metrics_se: unknown
    _make(root, tmp_path / "out", _write(tmp_path / "b.csv", BASELINES))
    rows = {(r["engine"], r["method"], r["from"]): r for r in _rows(tmp_path / "out" / "detection.csv")}
    tv = rows[("torchvision", "BYOL+RIM+IFM", "ours")]
    assert (tv["AP_unc"], tv["AP_unc_kind"], tv["AP50_unc"], tv["AP75_unc"]) == (
        "0.4000", "se-bootstrap", "0.6000", "0.5000")
    # Δ 2 against 2·0.57 (AP) and 2·0.85 (AP50): outside; AP75 Δ 2 against 2·0.71: outside
    assert (tv["delta_AP"], tv["delta_AP_unc"], tv["delta_AP_noise"]) == ("2.0000", "0.5657", "outside")
    d2 = rows[("detectron2", "BYOL+RIM+IFM", "ours")]
    assert (d2["AP_unc"], d2["AP_unc_kind"]) == ("", "unknown")
    md = (tmp_path / "out" / "detection.md").read_text()
    assert "| 12.00 ± 0.40 (SE) | 32.00 ± 0.60 (SE) | 10.00 ± 0.50 (SE) | +2.00 | +2.00 | +2.00 | 1 | ours |" in md
    assert "| 12.00 ±? | 32.00 ±? | 10.00 ±? | - | - | - | 1 | ours |" in md  # no detectron2 base row
    assert "bootstrap standard error over test images" in md
    # a Δ within its bootstrap noise is marked
    (root / "detection" / "R18-C4-torchvision-byol-rim-ifm-s0-s0" / "record.json").unlink()
    _detection(root, C4, "torchvision", str(both / "backbone.pkl"), 1, 10.5, se=se)
    _make(root, tmp_path / "again", _write(tmp_path / "b.csv", BASELINES))
    assert "| 10.50 ± 0.40 (SE) | 30.50 ± 0.60 (SE) | 8.50 ± 0.50 (SE) | +0.50 ≈ | +0.50 ≈ | +0.50 ≈ | 1 |" in \
        (tmp_path / "again" / "detection.md").read_text()


def test_plots_draw_error_bars_and_hatch_within_noise_bars(pair, baselines: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    root, _, _ = pair
    errs: list[float] = []
    hatches: list[str] = []
    errorbar, barh = Axes.errorbar, Axes.barh

    def spy_errorbar(self, x, y, *args, xerr=None, **kw):
        errs.extend(xerr or [])
        return errorbar(self, x, y, *args, xerr=xerr, **kw)

    def spy_barh(self, *args, hatch=None, **kw):
        if hatch:
            hatches.append(hatch)
        return barh(self, *args, hatch=hatch, **kw)

    monkeypatch.setattr(Axes, "errorbar", spy_errorbar)
    monkeypatch.setattr(Axes, "barh", spy_barh)
    result = _make(root, tmp_path / "out", baselines, plots=True)
    assert (tmp_path / "out" / "classification.png").stat().st_size > 0
    bars = result.tables["classification"].bars
    ours = [b for b in bars if not b["published"]]
    assert all(b["err"] is not None and b["err"] > 0 for b in ours)  # every one-run row has its binomial SE
    assert [b["label"] for b in ours if b["within_noise"]] == ["BYOL+RIM+IFM  Δ +0.40 ≈"]
    assert pytest.approx(_se(90.4, 10000)) in errs and pytest.approx(_se(91.0, 10000)) in errs
    assert hatches.count("xx") == 1 and hatches.count("//") == 1  # the within-noise bar; the published bar


def test_shipped_baselines_name_their_protocols() -> None:
    rows = [r for r in read_baselines(DEFAULT_BASELINES) if r.kind == "classification"]
    assert {r.protocol_name for r in rows} <= set(CLASSIFICATION_PROTOCOLS)
    by = {(r.method, r.dataset, r.source): r for r in rows}
    # solo-learn's CIFAR numbers are its online linear classifier; its ImageNet-100 offline ones a linear probe
    assert by[("BYOL", "cifar10", "solo-learn README")].protocol_name == "online-linear"
    assert dict(by[("BYOL", "cifar10", "solo-learn README")].metrics)["top1"] == 92.58
    assert {r.protocol_name for r in rows if r.source == "solo-learn README" and r.dataset.startswith("cifar")} \
        == {"online-linear"}
    i100 = by[("BYOL", "imagenet100", "solo-learn README")]
    # its linear recipe: scripts/linear/imagenet-100/*.yaml @ 9187ea3 (pretrain/evaluation/recipes.py)
    assert (i100.protocol_name, i100.settings) == ("linear", "solo-learn-imagenet100")
    from pretrain.evaluation.recipes import RECIPES

    # every published linear row names a recipe (one of ours, or its own that no run of ours can match)
    assert {r.settings for r in rows if r.protocol_name == "linear"} <= {*RECIPES, "pycontrast"}
    # Un-Mix's CIFAR numbers are the kNN monitor (k=200, T=0.1) of the MoCo CIFAR demo it builds on, on the 128-d
    # output of its head (szq0214/Un-Mix: its kNN monitor feeds the model's normalised output, SplitBN ResNet)
    unmix = by[("MoCo + Un-Mix", "cifar10", "szq0214/Un-Mix README")]
    assert (unmix.protocol_name, unmix.settings) == ("knn", "k=200 T=0.1")
    assert unmix.marks == ("kNN on the 128-d head output of a SplitBN ResNet",)
    # lightly's benchmark table reports the highest kNN accuracy over all epochs (lightly docs benchmarks page)
    assert {r.marks for r in rows if r.source == "lightly docs benchmarks page"} == {("max over epochs",)}
    # MoCo's main_lincls.py (MixMask ships it) and SimSiam's keep the best epoch (`best_acc1`)
    simsiam = by[("SimSiam", "imagenet1k", "facebookresearch/simsiam README")]
    assert (simsiam.settings, simsiam.marks, dict(simsiam.metrics)["top1"], simsiam.epochs) == (
        "simsiam", ("best epoch",), 68.1, "100")
    # SimSiam's Table 5 (arXiv 2011.10566): every unsupervised row is a 200-epoch pretraining
    coco = [r for r in read_baselines(DEFAULT_BASELINES) if r.protocol == "COCO17 Mask R50-C4 90k"
            and r.method in ("MoCo v2", "BYOL", "SimSiam")]
    assert len(coco) == 3 and {r.epochs for r in coco} == {"200"}


def test_published_protocol_marks_show_in_every_output(pair, tmp_path: Path) -> None:
    """A published row's marks (how its protocol differs from ours) sit in its settings cell in Markdown, LaTeX
    and CSV, and in its plot label."""
    root, _, _ = pair
    marked = _write(tmp_path / "m.csv", HEADER + ",marks\nclassification,Lightly BYOL,cifar10,800,resnet18,cifar10,"
                    "knn k=200 T=0.1,,,,,,0.910,fraction,batch 512,lightly docs,max over epochs; blur off\n")
    result = _make(root, tmp_path / "out", marked, plots=True)
    text = "k=200 T=0.1 [max over epochs; blur off]"
    assert f"| cifar10 | knn | {text} | R18 | Lightly BYOL (published) |" in (tmp_path / "out" / "classification.md"
                                                                              ).read_text()
    assert text.replace("[", "{[}").replace("]", "{]}") in (tmp_path / "out" / "classification.tex").read_text() or \
        text in (tmp_path / "out" / "classification.tex").read_text()
    assert text in {r["eval_settings"] for r in _rows(tmp_path / "out" / "classification.csv")}
    assert "Lightly BYOL (800 ep, max over epochs, blur off)" in [b["label"] for b in result.tables["classification"].bars]


def test_a_published_online_linear_row_never_sits_beside_masked_views_only(baselines: Path, tmp_path: Path) -> None:
    """solo-learn's online classifier saw unmasked views; a +RIM run's classifier on masked views (every record
    before ONLINE_LINEAR.VIEWS, and `masked` since) is marked and gets no published row; a `clean` one does."""
    def published(online: dict, name: str) -> tuple[list, dict]:
        root = tmp_path / name
        _pretrain(root, "byol-rim", 0, RIM_ON, OFF_IFM, 30.0, online=online)
        _make(root, tmp_path / f"{name}-out", baselines)
        rows = _rows(tmp_path / f"{name}-out" / "classification.csv")
        ours = next(r for r in rows if r["from"] == "ours" and r["protocol"] == "online-linear")
        return [r["method"] for r in rows if r["from"] == "published" and r["protocol"] == "online-linear"], ours

    beside, ours = published(ONLINE, "old")  # no "views": an old record, masked under RIM
    assert beside == [] and ours["eval_settings"] == "during pretraining, lr 0.1, masked views"
    beside, ours = published({**ONLINE, "views": "masked"}, "masked")
    assert beside == [] and ours["eval_settings"].endswith(", masked views")
    beside, ours = published({**ONLINE, "views": "clean"}, "clean")
    assert beside == ["BYOL"] and ours["eval_settings"] == "during pretraining, lr 0.1"


def test_records_from_before_a_config_key_pool_with_runs_at_its_old_value(tmp_path: Path) -> None:
    """BYOL.LOSS_SCALE (added at `sum`, what earlier runs trained with) and the online classifier's views (which
    do not change the backbone) leave a run's recipe identity alone; `mean` is another recipe."""
    import json

    from reporting.runs import load_runs

    root = tmp_path / "runs"
    paths = []
    for seed, extra in ((0, {}), (1, {"BYOL": {"LOSS_SCALE": "sum"}, "ONLINE_LINEAR": {"VIEWS": "clean"}}),
                        (2, {"BYOL": {"LOSS_SCALE": "mean"}})):
        out = _pretrain(root, "byol", seed, OFF_RIM, OFF_IFM, 30.0)
        rec = json.loads((out / "record.json").read_text())
        rec["config"].update(extra)
        (out / "record.json").write_text(json.dumps(rec))
        paths.append(out / "record.json")
    runs, rejected = load_runs(paths)
    assert not rejected
    recipes = [r.pre.recipe for r in runs]
    assert recipes[0] == recipes[1] != recipes[2]
