"""The record schemas: legacy (unversioned) records of every kind read, every writer round-trips through the
validator, and a renamed, missing or mistyped field is a RecordError naming the path and the field."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch

from rimifm.records import write_record
from rimifm.schemas import (
    SCHEMA_VERSION,
    DetectionRecord,
    KnnRecord,
    LinearRecord,
    PretrainRecord,
    RecordError,
    read_record,
    record_to_dict,
    validate_record,
)

RIM = {"branch": "online", "enabled": False, "fill": "zero", "patch_size": 0, "prob": 0.5, "ratio": 0.3}
IFM = {"alpha": 1.0, "enabled": False, "level": "backbone", "partner": "permute", "start_epoch": 0,
       "target": "feature", "weight": 1.0}
# records as the writers wrote them before `schema_version` existed (config shortened)
LEGACY = {
    "pretrain": {
        "backbone": "resnet18", "checkpoint": "outputs/pretrain/byol-s0/checkpoints/last.pth",
        "code_version": "0.1.0+abc", "config": {"METHOD": "byol", "SEED": 0}, "config_hash": "c36fbe772eeca04d",
        "dataset": {"images": 24, "name": "synthetic", "root": "datasets/synthetic"}, "device": "cpu",
        "epochs": 10, "ifm": IFM, "images_per_s": 24.0, "kind": "pretrain", "method": "byol",
        "metrics": {"base_loss": 0.5, "knn_top1": 40.0, "knn_top1_init": 33.3, "loss": 0.5, "z_std": 0.05},
        "output_dir": "outputs/pretrain/byol-s0", "peak_memory_mb": 709.6, "precision": "fp32", "rim": RIM,
        "run_id": "pretrain-byol-s0-c36fbe77", "seed": 0, "steps": 6, "wall_time_s": 3.21, "world_size": 1},
    "knn": {
        "backbone": "resnet18", "checkpoint": "outputs/pretrain/byol-s0/checkpoints/last.pth",
        "checkpoint_sha256": "ab" * 32, "cifar_stem": False, "code_version": "0.1.0+abc",
        "config": {"protocol": "knn", "k": 5}, "config_hash": "bce904405934c253", "dataset": "imagefolder",
        "ifm": {k.upper(): v for k, v in IFM.items()}, "kind": "knn", "layout": "ours", "method": "byol",
        "metrics": {"top1": 100.0, "top5": None}, "num_classes": 3, "num_train": 12, "num_val": 6,
        "protocol": {"image_size": 16, "k": 5, "temperature": 0.1}, "rim": {k.upper(): v for k, v in RIM.items()},
        "run_id": "knn-379f066bfe", "seed": 7, "source": "ours", "target": False, "wall_time_s": 0.293},
    "linear": {
        "backbone": "resnet18", "checkpoint": None, "checkpoint_sha256": None, "cifar_stem": False,
        "code_version": "0.1.0+abc", "config": {"protocol": "linear"}, "config_hash": "bd9494254157ca66",
        "dataset": "imagefolder", "ifm": None, "kind": "linear", "layout": "", "method": "random-init",
        "metrics": {"top1": 83.33333134651184, "top5": None}, "num_classes": 3, "num_train": 12, "num_val": 6,
        "protocol": {"augment": False, "batch_size": 256, "epochs": 2, "image_size": 16, "lr": 0.1,
                     "optimizer": "sgd", "weight_decay": 0.0},
        "rim": None, "run_id": "linear-3d0f510c1a", "seed": 0, "source": "random-init", "target": False,
        "wall_time_s": 0.224},
    "detection": {
        "backbone": "R18", "code_version": "0.1.0+abc", "config": {"OUTPUT_DIR": "outputs/detection/x"},
        "config_hash": "67b407ee7005fc92", "dataset": {"test": ["synthetic_test"], "train": ["synthetic_trainval"]},
        "device": "cpu", "engine": "torchvision", "eval_only": False, "finished_at": "2026-12-02T13:41:28+0000",
        "iterations": 300, "kind": "detection", "metrics": {"AP": 12.5, "AP50": 30.0, "AP75": 10.0},
        "output_dir": "outputs/detection/x", "peak_memory_mb": 711.6, "protocol": "synthetic R18-C4 300it",
        "run_id": "detection-x-67b407ee-s0", "sec_per_iter": 0.04, "seed": 0,
        "source_checkpoint": "outputs/pretrain/byol-s0/backbone.pkl", "start_iteration": 0, "wall_time_s": 12.3,
        "world_size": 1},
}
TYPES = {"pretrain": PretrainRecord, "knn": KnnRecord, "linear": LinearRecord, "detection": DetectionRecord}


@pytest.mark.parametrize("kind", sorted(LEGACY))
def test_legacy_records_read_as_version_1(kind: str) -> None:
    data = copy.deepcopy(LEGACY[kind])
    rec = validate_record(data, "runs/x/record.json")
    assert type(rec) is TYPES[kind] and rec.kind == kind and rec.schema_version == 1
    assert rec.metrics == data["metrics"] and rec.extra == {}
    # written back, a legacy record keeps every key and value; only the version is added
    assert record_to_dict(rec) == {**data, "schema_version": 1}


def test_unknown_top_level_keys_are_kept() -> None:
    data = {**LEGACY["detection"], "note": "hand-made"}
    rec = validate_record(data)
    assert rec.extra == {"note": "hand-made"} and record_to_dict(rec)["note"] == "hand-made"


def _reason(data: dict, path: str = "runs/x/record.json") -> RecordError:
    with pytest.raises(RecordError) as info:
        validate_record(data, path)
    assert info.value.path == path and str(info.value).startswith(f"{path}: ")
    return info.value


def _without(data: dict, dotted: str) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    del node[last]
    return data


@pytest.mark.parametrize("kind, dotted", [
    ("pretrain", "backbone"), ("pretrain", "rim"), ("pretrain", "dataset.name"), ("pretrain", "seed"),
    ("knn", "backbone"), ("knn", "metrics.top1"), ("knn", "protocol.k"), ("knn", "checkpoint"),
    ("linear", "dataset"), ("detection", "metrics.AP"), ("detection", "source_checkpoint"), ("detection", "engine"),
])
def test_a_missing_required_field_is_named(kind: str, dotted: str) -> None:
    err = _reason(_without(LEGACY[kind], dotted))
    assert err.field == dotted and err.reason == f"missing field '{dotted}'"


@pytest.mark.parametrize("kind, metric, renamed", [
    ("pretrain", "knn_top1", "knn_top_1"), ("knn", "top5", "top_5"), ("detection", "AP50", "ap50"),
])
def test_a_renamed_metric_is_rejected(kind: str, metric: str, renamed: str) -> None:
    data = copy.deepcopy(LEGACY[kind])
    data["metrics"][renamed] = data["metrics"].pop(metric)
    err = _reason(data)
    assert err.field == f"metrics.{renamed}" and err.reason.startswith(f"unknown field 'metrics.{renamed}'")


@pytest.mark.parametrize("kind, dotted, value, why", [
    ("pretrain", "epochs", True, "wrong type (bool: True; expected int)"),
    ("pretrain", "epochs", "10", "wrong type (str: '10'; expected int)"),
    ("knn", "metrics.top1", True, "wrong type (bool: True; expected number)"),
    ("knn", "metrics.top1", math.nan, "not a finite number (nan)"),
    ("pretrain", "metrics.loss", math.inf, "not a finite number (inf)"),
    ("detection", "metrics.AP50", "30", "wrong type (str: '30'; expected number or null)"),
    ("knn", "protocol.temperature", None, "wrong type (NoneType: None; expected number)"),
    ("linear", "protocol.augment", "yes", "wrong type (str: 'yes'; expected bool or null)"),
    ("detection", "seed", 1.5, "wrong type (float: 1.5; expected int)"),
    ("pretrain", "dataset", 3, "wrong type (int: 3; expected dict or str)"),
])
def test_a_mistyped_field_is_named(kind: str, dotted: str, value, why: str) -> None:
    data = copy.deepcopy(LEGACY[kind])
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    err = _reason(data)
    assert err.field == dotted and why in err.reason and f"'{dotted}'" in err.reason


def test_knobs_kind_and_version_checks() -> None:
    assert _reason({**LEGACY["pretrain"], "rim": {"ratio": 0.3}}).field == "rim.enabled"
    assert _reason({**LEGACY["knn"], "rim": {"RATIO": 0.3}}).reason == "field 'rim' must be a mapping with an 'enabled' key"
    assert _reason({**LEGACY["knn"], "kind": "knn_probe"}).reason.startswith("unknown kind 'knn_probe'")
    assert _reason(_without(LEGACY["knn"], "kind")).reason == "missing field 'kind'"
    assert "versions 1 to" in _reason({**LEGACY["knn"], "schema_version": SCHEMA_VERSION + 1}).reason
    assert _reason({**LEGACY["knn"], "schema_version": "1"}).field == "schema_version"
    assert _reason([1, 2]).reason == "not a JSON object (list)"  # type: ignore[arg-type]
    assert validate_record({**LEGACY["knn"], "schema_version": SCHEMA_VERSION}).schema_version == SCHEMA_VERSION


def test_read_record_turns_every_failure_into_a_record_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "record.json"
    bad.parent.mkdir()
    bad.write_text('{"kind": "knn", ')
    with pytest.raises(RecordError, match=r"record.json: not valid JSON \(Expecting"):
        read_record(bad)
    with pytest.raises(RecordError, match="unreadable"):
        read_record(tmp_path / "absent" / "record.json")
    good = write_record(tmp_path / "good" / "record.json", validate_record(LEGACY["linear"]))
    assert isinstance(read_record(good), LinearRecord)
    assert json.loads(good.read_text())["schema_version"] == SCHEMA_VERSION


def test_pretrain_writer_round_trips(tmp_path: Path) -> None:
    from pretrain.config import get_default_config
    from pretrain.training.record import pretrain_record

    cfg = get_default_config()
    cfg.RIM.ENABLED = True
    history = {"loss": 0.5, "base_loss": 0.4, "ifm_loss": 0.1, "z_std": 0.05, "knn_top1": 40.0,
               "knn_top1_init": 33.3, "train_time_s": 2.0, "train_images": 48}
    written = pretrain_record(cfg, out_dir=tmp_path / "run", checkpoint=tmp_path / "run" / "checkpoints" / "last.pth",
                              steps=6, images=24, world_size=1, device=torch.device("cpu"), precision="fp32",
                              history=history, wall_time_s=1.5, code_version="test")
    path = write_record(tmp_path / "run" / "record.json", written)
    rec = read_record(path)
    assert isinstance(rec, PretrainRecord) and rec.schema_version == SCHEMA_VERSION and rec.rim["enabled"] is True
    assert rec.metrics == {k: v for k, v in history.items() if not k.startswith("train_")}
    assert record_to_dict(rec) == json.loads(path.read_text())
    # written records are dated; a record that carries its date keeps it when written again
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", rec.finished_at) and "finished_at" not in written
    again = write_record(tmp_path / "again" / "record.json", {**written, "finished_at": "2026-01-02T03:04:05+0000"})
    assert read_record(again).finished_at == "2026-01-02T03:04:05+0000"
    # the keys of before the schema, plus the training time (the monitor's fields only when it ran)
    assert set(written) - {"schema_version", "train_time_s"} == set(LEGACY["pretrain"])
    assert written["train_time_s"] == 2.0
    assert written["dataset"]["name"] == "synthetic" and "format" not in written["dataset"]
    cfg.DATA.NAME = "Fashion-MNIST"  # a title only: the records of a known format keep its key
    assert pretrain_record(cfg, out_dir=tmp_path / "run", checkpoint=tmp_path / "run" / "checkpoints" / "last.pth",
                           steps=6, images=24, world_size=1, device=torch.device("cpu"), precision="fp32",
                           history=history, wall_time_s=1.5, code_version="test")["dataset"]["name"] == "synthetic"
    # DATA.NAME names an imagefolder run's dataset for the tables (ImageNet-100 as the published rows' key)
    cfg.DATA.DATASET, cfg.DATA.NAME = "imagefolder", "imagenet100"
    named = pretrain_record(cfg, out_dir=tmp_path / "run", checkpoint=tmp_path / "run" / "checkpoints" / "last.pth",
                            steps=6, images=24, world_size=1, device=torch.device("cpu"), precision="fp32",
                            history=history, wall_time_s=1.5, code_version="test")
    assert (named["dataset"]["name"], named["dataset"]["format"]) == ("imagenet100", "imagefolder")
    assert read_record(write_record(tmp_path / "named" / "record.json", named)).dataset["name"] == "imagenet100"


@pytest.mark.parametrize("per_dataset", [False, True])
def test_detection_writer_round_trips(tmp_path: Path, per_dataset: bool) -> None:
    from detection.engines.common import detection_record
    from detection.engines.torchvision.config import build_cfg

    tests = ["synthetic_test", "synthetic_trainval"] if per_dataset else ["synthetic_test"]
    cfg = build_cfg("synthetic_r18_c4.yaml", ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "det"),
                                              "MODEL.WEIGHTS", "backbone.pkl", "DATASETS.TEST", str(tuple(tests))])
    results = {name: {"bbox": {"AP": 12.5, "AP50": 30.0, "AP75": 10.0, "APs": 1.0}} for name in tests}
    written = detection_record(cfg, engine="torchvision", results=results, iterations=300, wall_time_s=12.0, seed=1,
                               eval_only=False, sec_per_iter=0.04, extra={"start_iteration": 100, "host": "x"})
    rec = validate_record(json.loads(json.dumps(written)), "det/record.json")
    assert isinstance(rec, DetectionRecord) and rec.metrics == {"AP": 12.5, "AP50": 30.0, "AP75": 10.0}
    assert rec.start_iteration == 100 and rec.extra == {"host": "x"}
    assert ("metrics_per_dataset" in written) is per_dataset  # only written for several test sets
    assert record_to_dict(rec) == written
    # the legacy keys; the date is stamped when the record is written (write_record)
    assert set(written) - {"schema_version", "host", "metrics_per_dataset"} == set(LEGACY["detection"]) - {"finished_at"}


@pytest.mark.parametrize("schema", [KnnRecord, LinearRecord])
def test_classification_record_round_trips(schema) -> None:
    fields = {k: v for k, v in LEGACY[schema.kind].items() if k != "kind"}
    rec = schema(**fields)
    data = record_to_dict(rec)
    assert data == {**LEGACY[schema.kind], "schema_version": SCHEMA_VERSION}
    assert validate_record(data) == rec


def test_the_code_version_is_the_one_the_process_started_with(monkeypatch) -> None:
    """A commit made while a long run goes on does not relabel the run: the version is read once a process."""
    import subprocess

    from rimifm import records

    records.code_version.cache_clear()
    try:
        first = records.code_version()
        monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(
            cmd, 0, stdout="0000later\n" if "describe" in cmd else ""))
        assert records.code_version() == first
        records.code_version.cache_clear()
        assert records.code_version().endswith("+0000later")  # what a new process would read
    finally:
        records.code_version.cache_clear()


def test_a_checkout_is_dirty_for_a_changed_code_file_not_for_a_changed_report(tmp_path, monkeypatch) -> None:
    import subprocess

    from rimifm import records

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "study.md").write_text("a")
    (tmp_path / "train.py").write_text("a")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    monkeypatch.setattr(records, "REPO_ROOT", tmp_path)

    def version() -> str:
        records.code_version.cache_clear()
        return records.code_version()

    try:
        assert "+" in version() and not version().endswith("-dirty")
        (tmp_path / "results" / "study.md").write_text("b")
        (tmp_path / "NOTES.md").write_text("untracked")
        assert not version().endswith("-dirty")
        (tmp_path / "train.py").write_text("b")
        assert version().endswith("-dirty")
    finally:
        records.code_version.cache_clear()
