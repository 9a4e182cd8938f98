"""solo-learn's online linear protocol: a classifier trained during pretraining on detached features."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.config import load_config
from pretrain.data.datasets import ImageFolderSource, Splits
from pretrain.method.siamese import build_method
from pretrain.training.monitoring import online_linear_accuracy
from tests.helpers import make_image_folder, run_main, tiny_overrides


def _tiny_model(**extra):
    pairs = ["MODEL.PROJ_HIDDEN_DIM", "32", "MODEL.PROJ_OUTPUT_DIM", "16", "MODEL.PRED_HIDDEN_DIM", "8",
             "DATA.IMAGE_SIZE", "16", "DATA.NUM_WORKERS", "0"]
    for k, v in extra.items():
        pairs += [k, str(v)]
    cfg = load_config(None, pairs)
    torch.manual_seed(0)
    model = build_method(cfg)
    model.attach_classifier(3)
    return cfg, model


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_the_classifier_sends_no_gradient_into_the_backbone(method):
    _, model = _tiny_model(METHOD=method)
    v1, v2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, -1])
    grads = []
    for lab in (None, labels):
        model.zero_grad()
        torch.manual_seed(1)
        out = model(v1, v2, labels=lab)
        out["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    without, with_ = grads
    assert "classifier.weight" not in without and with_["classifier.weight"].abs().sum() > 0
    for name, g in without.items():
        assert torch.allclose(g, with_[name], atol=1e-6), name
    assert torch.allclose(out["loss"], out["base_loss"] + out["online_linear_loss"], atol=1e-6)


def test_online_accuracy_is_the_classifier_on_clean_eval_views(tiny_data):
    cfg, model = _tiny_model()
    model.train()
    val = ImageFolderSource(tiny_data["val"], require_labels=True)
    splits = Splits(val, val, val)
    result = online_linear_accuracy(model, splits, cfg, torch.device("cpu"))
    assert model.training and model.backbone.training  # modes restored
    from pretrain.data.datasets import EvalDataset

    model.eval()
    ds = EvalDataset(val, 16, cfg.DATA.MEAN, cfg.DATA.STD)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        top1 = 100.0 * (model.classifier(model.backbone(x)).argmax(1) == y).float().mean().item()
    assert result == {"top1": pytest.approx(top1), "top5": None, "num_val": 12}


def test_clean_views_feed_the_classifier_an_unmasked_pass_that_leaves_the_bn_statistics():
    """ONLINE_LINEAR.VIEWS clean under RIM: the classifier's features are the online backbone's on the unmasked
    views (batch statistics, as in training), and that extra pass changes no running statistic; `masked` (the
    default) gives it the online branch's own features."""
    import copy

    _, model = _tiny_model(**{"RIM.ENABLED": "true"})
    model.attach_classifier(3, "clean")
    model.train()
    v1, v2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    h1, h2 = torch.randn(6, 512), torch.randn(6, 512)
    reference = copy.deepcopy(model.backbone)
    stats = ("running", "num_batches_tracked")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if k.split(".")[-1].startswith(stats)}
    f1, f2 = model.classifier_features(v1, v2, h1, h2)
    with torch.no_grad():
        torch.testing.assert_close(f1, reference(v1))
        torch.testing.assert_close(f2, reference(v2))
    after = {k: v for k, v in model.backbone.state_dict().items() if k.split(".")[-1].startswith(stats)}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not all(torch.equal(before[k], v) for k, v in reference.state_dict().items() if k in before)  # a pass would
    model.attach_classifier(3, "masked")
    f1, _ = model.classifier_features(v1, v2, h1, h2)
    assert torch.equal(f1, h1)


def test_a_local_copy_of_sync_bn_keeps_its_statistics_and_runs_alone():
    """The online validation re-estimates BN on a copy in one process: SyncBatchNorm becomes BatchNorm2d."""
    from torch import nn

    from rimifm.precise_bn import local_batch_norm

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), nn.Sequential(nn.SyncBatchNorm(4)))
    net[1].running_mean.fill_(2.0)
    net[2][0].weight.data.fill_(3.0)
    local = local_batch_norm(net)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in local.modules())
    assert torch.equal(local[1].running_mean, torch.full((4,), 2.0)) and torch.equal(local[2][0].weight, torch.full((4,), 3.0))
    local.train()(torch.randn(2, 3, 8, 8))  # a training-mode pass with no process group: SyncBatchNorm would fail


@pytest.mark.slow
def test_pretraining_records_online_linear_and_steps_the_lr_per_epoch(tiny_data, tmp_path, capsys):
    from pretrain.training.cli import main

    out = tmp_path / "run"
    r = run_main(main, tiny_overrides(tiny_data, out, **{"ONLINE_LINEAR.ENABLED": "true", "ONLINE_LINEAR.LR": "0.5",
                                                         "OPTIM.SCHEDULE_INTERVAL": "epoch", "RIM.ENABLED": "true",
                                                         "ONLINE_LINEAR.VIEWS": "clean",
                                                         "ONLINE_LINEAR.BN_IMAGES": "8"}), capsys, threads=1)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "record.json").read_text())
    ol = rec["online_linear"]
    assert ol["num_val"] == 12 and 0.0 <= ol["top1"] <= 100.0 and ol["lr"] == 0.5 and ol["dataset"] == "imagefolder"
    assert ol["views"] == "clean"  # RIM's masks kept out of the classifier, BN re-estimated before validating
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert all("online_linear_loss" in row for row in steps)
    assert rows[-1]["online_linear_top1"] == ol["top1"]
    lrs = [[row["lr"] for row in steps if row["epoch"] == e] for e in (0, 1)]
    assert len(set(lrs[0])) == 1 and len(set(lrs[1])) == 1 and lrs[0][0] != lrs[1][0]
    state = torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)["model"]
    assert state["classifier.weight"].shape == (3, 128)  # resnet_tiny's 128 features


def test_online_linear_needs_labelled_images(tmp_path, capsys):
    from pretrain.training.cli import main

    flat = make_image_folder(tmp_path / "flat", labelled=False)
    val = make_image_folder(tmp_path / "val")
    data = {"train": flat, "val": val}
    r = run_main(main, tiny_overrides(data, tmp_path / "run", **{"ONLINE_LINEAR.ENABLED": "true",
                                                                  "DATA.KNN_TRAIN": str(val)}), capsys)
    assert r.returncode == 2 and "ONLINE_LINEAR.ENABLED needs labelled pretraining images" in r.stderr
