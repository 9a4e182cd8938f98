"""Invalid records are never dropped silently: each is listed (path and the field at fault) by the CLI and in
rejected.md, --strict fails on them, and records in every writer's shape (legacy, unversioned) are read."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from reporting.cli import main
from reporting.tables import make_tables
from tests.helpers import run_main
from tests.reporting.test_tables import BASELINES, IFM_ON, OFF_IFM, OFF_RIM, RIM_ON, _eval, _pretrain, _write
from tests.rimifm.test_schemas import LEGACY


@pytest.fixture()
def baselines(tmp_path: Path) -> Path:
    return _write(tmp_path / "baselines.csv", BASELINES)


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """Two valid pretraining runs with a kNN evaluation each, one pretraining record whose kNN metric was
    renamed, and one evaluation record without its backbone."""
    root = tmp_path / "runs"
    base = _pretrain(root, "byol", 0, OFF_RIM, OFF_IFM, 30.0)
    both = _pretrain(root, "byol-rim-ifm", 0, RIM_ON, IFM_ON, 33.0)
    _eval(root, "knn", base, 0, 40.0)
    _eval(root, "knn", both, 0, 45.0)
    renamed = _pretrain(root, "renamed", 0, OFF_RIM, OFF_IFM, 31.0) / "record.json"
    rec = json.loads(renamed.read_text())
    rec["metrics"]["knn_top_1"] = rec["metrics"].pop("knn_top1")
    _write(renamed, rec)
    no_backbone = root / "eval" / "byol-s0-knn-cifar10" / "record.json"
    rec = json.loads(no_backbone.read_text())
    del rec["backbone"]
    _write(root / "eval" / "no-backbone" / "record.json", rec)
    return root


def test_rejected_records_listed_in_the_output(runs: Path, baselines: Path, tmp_path: Path) -> None:
    result = make_tables([runs], tmp_path / "a", baselines, plots=False, warn=lambda m: None)
    by_path = {r.path: r for r in result.rejected}
    renamed = str(runs / "pretrain" / "renamed-s0" / "record.json")
    no_backbone = str(runs / "eval" / "no-backbone" / "record.json")
    assert sorted(by_path) == sorted([renamed, no_backbone]) and (result.found, result.read) == (6, 4)
    assert by_path[renamed].field == "metrics.knn_top_1" and by_path[no_backbone].field == "backbone"
    listing = (tmp_path / "a" / "rejected.md").read_text()
    assert "| runs/eval/no-backbone/record.json | missing field 'backbone' |" in listing
    assert "| runs/pretrain/renamed-s0/record.json | unknown field 'metrics.knn_top_1' (known: " in listing
    # byte-reproducible, with no absolute path, wherever the runs folder lies
    make_tables([runs], tmp_path / "b", baselines, plots=False, warn=lambda m: None)
    assert (tmp_path / "b" / "rejected.md").read_bytes() == listing.encode()
    assert str(tmp_path) not in listing
    # the valid runs still make their rows; the rejected pretraining is in no table
    ablation = (tmp_path / "a" / "ablation.csv").read_text()
    assert ablation.count("\n") == 3 and "31.0000" not in ablation


def test_cli_prints_rejected_records_and_strict_fails(runs: Path, baselines: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tables"
    code, stdout, _ = run_main(main, [str(runs), "--out", str(out), "--baselines", str(baselines), "--no-plots"],
                               capsys)
    assert code == 0
    assert f"records: 6 found, 4 read, 2 rejected (listed in {out}/rejected.md)" in stdout
    assert f"rejected {runs / 'eval' / 'no-backbone' / 'record.json'}: missing field 'backbone'" in stdout
    assert f"rejected {runs / 'pretrain' / 'renamed-s0' / 'record.json'}: unknown field 'metrics.knn_top_1'" in stdout
    assert "rejected.md" in stdout.splitlines()[3]  # among the files written
    code, _, stderr = run_main(main, [str(runs), "--out", str(out), "--baselines", str(baselines), "--no-plots",
                                      "--strict"], capsys)
    assert code == 1 and "--strict: 2 record(s) rejected" in stderr
    # once the bad records are gone, the listing goes too and --strict passes
    (runs / "eval" / "no-backbone" / "record.json").unlink()
    (runs / "pretrain" / "renamed-s0" / "record.json").unlink()
    code, stdout, _ = run_main(main, [str(runs), "--out", str(out), "--baselines", str(baselines), "--no-plots",
                                      "--strict"], capsys)
    assert code == 0 and "records: 4 found, 4 read, 0 rejected" in stdout and not (out / "rejected.md").exists()


def test_only_rejected_records_strict_fails_and_nothing_is_written(tmp_path: Path, baselines: Path, capsys) -> None:
    _write(tmp_path / "runs" / "x" / "record.json", {**LEGACY["knn"], "kind": "probe"})
    args = [str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--baselines", str(baselines), "--strict"]
    code, stdout, _ = run_main(main, args, capsys)
    assert code == 1 and "unknown kind 'probe'" in stdout and "no usable run records" in stdout
    assert not (tmp_path / "out").exists()


def test_legacy_records_of_every_writer_make_rows(tmp_path: Path, baselines: Path) -> None:
    """Unversioned records in the shape each writer produced before the schema: all read, all linked."""
    root = tmp_path / "outputs"
    for kind, folder in (("pretrain", "pretrain/byol-s0"), ("knn", "eval/byol-s0-knn"),
                         ("linear", "eval/random-init-s0-linear"), ("detection", "detection/x")):
        _write(root / folder / "record.json", copy.deepcopy(LEGACY[kind]))
    messages: list[str] = []
    result = make_tables([root], tmp_path / "out", baselines, plots=False, warn=messages.append)
    assert (result.found, result.read, result.rejected) == (4, 4, [])
    assert set(result.tables) == {"classification", "detection", "ablation"}
    cls = (tmp_path / "out" / "classification.md").read_text()
    # one run each: the binomial SE on their 6 validation images; the linear record names no protocol (cached)
    assert "| imagefolder | knn | k=5 T=0.1 | R18 | BYOL | synthetic | 10 | 100.00 ± 0.00 (SE) | - | 1 | ours |" in cls
    assert "| imagefolder | linear-cached | 2 ep, sgd, lr 0.1 | R18 | random init | - | - | 83.33 ± 15.21 (SE) | - " \
           "| 1 | ours |" in cls
    assert "| synthetic R18-C4 300it | torchvision | R18 | BYOL | synthetic | 10 | 12.50 ±? |" in \
        (tmp_path / "out" / "detection.md").read_text()
