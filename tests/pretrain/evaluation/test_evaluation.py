"""Classification evaluation: hand-checked kNN votes, a linear probe that learns, the CLI end to end."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pretrain.evaluation.accuracy import topk_accuracy
from pretrain.evaluation.knn import knn_evaluate, knn_predict
from pretrain.evaluation.linear import train_linear
from rimifm.errors import UserError
from rimifm.schemas import SCHEMA_VERSION, validate_record
from tests.helpers import REPO, make_image_folder, run_main

TOOL = REPO / "tools" / "eval_classification.py"


@pytest.fixture
def cli(capsys):
    """tools/eval_classification.py ARGS run by its main() in this process (one thread, like the child
    process of _cli): saves a Python and torch start-up per call."""
    from pretrain.evaluation.cli import main

    return lambda *args: run_main(main, list(args), capsys, threads=1)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The tool by path in a child process, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: one thread avoids contention on shared cores
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300, env=env)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    make_image_folder(root / "train", per_class=6, seed=0)
    make_image_folder(root / "val", per_class=3, seed=1)
    return root


@pytest.fixture(scope="module")
def fake_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints in our format for BYOL (with an EMA target) and SimSiam (none), without training."""
    from pretrain.config import get_default_config
    from pretrain.method.siamese import build_method
    from pretrain.training.checkpoint import FORMAT

    out = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for method in ("byol", "simsiam"):
        cfg = get_default_config()
        cfg.METHOD, cfg.SEED, cfg.RIM.ENABLED, cfg.DATA.IMAGE_SIZE = method, 7, True, 16
        cfg.MODEL.PROJ_HIDDEN_DIM, cfg.MODEL.PROJ_OUTPUT_DIM, cfg.MODEL.PRED_HIDDEN_DIM = 32, 16, 32
        torch.manual_seed(0)
        model = build_method(cfg)
        paths[method] = out / f"{method}_last.pth"
        torch.save({"format": FORMAT, "method": method, "backbone": "resnet18", "cifar_stem": False,
                    "model": model.state_dict(), "config": cfg.dump()}, paths[method])
    return paths


# ----------------------------------------------------------------------------- library


def test_knn_weighted_vote_by_hand():
    """Query at angle 0; one class-0 neighbour very close, two class-1 neighbours a bit further."""
    angles = torch.tensor([0.3, 0.35, 0.4, 2.5])  # radians from the query
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[1.0, 0.0]])
    qlab = torch.tensor([0])
    # k=1: nearest is class 0
    assert knn_evaluate(train, labels, query, qlab, 2, k=1, temperature=0.1)["top1"] == 100.0
    # k=3, T=0.1: class 1 gets exp(cos .35/.1) + exp(cos .4/.1) > exp(cos .3/.1)
    s0 = math.exp(math.cos(0.3) / 0.1)
    s1 = math.exp(math.cos(0.35) / 0.1) + math.exp(math.cos(0.4) / 0.1)
    assert s1 > s0
    scores = knn_predict(train, labels, query, 2, k=3, temperature=0.1)
    assert torch.allclose(scores[0], torch.tensor([s0, s1]), rtol=1e-5)
    assert knn_evaluate(train, labels, query, qlab, 2, k=3, temperature=0.1)["top1"] == 0.0
    # k=3 with a small T: the closest neighbour's weight dominates again
    t = 0.01
    assert math.exp(math.cos(0.3) / t) > math.exp(math.cos(0.35) / t) + math.exp(math.cos(0.4) / t)
    assert knn_evaluate(train, labels, query, qlab, 2, k=3, temperature=t)["top1"] == 100.0


def test_topk_accuracy_and_top5_only_with_5_classes():
    scores = torch.tensor([[0.9, 0.5, 0.1, 0.0, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    labels = torch.tensor([1, 0])
    assert topk_accuracy(scores, labels, 1) == 0.0
    assert topk_accuracy(scores, labels, 2) == 50.0
    assert topk_accuracy(scores, labels, 6) == 100.0
    feats = F.normalize(torch.randn(10, 4), dim=1)
    assert knn_evaluate(feats, torch.arange(10) % 3, feats, torch.arange(10) % 3, 3, k=1)["top5"] is None
    assert knn_evaluate(feats, torch.arange(10) % 5, feats, torch.arange(10) % 5, 5, k=1)["top5"] == 100.0


def test_linear_probe_learns_separable_problem():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=gen) * 3
    labels = torch.arange(200) % 4
    feats = centres[labels] + 0.3 * torch.randn(200, 8, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids contention on shared cores
    try:
        _check_probe(feats, labels)
    finally:
        torch.set_num_threads(threads)


def _check_probe(feats: torch.Tensor, labels: torch.Tensor) -> None:
    for opt, lr in (("sgd", 0.5), ("lars", 20.0)):  # LARS steps are eta=0.001 times the weight norm
        head = train_linear(feats[:160], labels[:160], 4, epochs=30, lr=lr, optimizer=opt, batch_size=32)
        with torch.no_grad():
            acc = topk_accuracy(head(feats[160:]), labels[160:], 1)
        assert acc == 100.0, opt


# ----------------------------------------------------------------------------- CLI


def _record(out: Path) -> dict:
    """The record.json the CLI wrote; it must pass the schema the tables read it with."""
    rec = json.loads((out / "record.json").read_text())
    typed = validate_record(rec, out / "record.json")
    assert typed.kind == rec["kind"] and rec["schema_version"] == SCHEMA_VERSION
    for key in ("run_id", "kind", "method", "rim", "ifm", "backbone", "seed", "dataset", "protocol", "metrics",
                "checkpoint", "config", "config_hash", "wall_time_s", "code_version"):
        assert key in rec, key
    assert len(rec["config_hash"]) == 16
    return rec


def test_cli_random_init_knn_and_linear_with_cache(colour_data, tmp_path, cli):
    common = ["none", "--random-init", "--backbone", "resnet18", "--dataset", "imagefolder", "--root", colour_data,
              "--image-size", "16",
              "--device", "cpu", "--cache-dir", tmp_path / "cache"]
    r = cli(*common, "--protocol", "knn", "--k", "5", "--out", tmp_path / "knn")
    assert r.returncode == 0, r.stderr
    assert "features: train computed" in r.stdout and "kNN top-1" in r.stdout and "record: " in r.stdout
    assert "18 train / 9 val images" in r.stdout
    rec = _record(tmp_path / "knn")
    assert rec["kind"] == "knn" and rec["method"] == "random-init" and rec["protocol"]["k"] == 5
    assert rec["metrics"]["top1"] > 60.0  # colour classes; chance is 33%
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 2
    mtimes = [p.stat().st_mtime_ns for p in cached]

    r = cli(*common, "--protocol", "linear-cached", "--epochs", "30", "--lr", "0.5", "--out", tmp_path / "lin",
            "--dataset-name", "imagenet100")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("loaded from cache") == 2 and "features: train computed" not in r.stdout
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    rec = _record(tmp_path / "lin")
    assert rec["kind"] == "linear" and rec["metrics"]["top1"] > 60.0 and rec["metrics"]["top5"] is None
    assert rec["protocol"]["name"] == "linear-cached"
    assert rec["dataset"] == "imagenet100" and _record(tmp_path / "knn")["dataset"] == "imagefolder"  # --dataset-name
    assert rec["config_hash"] != _record(tmp_path / "knn")["config_hash"]

    # the published protocol: solo-learn's recipe (the imagefolder default is MoCo's), shortened -> "-modified"
    r = cli(*common, "--protocol", "linear", "--recipe", "solo-learn", "--epochs", "2", "--batch-size", "6",
            "--out", tmp_path / "std")
    assert r.returncode == 0, r.stderr
    assert "recipe solo-learn-modified" in r.stdout and "loaded from cache" not in r.stdout
    proto = _record(tmp_path / "std")["protocol"]
    assert proto["name"] == "linear" and proto["recipe"] == "solo-learn-modified" and proto["epochs"] == 2
    assert proto["report"] == "last" and "best_epoch" not in _record(tmp_path / "std")["metrics"]
    assert proto["schedule"] == "step" and proto["milestones"] == [60, 80] and "solo-learn" in proto["source"]


def test_linear_recipes_equal_their_sources():
    """Transcribed from the sources each recipe cites (see their `source`)."""
    from pretrain.evaluation.recipes import RECIPES, resolve_recipe, schedule_factor

    moco, simsiam, solo = RECIPES["moco"], RECIPES["simsiam"], RECIPES["solo-learn"]
    # MoCo main_lincls.py: SGD lr 30 (not scaled), batch 256, wd 0, 100 epochs, x0.1 at 60 and 80, N(0, 0.01)
    assert (moco.optimizer, moco.lr, moco.scale_lr, moco.batch_size, moco.weight_decay, moco.epochs,
            moco.milestones, moco.init_std) == ("sgd", 30.0, False, 256, 0.0, 100, (60, 80), 0.01)
    assert [schedule_factor(moco, e) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    # SimSiam main_lincls.py --lars: LARC, lr 0.1 x 4096/256, wd 0, 90 epochs, cosine per epoch, N(0, 0.01)
    assert (simsiam.optimizer, simsiam.lr, simsiam.scale_lr, simsiam.batch_size, simsiam.weight_decay,
            simsiam.epochs, simsiam.schedule, simsiam.init_std) == ("lars", 0.1, True, 4096, 0.0, 90, "cosine-epoch", 0.01)
    assert schedule_factor(simsiam, 45) == pytest.approx(0.5)
    # solo-learn's CIFAR tutorial: SGD lr 0.1 (x batch/256), batch 128, wd 0, 100 epochs, steps 60/80
    assert (solo.optimizer, solo.lr, solo.scale_lr, solo.batch_size, solo.weight_decay, solo.epochs,
            solo.milestones) == ("sgd", 0.1, True, 128, 0.0, 100, (60, 80))
    assert resolve_recipe({"dataset": "cifar10"})[1] == "solo-learn"
    assert resolve_recipe({"dataset": "imagefolder"})[1] == "moco"
    assert resolve_recipe({"dataset": "imagefolder", "lr": 30.0})[1] == "moco"  # the recipe's own value
    assert resolve_recipe({"dataset": "imagefolder", "epochs": 5})[1] == "moco-modified"
    # solo-learn scripts/linear/imagenet-100/byol.yaml @ 9187ea3: sgd, batch_size 256, lr 0.3 (x batch/256 in
    # solo/args/linear.py), weight_decay 0, max_epochs 100, step scheduler lr_decay_steps [60, 80]
    i100 = RECIPES["solo-learn-imagenet100"]
    assert (i100.optimizer, i100.lr, i100.scale_lr, i100.batch_size, i100.weight_decay, i100.epochs,
            i100.milestones, i100.report) == ("sgd", 0.3, True, 256, 0.0, 100, (60, 80), "last")
    # which epoch is reported: MoCo's main_lincls.py (moco @ 7397dfe) and SimSiam's (simsiam @ a7bc177) keep
    # `best_acc1 = max(acc1, best_acc1)` over the per-epoch validations; solo-learn reports its last epoch
    assert (moco.report, simsiam.report, solo.report) == ("best", "best", "last")
    assert resolve_recipe({"dataset": "imagefolder", "report": "last"}) == (replace(moco, report="last"), "moco")
    with pytest.raises(UserError, match="unknown --report 'max'"):
        resolve_recipe({"dataset": "imagefolder", "report": "max"})
    # an imagefolder run named imagenet100 gets solo-learn's ImageNet-100 recipe, as its published rows used
    assert resolve_recipe({"dataset": "imagefolder", "dataset_name": "imagenet100"})[1] == "solo-learn-imagenet100"
    from pretrain.evaluation.run import _check_options

    with pytest.raises(UserError, match="--report chooses the reported epoch of --protocol linear; knn"):
        _check_options({"protocol": "knn", "report": "best"})


def test_a_best_epoch_recipe_reports_its_best_validation_epoch(monkeypatch, tmp_path):
    """--report best: the best of the per-epoch validations is the reported top-1, with its epoch and the last
    epoch's top-1 beside it; last reports the end of training."""
    import torch.nn as nn

    from pretrain.evaluation import run as run_module
    from pretrain.evaluation.datasets import EvalSplits
    from pretrain.evaluation.recipes import RECIPES

    val = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    heads = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])]  # right, then wrong

    def fake_train(backbone, dataset_for_epoch, dim, classes, recipe, seed, workers, device, after_epoch=None):
        head = nn.Linear(2, 2, bias=False)
        for epoch, w in enumerate(heads):
            head.weight.data.copy_(w)
            if after_epoch is not None:
                after_epoch(epoch, head)
        return head

    monkeypatch.setattr(run_module, "train_linear_recipe", fake_train)
    monkeypatch.setattr(run_module, "extract_features", lambda *a, **k: (val, labels))
    splits = EvalSplits(train=[], val=[], num_classes=2, name="x", identity="x")
    src = type("Src", (), {"mean": (0.5,) * 3, "std": (0.5,) * 3})()
    args = {"dataset": "imagefolder", "recipe": "moco"}
    metrics, settings, n = run_module._recipe_probe(args, None, src, splits, 8, torch.device("cpu"), lambda m: None)
    assert metrics["top1"] == 100.0 and metrics["best_epoch"] == 1.0 and metrics["top1_last"] == 0.0
    assert settings["report"] == "best" and n == 4 and RECIPES["moco"].epochs == 100
    metrics, settings, _ = run_module._recipe_probe({**args, "report": "last"}, None, src, splits, 8,
                                                    torch.device("cpu"), lambda m: None)
    assert metrics["top1"] == 0.0 and "best_epoch" not in metrics and settings["report"] == "last"


def test_recompute_bn_gives_the_clean_batch_statistics():
    """Precise BN: after re-estimation, bn1's running mean is the mean of conv1's output over the images."""
    from torch.utils.data import TensorDataset

    from pretrain.evaluation.recipes import recompute_bn
    from pretrain.method.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone("resnet18", cifar_stem=True).eval()
    net.bn1.running_mean.fill_(100.0)
    x = torch.rand(12, 3, 16, 16)
    n = recompute_bn(net, TensorDataset(x, torch.zeros(12)), images=100, batch_size=12, workers=0,
                     device=torch.device("cpu"))
    assert n == 12 and not net.training and net.bn1.momentum == 0.1
    with torch.no_grad():
        want = net.conv1(x).mean(dim=(0, 2, 3))
    assert torch.allclose(net.bn1.running_mean, want, atol=1e-5)


def test_cli_recompute_bn_is_recorded_and_keys_the_cache(colour_data, fake_checkpoints, tmp_path, cli):
    common = [fake_checkpoints["byol"], "--dataset", "imagefolder", "--root", colour_data, "--protocol", "knn",
              "--k", "3", "--device", "cpu", "--cache-dir", tmp_path / "cache"]
    assert cli(*common, "--out", tmp_path / "plain").returncode == 0
    r = cli(*common, "--recompute-bn", "--recompute-bn-images", "10", "--out", tmp_path / "bn")
    assert r.returncode == 0, r.stderr
    assert "re-estimated on 10 clean training images" in r.stdout and "loaded from cache" not in r.stdout
    assert _record(tmp_path / "bn")["recompute_bn"] == {"images": 10}
    assert "recompute_bn" not in _record(tmp_path / "plain")


def test_cli_our_checkpoint_online_and_target(colour_data, fake_checkpoints, tmp_path, cli):
    ck = fake_checkpoints["byol"]
    common = [ck, "--dataset", "imagefolder", "--train-dir", colour_data / "train", "--val-dir",
              colour_data / "val", "--protocol", "knn", "--k", "3", "--device", "cpu"]
    r = cli(*common, "--out", tmp_path / "online")
    assert r.returncode == 0, r.stderr
    rec = _record(tmp_path / "online")
    assert rec["method"] == "byol" and rec["seed"] == 7 and rec["rim"]["ENABLED"] is True
    assert rec["backbone"] == "resnet18" and rec["protocol"]["image_size"] == 16  # from the checkpoint config
    assert rec["checkpoint"] == str(ck) and rec["target"] is False
    r = cli(*common, "--target", "--out", tmp_path / "target")
    assert r.returncode == 0, r.stderr
    assert _record(tmp_path / "target")["target"] is True
    # the second call reused nothing across branches (different cache keys), and a repeat reuses its cache
    r = cli(*common, "--target", "--out", tmp_path / "target")
    assert r.returncode == 0 and r.stdout.count("loaded from cache") == 2


def test_cli_third_party_layout(colour_data, tmp_path, cli):
    """A MoCo-style checkpoint (module.encoder_q. prefix, with fc) loads through convert.py's detection."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    ck = tmp_path / "moco.pth.tar"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}, "epoch": 1}, ck)
    r = cli(ck, "--dataset", "imagefolder", "--root", colour_data, "--protocol", "knn", "--image-size", "16",
             "--device", "cpu", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    rec = _record(tmp_path / "o")
    assert rec["method"] == "external" and "MoCo" in rec["layout"]


@pytest.mark.parametrize("case", ["missing_ckpt", "unknown_layout", "missing_data", "simsiam_target",
                                  "zero_epochs", "no_checkpoint", "bad_option", "random_init_without_backbone"])
def test_cli_bad_inputs(case, colour_data, fake_checkpoints, tmp_path, monkeypatch, capsys):
    """Run in-process through the script's __main__ (run_cli): exit 2, one `error:` line, no traceback."""
    bad = tmp_path / "bad.pth"
    torch.save({"weights": {"foo.weight": torch.zeros(2)}}, bad)
    base = ["--dataset", "imagefolder", "--root", colour_data, "--protocol", "knn", "--device", "cpu",
            "--out", tmp_path / "o"]
    args = {
        "missing_ckpt": [tmp_path / "nope.pth", *base],
        "unknown_layout": [bad, *base],
        "missing_data": [fake_checkpoints["byol"], "--dataset", "imagefolder", "--root", tmp_path / "absent",
                         "--protocol", "knn", "--out", tmp_path / "o"],
        "simsiam_target": [fake_checkpoints["simsiam"], *base, "--target"],
        "zero_epochs": ["none", "--random-init", *base[:-4], "--protocol", "linear", "--epochs", "0"],
        "no_checkpoint": ["none", *base],
        "bad_option": ["none", "--random-init", *base, "--k", "many"],
        "random_init_without_backbone": ["none", "--random-init", *base],
    }[case]
    monkeypatch.setattr(sys, "argv", [str(TOOL), *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(TOOL), run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "record.json").exists()


def test_cli_bad_input_subprocess(tmp_path):
    r = _cli(tmp_path / "nope.pth", "--dataset", "synthetic", "--root", tmp_path, "--protocol", "knn")
    assert r.returncode == 2 and r.stderr.startswith("error: checkpoint") and "Traceback" not in r.stderr


def test_load_backbone_matches_checkpoint_weights(fake_checkpoints, tmp_path):
    """Online / target branches load bit-exact, and a detectron2 .pkl of the same branch gives the same net."""
    from detection.convert import convert_file
    from pretrain.evaluation.backbones import load_backbone

    ck = fake_checkpoints["byol"]
    model = torch.load(ck, weights_only=True)["model"]
    for target, prefix in ((False, "backbone."), (True, "target_backbone.")):
        net, src = load_backbone(ck, target=target)
        assert src.kind == "ours" and src.method == "byol" and src.seed == 7
        for k, v in net.state_dict().items():
            assert torch.equal(v, model[prefix + k]), k
    convert_file(ck, tmp_path / "byol.pkl")
    from_pkl, src = load_backbone(tmp_path / "byol.pkl")
    online, _ = load_backbone(ck)
    assert src.kind == "external" and src.layout == "detectron2 pickle"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(from_pkl.eval()(x), online.eval()(x))


def test_default_output_folder_keeps_runs_apart():
    from pretrain.evaluation.run import default_out_dir

    a = default_out_dir({"checkpoint": "outputs/pretrain/base-s0/checkpoints/last.pth", "protocol": "knn",
                         "dataset": "synthetic"})
    b = default_out_dir({"checkpoint": "outputs/pretrain/rim-s0/checkpoints/last.pth", "protocol": "knn",
                         "dataset": "synthetic"})
    c = default_out_dir({"checkpoint": "outputs/pretrain/rim-s0/checkpoints/epoch_0005.pth", "protocol": "knn",
                         "dataset": "synthetic", "target": True})
    assert a.name == "base-s0-knn-synthetic" and b.name == "rim-s0-knn-synthetic"
    assert c.name == "rim-s0-epoch_0005-target-knn-synthetic"
