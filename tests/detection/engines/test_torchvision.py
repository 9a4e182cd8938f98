"""The torchvision engine: config reading, model structure, converted weights, training, eval-only, resume.

Runs without detectron2 (CPU, tiny images); the synthetic detection set is generated per module.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from detection.engines.torchvision import engine as tv
from detection.engines.torchvision.checkpoint import load_backbone_pkl
from detection.engines.torchvision.config import build_cfg
from detection.engines.torchvision.data import TrainMapper, batch_plan, load_train_dicts, resized_shape
from detection.engines.torchvision.modeling import backbone_targets, build_model
from detection.engines.torchvision.norms import NaiveSyncBatchNorm2d
from detection.engines.torchvision.solver import build_optimizer, lr_factor
from rimifm.d2_pkl import save_d2_pkl
from rimifm.errors import UserError
from rimifm.resnet_weights import convert_checkpoint
from tests.helpers import REPO, converted_resnet_pkl

#: overrides that make the synthetic configs tiny: 64-px images, narrow heads, few RoIs
TINY = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32", "SOLVER.IMS_PER_BATCH", "2",
        "TEST.PRECISE_BN.NUM_ITER", "2", "SOLVER.WARMUP_ITERS", "1"]
# the CPU-scale ResNet (resnet_tiny's layout) for the end-to-end runs: a checkpoint of a few MB where R18-FPN's
# is over 100 MB (CI machines can be short of disk)
SMALL = ["MODEL.RESNETS.DEPTH", "10", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
         "RIMIFM.STEM", "small"]


def _cfg(name: str, tmp_path: Path, *opts: str):
    return build_cfg(name, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path), *opts])


def _pkl(tmp_path: Path, arch: str) -> tuple[Path, dict[str, torch.Tensor]]:
    path, _, state = converted_resnet_pkl(tmp_path, arch)
    return path, state


def _args(cfg_name: str, opts: list[str], **kw) -> argparse.Namespace:
    base = {"config": cfg_name, "opts": opts, "eval_only": False, "resume": False, "num_gpus": 1,
            "num_machines": 1, "machine_rank": 0, "dist_url": "auto", "engine": "torchvision"}
    return argparse.Namespace(**{**base, **kw})


# ----------------------------------------------------------------------------- config


def test_shipped_configs_read_without_detectron2(tmp_path: Path) -> None:
    for name in ("voc_r50.yaml", "coco_r50_c4_1x.yaml", "coco_r50_fpn_1x.yaml", "synthetic_r18_c4.yaml",
                 "synthetic_r18_fpn.yaml"):
        cfg = _cfg(name, tmp_path)
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False or cfg.MODEL.RESNETS.DEPTH < 50
    cfg = build_cfg("synthetic_r18_fpn.yaml", ["MODEL.WEIGHTS", "/x/byol_r18.pkl"])
    assert cfg.OUTPUT_DIR == str(Path("outputs") / "detection" / "synthetic_r18_fpn-byol_r18")
    assert cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 4  # inert keys of the FPN base are read, not refused


def test_unknown_key_and_unsupported_values_are_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"Non-existent.*MODEL\.NOPE"):
        _cfg("voc_r50.yaml", tmp_path, "MODEL.NOPE", "1")
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "{}"\nSOLVER:\n  NOT_A_KEY: 3\n'.format(
        REPO / "detection" / "configs" / "Base-RCNN-C4-BN.yaml"))
    with pytest.raises(UserError, match=r"bad.yaml: .*SOLVER\.NOT_A_KEY"):
        build_cfg(bad)
    with pytest.raises(UserError) as exc:
        _cfg("voc_r50.yaml", tmp_path, "MODEL.MASK_ON", "True", "MODEL.KEYPOINT_ON", "True",
             "MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.ROI_HEADS.NAME", "CascadeROIHeads",
             "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]", "MODEL.RESNETS.STRIDE_IN_1X1", "True",
             "MODEL.RESNETS.NORM", "LN", "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR")
    msg = str(exc.value)
    assert "cannot honour 8 config value(s)" in msg
    for key in ("MODEL.MASK_ON", "MODEL.KEYPOINT_ON", "MODEL.META_ARCHITECTURE", "MODEL.ROI_HEADS.NAME",
                "DEFORM_ON_PER_STAGE", "STRIDE_IN_1X1", "MODEL.RESNETS.NORM", "LR_SCHEDULER_NAME"):
        assert key in msg


# ----------------------------------------------------------------------------- model structure


def test_r50_c4_structure_with_extra_norm(tmp_path: Path) -> None:
    model = build_model(_cfg("voc_r50.yaml", tmp_path))
    res5 = model.roi_heads.box_head.res5
    assert [type(m).__name__ for m in res5] == ["Bottleneck"] * 3 + ["NaiveSyncBatchNorm2d"]
    assert res5.norm.num_features == 2048
    assert isinstance(model.backbone.body.bn1, NaiveSyncBatchNorm2d)
    assert not hasattr(model.backbone.body, "layer4")  # res5 lives in the box head only
    assert all(p.requires_grad for p in model.parameters())  # FREEZE_AT 0
    assert model.roi_heads.box_predictor.cls_score.out_features == 21
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 80
    assert model.roi_heads.pooler.resolution == 14 and model.rpn.anchors.num_anchors == [15]
    plain = build_model(_cfg("voc_r50.yaml", tmp_path, "MODEL.ROI_HEADS.NAME", "Res5ROIHeads"))
    assert not hasattr(plain.roi_heads.box_head.res5, "norm")


def test_r18_fpn_structure_norms_and_freeze_at(tmp_path: Path) -> None:
    model = build_model(_cfg("synthetic_r18_fpn.yaml", tmp_path))
    head = model.roi_heads.box_head
    assert len(head.convs) == 4 and len([m for m in head.fcs if isinstance(m, torch.nn.Linear)]) == 1
    assert all(isinstance(c.norm, torch.nn.SyncBatchNorm) for c in head.convs)
    assert all(isinstance(lat.norm, torch.nn.SyncBatchNorm) for lat in model.backbone.lateral)
    assert isinstance(model.backbone.body.layer1[0].bn1, torch.nn.SyncBatchNorm)
    assert model.backbone.out_names == ["p2", "p3", "p4", "p5", "p6"]
    assert model.backbone.size_divisibility == 32
    x = torch.zeros(1, 3, 64, 96)
    feats = model.backbone(x)
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]

    frozen = build_model(_cfg("synthetic_r18_fpn.yaml", tmp_path, "MODEL.BACKBONE.FREEZE_AT", "2",
                              "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "", "MODEL.ROI_BOX_HEAD.NORM", "GN"))
    body = frozen.backbone.body
    for module in (body.conv1, body.layer1):
        assert all(not p.requires_grad for p in module.parameters())
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer1[1].bn2, FrozenBatchNorm2d)
    assert type(body.layer2[0].bn1) is torch.nn.BatchNorm2d and body.layer2[0].conv1.weight.requires_grad
    assert not hasattr(frozen.backbone.lateral[0], "norm") and frozen.backbone.lateral[0].conv.bias is not None
    assert isinstance(frozen.roi_heads.box_head.convs[0].norm, torch.nn.GroupNorm)
    fz = build_model(_cfg("synthetic_r18_c4.yaml", tmp_path, "MODEL.RESNETS.NORM", "FrozenBN",
                          "MODEL.BACKBONE.FREEZE_AT", "1"))
    assert isinstance(fz.roi_heads.box_head.res5.norm, FrozenBatchNorm2d)
    assert not fz.backbone.body.conv1.weight.requires_grad and fz.backbone.body.layer1[0].conv1.weight.requires_grad


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("config,arch", [("synthetic_r18_c4.yaml", "resnet18"), ("synthetic_r18_fpn.yaml", "resnet18"),
                                         ("voc_r50.yaml", "resnet50")])
def test_converted_backbone_fills_every_tensor(tmp_path: Path, config: str, arch: str) -> None:
    model = build_model(_cfg(config, tmp_path))
    path, source = _pkl(tmp_path, arch)
    n = load_backbone_pkl(model, str(path))
    targets = backbone_targets(model)
    assert n == len(targets) == len(source)
    state = model.state_dict()
    for name, value in source.items():
        assert torch.equal(state[targets[name]], value), name


def test_a_backbone_of_the_wrong_depth_or_incomplete_is_an_error(tmp_path: Path) -> None:
    model = build_model(_cfg("synthetic_r18_fpn.yaml", tmp_path))
    path, _ = _pkl(tmp_path, "resnet34")
    with pytest.raises(UserError, match="does not fit the ResNet-18"):
        load_backbone_pkl(model, str(path))
    conv = convert_checkpoint({"state_dict": torchvision.models.resnet18(weights=None).state_dict()})
    partial = {k: v for k, v in conv.model.items() if not k.startswith("res5.")}
    save_d2_pkl(partial, tmp_path / "partial.pkl")
    with pytest.raises(UserError, match=r"backbone tensor\(s\) not in the file"):
        load_backbone_pkl(model, str(tmp_path / "partial.pkl"))


# ----------------------------------------------------------------------------- data and solver


def test_resize_plan_and_lr_schedule_follow_detectron2(det_synth: Path, tmp_path: Path) -> None:
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)
    dicts = [{"width": 10 + i % 2 * 20, "height": 20} for i in range(10)]
    a = list(zip(range(6), batch_plan(dicts, 2, seed=3, rank=0, world=1, grouping=True)))
    b = list(zip(range(4), batch_plan(dicts, 2, seed=3, rank=0, world=1, grouping=True, start_iter=2)))
    assert [x for _, x in a[2:]] == [x for _, x in b]  # resume sees the same batches
    assert all(len({dicts[i]["width"] > 20 for i, _ in batch}) == 1 for _, batch in a)  # one aspect group
    cfg = _cfg("synthetic_r18_fpn.yaml", tmp_path, "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "(20, 30)")
    assert lr_factor(cfg, 0) == pytest.approx(cfg.SOLVER.WARMUP_FACTOR)
    assert lr_factor(cfg, 5) == pytest.approx(0.5 * cfg.SOLVER.WARMUP_FACTOR + 0.5)
    assert [lr_factor(cfg, i) for i in (10, 19, 20, 30)] == pytest.approx([1, 1, 0.1, 0.01])
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                for p in m.parameters(recurse=False)}
    for g in opt.param_groups:
        expected = 0.0 if id(g["params"][0]) in norm_ids else 1e-4
        assert g["weight_decay"] == expected and all((id(p) in norm_ids) == (expected == 0.0) for p in g["params"])
    total = sum(len(g["params"]) for g in opt.param_groups)
    assert total == len([p for p in model.parameters() if p.requires_grad])


def test_a_few_iterations_lower_the_loss(det_synth: Path, tmp_path: Path) -> None:
    cfg = _cfg("synthetic_r18_fpn.yaml", tmp_path, *TINY, "RIMIFM.SYNTHETIC_ROOT", str(det_synth))
    from detection.datasets import register_datasets

    register_datasets(synthetic=str(det_synth), detectron2=False)
    dicts = load_train_dicts(cfg)
    mapper = TrainMapper(dicts, cfg, seed=0)
    batch = [mapper[(i, i)] for i in range(4)]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for step in range(12):
        torch.manual_seed(step)
        out = model([b[0] for b in batch], [b[1] for b in batch])
        total = sum(out.values())
        losses.append(total.item())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert set(out) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    # a 25% drop: 12 steps give 29-31% with one or two threads (float sums differ between them)
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_eval_only_and_resume(det_synth: Path, tmp_path: Path, capsys) -> None:
    common = [*TINY, *SMALL, "RIMIFM.SYNTHETIC_ROOT", str(det_synth), "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
              "SEED", "0"]
    out = tmp_path / "run"
    rec = tv.run(_args("synthetic_r18_fpn.yaml", [*common, "OUTPUT_DIR", str(out)]))
    printed = capsys.readouterr().out
    assert "synthetic R10-FPN 4it (torchvision): AP" in printed and f"record: {out / 'record.json'}" in printed
    assert rec["engine"] == "torchvision" and rec["iterations"] == 4 and rec["start_iteration"] == 0
    assert set(rec["metrics"]) == {"AP", "AP50", "AP75"} and rec["sec_per_iter"] > 0
    # our VOC evaluator's bootstrap over the test images gives the metrics' standard errors
    assert set(rec["metrics_se"]) == {"AP", "AP50", "AP75", "resamples"} and rec["metrics_se"]["resamples"] == 200
    assert all(rec["metrics_se"][k] >= 0 for k in ("AP", "AP50", "AP75"))
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth", "config.yaml", "metrics.json",
                 "inference/synthetic_test/coco_instances_results.json"):
        assert (out / name).is_file(), name
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    train_row = next(r for r in rows if "total_loss" in r)
    assert train_row["iteration"] == 3 and {"loss_cls", "loss_rpn_loc", "lr", "time"} <= set(train_row)
    assert rows[-1]["bbox/AP50"] == pytest.approx(rec["metrics"]["AP50"])
    assert list(out.glob("events.out.tfevents.*"))

    # --eval-only on the saved model reproduces the metrics the run logged
    ev = tv.run(_args("synthetic_r18_fpn.yaml", [*common, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                                                  "OUTPUT_DIR", str(tmp_path / "eval")], eval_only=True))
    assert ev["eval_only"] and ev["iterations"] == 4
    assert ev["metrics"] == pytest.approx(rec["metrics"], abs=1e-9)
    assert ev["metrics_se"] == pytest.approx(rec["metrics_se"], abs=1e-9)  # seeded draws: the same SE

    # an interruption after the checkpoint at iteration 1: resume continues at 2 and ends where the first run did
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "model_0000001.pth").write_bytes((out / "model_0000001.pth").read_bytes())
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    rec2 = tv.run(_args("synthetic_r18_fpn.yaml", [*common, "OUTPUT_DIR", str(resumed)], resume=True))
    assert rec2["start_iteration"] == 2 and rec2["iterations"] == 4
    a = torch.load(out / "model_final.pth", weights_only=True)
    b = torch.load(resumed / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert rec2["metrics"] == pytest.approx(rec["metrics"], abs=1e-9)

    with pytest.raises(UserError, match="not a checkpoint of the torchvision engine"):
        torch.save({"model": {}}, tmp_path / "other.pth")
        tv.run(_args("synthetic_r18_fpn.yaml", [*common, "MODEL.WEIGHTS", str(tmp_path / "other.pth"),
                                                "OUTPUT_DIR", str(tmp_path / "eval2")], eval_only=True))


#: detection/train_net.py, with every rank also saving its model and training batches when it evaluates
_RANK_DUMP_LAUNCHER = """
import sys
sys.path.insert(0, {repo!r})
import torch
from detection.engines.torchvision import data as tv_data
from detection.engines.torchvision import loop as tv_loop
from detection.train_net import main
from rimifm.errors import run_cli

batches = []
plan = tv_data.batch_plan

def logged_plan(*args, **kwargs):
    stream = kwargs.get("stream", args[7] if len(args) > 7 else 0)
    for batch in plan(*args, **kwargs):
        if stream == 0:  # the training stream, not precise BN's
            batches.append(batch)
        yield batch

evaluate = tv_loop.evaluate

def dump_then_evaluate(cfg, model, env):
    torch.save({{"model": model.state_dict(), "batches": batches}}, f"{{cfg.OUTPUT_DIR}}/rank{{env.rank}}.pt")
    return evaluate(cfg, model, env)

tv_data.batch_plan = logged_plan
tv_loop.evaluate = dump_then_evaluate
run_cli(main)
"""


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun(det_synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    opts = [*TINY, *SMALL, "SOLVER.IMS_PER_BATCH", "4", "RIMIFM.SYNTHETIC_ROOT", str(det_synth), "SOLVER.MAX_ITER", "4",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "SEED", "0", "OUTPUT_DIR", str(out)]
    # --num-gpus N spawns one process per GPU; CPU processes come from torchrun, which the refusal names
    with pytest.raises(UserError, match=r"--num-gpus 2 .*MODEL.DEVICE is 'cpu'.*nproc_per_node N"):
        tv.run(_args("synthetic_r18_fpn.yaml", opts, num_gpus=2))
    assert not out.exists()

    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent(_RANK_DUMP_LAUNCHER.format(repo=str(REPO))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
           "--config", "synthetic_r18_fpn.yaml", "--engine", "torchvision", *opts]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("record:") == 1 and "synthetic R10-FPN 4it (torchvision): AP" in r.stdout  # rank 0 only
    rec = json.loads((out / "record.json").read_text())
    assert rec["engine"] == "torchvision" and rec["world_size"] == 2 and rec["iterations"] == 4
    assert rec["start_iteration"] == 0 and set(rec["metrics"]) == {"AP", "AP50", "AP75"}
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [3, 3] and "total_loss" in rows[0] and "bbox/AP" in rows[1]

    # each rank trained on its own half of the global batch: 2 images per iteration, positions p with p % 2 == rank
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(2)]
    positions = [[pos for batch in d["batches"] for _, pos in batch] for d in ranks]
    for rank, d in enumerate(ranks):
        assert [len(b) for b in d["batches"]] == [2] * 4
        assert all(pos % 2 == rank for pos in positions[rank])
    assert sorted(positions[0] + positions[1]) == list(range(16))

    # DDP kept the ranks identical (weights and precise-BN statistics), and rank 0 saved that model
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3 and set(final["model"]) == set(ranks[0]["model"]) == set(ranks[1]["model"])
    for k, v in final["model"].items():
        assert torch.equal(v, ranks[0]["model"][k]) and torch.equal(v, ranks[1]["model"][k]), k
    # SyncBN became the all-reduce BN before the optimizer was built, so the norms trained too
    assert len(final["optimizer"]["state"]) == sum(len(g["params"]) for g in final["optimizer"]["param_groups"])
    assert not torch.equal(final["model"]["backbone.lateral.0.norm.weight"], torch.ones(32))
