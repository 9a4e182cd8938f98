"""The CPU-scale recipe's machinery on tiny IDX files: batched views, the small backbone, the online kNN on
fixed subsets with its raw-pixel anchor and learning curve, DATA.LIMIT, AdamW, and METHOD supervised under a
time budget. (Whether it learns is the study's business, not a test's.)"""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.config import load_config
from rimifm.errors import UserError
from rimifm.resnets import ARCHS, arch_metadata
from tests.helpers import make_idx_dataset, run_main

#: the shipped recipe, shrunk to seconds: narrow heads, 16-image batches
SMALL = ["DATA.BATCH_SIZE", "16", "MODEL.PROJ_HIDDEN_DIM", "32", "MODEL.PRED_HIDDEN_DIM", "32",
         "MODEL.PROJ_OUTPUT_DIM", "16", "TRAIN.KNN_BANK", "32", "TRAIN.KNN_QUERIES", "10", "TRAIN.PROGRESS", "false",
         "TRAIN.TENSORBOARD", "false", "TRAIN.LOG_PERIOD", "1"]


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    make_idx_dataset(root, train=64, test=20, classes=4)
    return root


def _run(args, capsys):
    from pretrain.training.cli import main

    return run_main(main, args, capsys, threads=1)


def test_the_recipe_on_idx_files_records_the_learning_curve(idx_root, tmp_path, capsys):
    out = tmp_path / "run"
    r = _run(["--config", "fmnist_cpu_byol.yaml", "DATA.ROOT", str(idx_root), *SMALL, "DATA.LIMIT", "48",
              "TRAIN.EPOCHS", "2", "TRAIN.KNN_PERIOD_STEPS", "2", "ONLINE_LINEAR.ENABLED", "true", "OUTPUT_DIR",
              str(out)], capsys)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "record.json").read_text())
    cfg = rec["config"]
    assert (cfg["DATA"]["VIEWS"], cfg["MODEL"]["BACKBONE"], cfg["OPTIM"]["NAME"]) == ("batch", "resnet_tiny", "adamw")
    assert rec["steps"] == 2 * 3 and rec["dataset"]["images"] == 48  # DATA.LIMIT: 48 of the 64 images
    assert rec["online_knn"] == {"k": 20, "temperature": 0.1, "bank": 32, "queries": 10}
    # every 2 steps and at each epoch's end (3 steps), once per step
    assert [p["step"] for p in rec["knn_curve"]] == [0, 2, 3, 4, 6]
    assert all(0 <= p["top1"] <= 100 and p["wall_time_s"] >= p["train_time_s"] >= 0 for p in rec["knn_curve"])
    assert rec["knn_curve"][-1]["top1"] == rec["metrics"]["knn_top1"] and rec["train_time_s"] > 0
    pixels = rec["metrics"]["knn_top1_pixels"]
    assert f"(raw pixels: {pixels:.2f}%; k=20, T=0.1, bank 32, 10 queries)" in r.stdout
    assert "kNN top-1 after 6 steps:" in r.stdout
    assert rec["online_linear"]["num_val"] == 20  # the online linear protocol on the small backbone
    ckpt = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["arch"] == arch_metadata(ARCHS["resnet_tiny"])
    assert ckpt["model"]["backbone.conv1.weight"].shape == (16, 3, 3, 3)
    # the offline protocols read it: kNN, the published linear protocol and the cached probe
    from pretrain.evaluation.cli import main as evaluate

    for protocol, extra in (("knn", ["--k", "5"]), ("linear", ["--epochs", "1"]), ("linear-cached", ["--epochs", "2"])):
        e = run_main(evaluate, [out / "checkpoints" / "last.pth", "--dataset", "idx", "--root", idx_root,
                                "--protocol", protocol, *extra, "--out", tmp_path / protocol], capsys, threads=1)
        assert e.returncode == 0, e.stderr
        rec = json.loads((tmp_path / protocol / "record.json").read_text())
        assert rec["backbone"] == "resnet_tiny" and rec["protocol"]["image_size"] == 28 and rec["num_val"] == 20


def test_supervised_trains_for_its_time_budget_with_a_schedule_that_follows_time(idx_root, tmp_path, capsys):
    out = tmp_path / "sup"
    r = _run(["--config", "fmnist_cpu_byol.yaml", "DATA.ROOT", str(idx_root), *SMALL, "METHOD", "supervised",
              "TRAIN.EPOCHS", "1000", "TRAIN.TIME_BUDGET_S", "1.5", "TRAIN.KNN_PERIOD", "0", "OUTPUT_DIR", str(out)],
             capsys)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "record.json").read_text())
    assert rec["method"] == "supervised" and 1 <= rec["steps"] < 1000 * 4  # stopped by the budget
    assert rec["train_time_s"] >= 1.5
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # the cosine followed the spent share of the budget: near its end the LR is a small part of the base LR
    assert rows[-1]["lr"] < 0.1 * rec["config"]["OPTIM"]["BASE_LR"], rows[-1]
    assert all("z_std" in row for row in rows)
    weights = torch.load(out / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert weights["head.weight"].shape == (4, 128)  # the classifier on resnet_tiny's 128 features


def test_recipe_configs_and_their_errors():
    for name in ("fmnist_cpu_byol.yaml", "fmnist_cpu_simsiam.yaml"):
        cfg = load_config(name)
        assert cfg.MODEL.BACKBONE == "resnet_tiny" and cfg.DATA.VIEWS == "batch" and cfg.DATA.IMAGE_SIZE == 28
        assert cfg.DATA.NAME == "Fashion-MNIST" and cfg.TRAIN.KNN_K == 20
    with pytest.raises(UserError, match="METHOD supervised is the labelled baseline; RIM and IFM belong"):
        load_config("fmnist_cpu_byol.yaml", ["METHOD", "supervised", "RIM.ENABLED", "true"])
    with pytest.raises(UserError, match="DATA.LIMIT = -1 must be >= 0"):
        load_config("fmnist_cpu_byol.yaml", ["DATA.LIMIT", "-1"])
    with pytest.raises(UserError, match="MODEL.BACKBONE = 'resnet_huge' is not one of"):
        load_config("fmnist_cpu_byol.yaml", ["MODEL.BACKBONE", "resnet_huge"])


def test_adamw_keeps_biases_and_norms_out_of_weight_decay():
    from pretrain.method.siamese import build_method
    from pretrain.optim import build_optimizer

    cfg = load_config("fmnist_cpu_byol.yaml", ["OPTIM.BETAS", "[0.8, 0.99]"])
    model = build_method(cfg)
    opt = build_optimizer(cfg, model, 1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    for g in opt.param_groups:
        assert g["betas"] == (0.8, 0.99)
        assert g["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in g["params"]) else cfg.OPTIM.WEIGHT_DECAY)


def test_the_random_init_baseline_is_the_backbone_a_run_of_that_seed_starts_from(idx_root):
    """The study pairs each seed's pretrained backbone with `--random-init --seed` of that seed: the same weights."""
    from pretrain.evaluation.backbones import random_backbone
    from pretrain.training.loop import PretrainRun
    from rimifm.distributed import Distributed

    cfg = load_config("fmnist_cpu_byol.yaml", ["DATA.ROOT", str(idx_root), "SEED", "3", *SMALL])
    start = PretrainRun(cfg, "fmnist_cpu_byol.yaml", Distributed("cpu")).model.backbone.state_dict()
    baseline = random_backbone("resnet_tiny", seed=3)[0].state_dict()
    assert start.keys() == baseline.keys() and all(torch.equal(start[k], baseline[k]) for k in start)
    other = random_backbone("resnet_tiny", seed=4)[0].state_dict()
    assert not torch.equal(other["conv1.weight"], start["conv1.weight"])
