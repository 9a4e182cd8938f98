"""The CI-sized demo: the whole chain (data, four pretrainings, kNN and linear, convert, detection, tables)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from demo import runner
from demo.study import opts_tag
from tests.helpers import REPO, make_idx_dataset, run_main


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    """The quick demo on the synthetic set, unless `extra` names a Fashion-MNIST folder (--fmnist)."""
    where = [] if "--fmnist" in extra else ["--no-fmnist"]
    return ["--quick", "--engine", "torchvision", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs"),
            "--tables", str(tmp_path / "tables"), "--scenes", str(tmp_path / "scenes"), *where, *extra]


def _demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """The demo as a user starts it: python tools/demo.py (a child process)."""
    cmd = [sys.executable, "tools/demo.py", *_argv(tmp_path, *extra)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _demo_here(tmp_path: Path, capsys, *extra: str):
    """The same, run by the demo's main() in this process (no second start-up of torch)."""
    return run_main(runner.main, _argv(tmp_path, *extra), capsys)


@pytest.mark.slow
def test_quick_demo_runs_the_whole_chain_and_reuses_finished_steps(tmp_path, capsys):
    """With Fashion-MNIST files (tiny ones here): its classification study, then detection on scenes made of them."""
    fmnist = tmp_path / "fmnist"
    make_idx_dataset(fmnist, train=120, test=30, classes=4)
    proc = _demo(tmp_path, "--fmnist", str(fmnist))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs"
    records = {p.parent.relative_to(runs).as_posix(): json.loads(p.read_text()) for p in runs.rglob("record.json")}
    kinds = sorted(r["kind"] for r in records.values())
    # 2 pretrainings on Fashion-MNIST (base, +RIM+IFM) and kNN of each, of a random backbone and of the raw pixels;
    # 3 detection runs on the scenes (base, +RIM+IFM, random init), and no synthetic set
    assert kinds.count("pretrain") == 2 and kinds.count("knn") == 4 and kinds.count("linear") == 0
    assert not (tmp_path / "data").exists() and (tmp_path / "scenes" / "meta.json").is_file()
    assert kinds.count("detection") == 3
    pre = {k: r for k, r in records.items() if r["kind"] == "pretrain" and r["dataset"]["name"] == "idx"}
    switches = sorted((r["rim"]["enabled"], r["ifm"]["enabled"]) for r in pre.values())
    assert switches == [(False, False), (True, True)]
    assert all(r["backbone"] == "resnet_tiny" and r["dataset"]["images"] == 96 for r in pre.values())  # DATA.LIMIT
    knn = [r for r in records.values() if r["kind"] == "knn"]
    assert all(r["dataset"] == "idx" and r["num_train"] == 120 and r["num_val"] == 30 for r in knn)
    det = [r for r in records.values() if r["kind"] == "detection"]
    assert sorted(bool(r["source_checkpoint"]) for r in det) == [False, True, True]
    assert all(r["engine"] == "torchvision" and "AP50" in r["metrics"] and r["metrics_se"] for r in det)
    assert all(r["dataset"]["test"] == ["fmnist_scenes_test"] for r in det)

    tables = tmp_path / "tables"
    study = (tables / "fmnist" / "study.md").read_text()
    assert study.startswith("# Fashion-MNIST · ResNet-tiny · fmnist_cpu_byol")
    for row in ("BYOL", "BYOL+RIM+IFM", "random init", "raw pixels"):
        assert f"| {row} |" in study, f"{row} row missing from the study table:\n{study}"
    assert "1 seed" in study and "(SE)" in study  # one seed: standard errors, no test
    assert "## Detection transfer: fmnist_scenes.yaml" in study and "BYOL vs random init: AP50" in study
    for name in ("classification", "detection", "ablation"):
        for ext in ("md", "csv", "tex"):
            assert (tables / f"{name}.{ext}").is_file(), f"{name}.{ext} missing"
    detection = (tables / "detection.md").read_text()
    for method in ("random init", "BYOL", "BYOL+RIM+IFM"):
        assert f"| {method} |" in detection, f"{method} row missing from the detection table:\n{detection}"
    # the end of the output names the tables and says what the numbers show
    assert "demo finished" in proc.stdout and str(tables) in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("note: The classification half runs on real Fashion-MNIST")
    assert "| BYOL+RIM+IFM |" in proc.stdout

    # a second run reuses every finished step and regenerates the same tables
    before = {p.name: p.read_bytes() for p in tables.rglob("*.*")}
    again = _demo_here(tmp_path, capsys, "--fmnist", str(fmnist))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("(running)") == 3, again.stdout  # the scenes (reused by the generator), report, tables
    assert again.stdout.count("done already, reused") >= 2 + 4 + 2 + 3
    assert {p.name: p.read_bytes() for p in tables.rglob("*.*")} == before


def test_demo_rejects_bad_settings(tmp_path, capsys):
    proc = _demo_here(tmp_path, capsys, "--epochs", "0")
    assert proc.returncode == 2
    assert "--epochs must be >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_refuses_runs_made_from_other_data(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "demo.json").write_text(json.dumps({"data": str(tmp_path / "elsewhere"), "quick": True}))
    proc = _demo_here(tmp_path, capsys)
    assert proc.returncode == 2
    assert "holds demo runs made with other settings" in proc.stderr and "another --out" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["demo.json"]  # nothing was run into it


@pytest.mark.parametrize("stamped", ["other generator version", "before versions were stamped"])
def test_demo_refuses_runs_made_from_another_version_of_the_same_data_folder(tmp_path, stamped, capsys):
    from synthetic.generator import generate

    data = generate(tmp_path / "data", pretrain_images=48, cls_train_per_class=4, cls_val_per_class=2,
                    det_trainval=6, det_test=4, image_size=32, det_image_size=96)
    meta = json.loads((data / "meta.json").read_text())
    runs = tmp_path / "runs"
    (runs / "synthetic" / "e1" / "pretrain" / "byol-s0").mkdir(parents=True)
    stamp = {"data": str(data.resolve()), "quick": True}
    if stamped == "other generator version":
        stamp["dataset"] = {"version": meta["version"] - 1, "seed": meta["seed"], "sizes": meta["sizes"]}
    (runs / "demo.json").write_text(json.dumps(stamp))
    proc = _demo_here(tmp_path, capsys)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "other settings or other data" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((runs / "demo.json").read_text()) == stamp
    assert [p.name for p in (runs / "synthetic" / "e1" / "pretrain").iterdir()] == ["byol-s0"]


def test_runs_folder_stamp_follows_the_data_through_deletion_and_regeneration(tmp_path):
    import shutil

    from demo import runner as demo
    from rimifm.errors import UserError
    from synthetic.generator import generate

    s = demo.Settings(data=tmp_path / "data", out=tmp_path / "runs", tables=tmp_path / "tables", seeds=[0],
                      epochs=1, det_config="synthetic_r18_c4.yaml", det_iters=4, engine="auto", linear_epochs=1,
                      quick=True)
    stamp = s.out / "demo.json"
    sizes = dict(pretrain_images=2, cls_train_per_class=1, cls_val_per_class=1, det_trainval=1, det_test=1,
                 image_size=16, det_image_size=32)
    demo._check_out_folder(s)  # before the data exists: folder and --quick only
    assert "dataset" not in json.loads(stamp.read_text())
    generate(s.data, **sizes)
    demo._check_out_folder(s)  # after the data step: its version, seed and sizes too
    recorded = json.loads(stamp.read_text())
    assert recorded["dataset"]["seed"] == 0 and recorded["dataset"]["sizes"]["pretrain_images"] == 2
    (s.out / "pretrain" / "byol-e1-s0").mkdir(parents=True)
    shutil.rmtree(s.data)  # deleted and made again with the same settings: the runs stay usable
    demo._check_out_folder(s)
    generate(s.data, **sizes)
    demo._check_out_folder(s)
    assert json.loads(stamp.read_text()) == recorded
    generate(s.data, seed=1, force=True, **sizes)  # other data in the same folder: refused
    with pytest.raises(UserError, match="other settings or other data"):
        demo._check_out_folder(s)
    assert json.loads(stamp.read_text()) == recorded


OPTS = ("MODEL.CIFAR_STEM", "true", "TRAIN.MAX_STEPS", "1", "TRAIN.KNN_PERIOD", "0", "MODEL.BACKBONE", "resnet_tiny")


@pytest.mark.slow
def test_demo_without_detection_passes_pretraining_overrides_to_every_run(tmp_path, capsys):
    proc = _demo_here(tmp_path, capsys, "--no-detection", "--pretrain-opts", *OPTS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs"
    records = [json.loads(p.read_text()) for p in runs.rglob("record.json")]
    kinds = sorted(r["kind"] for r in records)
    assert kinds == ["knn"] * 5 + ["linear"] * 5 + ["pretrain"] * 4  # no convert, no fine-tune
    assert not (runs / "detection").exists() and not list(runs.rglob("*.pkl"))
    pre = [r for r in records if r["kind"] == "pretrain"]
    assert all(r["config"]["MODEL"]["CIFAR_STEM"] is True for r in pre)
    # the random backbone it is compared with has the same stem, and the runs' folder names the overrides
    random_init = [r for r in records if r["kind"] in ("knn", "linear") and r["source"] == "random-init"]
    assert len(random_init) == 2 and all(r["cifar_stem"] is True for r in random_init)
    assert {r["backbone"] for r in records} == {"resnet_tiny"}  # the backbone override reaches every run
    assert [p.name for p in (runs / "synthetic").iterdir()] == [f"e1-o{opts_tag(OPTS)[2:]}"]
    assert "| random init |" in (tmp_path / "tables" / "classification.md").read_text()


def test_demo_rejects_an_odd_number_of_pretraining_overrides(tmp_path, capsys):
    proc = _demo_here(tmp_path, capsys, "--pretrain-opts", "MODEL.CIFAR_STEM")
    assert proc.returncode == 2
    assert "--pretrain-opts takes KEY VALUE pairs" in proc.stderr
    assert "Traceback" not in proc.stderr
