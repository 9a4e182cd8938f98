"""The detectron2 engine: models from our configs, converted weights landing, evaluator parity, a tiny run.

Skipped (with the reason) where detectron2 is not installed; see docs/getting_started.md for installing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="detectron2 is not installed; see docs/getting_started.md")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.layers import NaiveSyncBatchNorm  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from detection.datasets import read_voc_split, register_datasets  # noqa: E402
from detection.engines.detectron2.engine import build_cfg  # noqa: E402
from detection.engines.detectron2.modeling import Res5ROIHeadsExtraNorm  # noqa: E402
from synthetic.generator import CLASSES  # noqa: E402
from tests.helpers import REPO, converted_resnet_pkl  # noqa: E402


def _cfg(name: str, tmp_path: Path, *opts: str):
    return build_cfg(name, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path), *opts])


def _pkl(tmp_path: Path, arch: str) -> tuple[Path, dict[str, np.ndarray]]:
    path, d2_model, _ = converted_resnet_pkl(tmp_path, arch)
    return path, d2_model


def _backbone_keys(model: torch.nn.Module, c4: bool) -> set[str]:
    """Model tensors that a converted ResNet must fill: the backbone ResNet and, for C4, the res5 head."""
    keys = set()
    for k in model.state_dict():
        if k.endswith("num_batches_tracked") or k.startswith("roi_heads.res5.norm."):
            continue
        if k.startswith(("backbone.stem.", "backbone.res", "backbone.bottom_up.")) or \
                (c4 and k.startswith("roi_heads.res5.")):
            keys.add(k)
    return keys


def _check_all_loaded(model: torch.nn.Module, source: dict[str, np.ndarray], prefix: str, c4: bool) -> None:
    state = model.state_dict()
    placed = set()
    for k, value in source.items():
        target = ("roi_heads." + k) if (c4 and k.startswith("res5.")) else prefix + k
        assert target in state, f"{k} has no place in the model ({target})"
        assert torch.equal(state[target].cpu(), torch.as_tensor(value)), f"{target} was not loaded"
        placed.add(target)
    assert _backbone_keys(model, c4) == placed  # no backbone tensor left unmatched, none extra


def test_r50_c4_with_extra_norm_and_converted_weights(tmp_path: Path) -> None:
    cfg = _cfg("voc_r50.yaml", tmp_path)
    model = build_model(cfg)
    heads = model.roi_heads
    assert isinstance(heads, Res5ROIHeadsExtraNorm)
    assert isinstance(heads.res5.norm, NaiveSyncBatchNorm) and heads.res5.norm.num_features == 2048
    assert len([m for m in heads.res5 if not isinstance(m, NaiveSyncBatchNorm)]) == 3  # bottleneck blocks
    assert isinstance(model.backbone.stem.conv1.norm, NaiveSyncBatchNorm)
    assert all(p.requires_grad for p in model.parameters())  # FREEZE_AT 0
    assert heads.box_predictor.cls_score.out_features == 21

    path, source = _pkl(tmp_path, "resnet50")
    DetectionCheckpointer(model).load(str(path))
    _check_all_loaded(model, source, "backbone.", c4=True)


def test_r18_fpn_and_r18_c4_from_the_synthetic_configs(tmp_path: Path) -> None:
    fpn = build_model(_cfg("synthetic_r18_fpn.yaml", tmp_path))
    head = fpn.roi_heads.box_head
    assert len(head.conv_norm_relus) == 4 and len(head.fcs) == 1
    assert all(isinstance(c.norm, torch.nn.SyncBatchNorm) for c in head.conv_norm_relus)
    assert isinstance(fpn.backbone.bottom_up.res2[0].conv1.norm, torch.nn.SyncBatchNorm)
    path, source = _pkl(tmp_path, "resnet18")
    DetectionCheckpointer(fpn).load(str(path))
    _check_all_loaded(fpn, source, "backbone.bottom_up.", c4=False)

    c4 = build_model(_cfg("synthetic_r18_c4.yaml", tmp_path))
    res5 = c4.roi_heads.res5
    assert [type(m).__name__ for m in res5] == ["BasicBlock", "BasicBlock", "NaiveSyncBatchNorm"]
    DetectionCheckpointer(c4).load(str(path))
    _check_all_loaded(c4, source, "backbone.", c4=True)


def test_r50_fpn_coco_config_with_converted_weights(tmp_path: Path) -> None:
    model = build_model(_cfg("coco_r50_fpn_1x.yaml", tmp_path))
    head = model.roi_heads.box_head
    assert len(head.conv_norm_relus) == 4 and len(head.fcs) == 1  # the 4conv1fc head
    assert all(isinstance(c.norm, torch.nn.SyncBatchNorm) for c in head.conv_norm_relus)
    assert isinstance(model.backbone.fpn_lateral2.norm, torch.nn.SyncBatchNorm)
    assert isinstance(model.backbone.bottom_up.res2[0].conv1.norm, torch.nn.SyncBatchNorm)
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    path, source = _pkl(tmp_path, "resnet50")
    DetectionCheckpointer(model).load(str(path))
    _check_all_loaded(model, source, "backbone.bottom_up.", c4=False)


def test_single_process_sync_bn_is_plain_bn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5)
    for sync in (NaiveSyncBatchNorm(8), torch.nn.SyncBatchNorm(8)):
        plain = torch.nn.BatchNorm2d(8)
        sync.train(), plain.train()
        assert torch.allclose(sync(x), plain(x), atol=1e-6)
        assert torch.allclose(sync.running_mean, plain.running_mean, atol=1e-6)


def test_our_voc_evaluator_matches_detectron2s(det_synth: Path, tmp_path: Path) -> None:
    from detectron2.evaluation import PascalVOCDetectionEvaluator

    from detection.engines.detectron2.evaluator import VOCEvaluator

    register_datasets(root=str(tmp_path), synthetic=str(det_synth), detectron2=True)
    recs = read_voc_split(det_synth / "detection" / "VOC2007", "test", CLASSES)
    rng = np.random.default_rng(0)
    inputs, outputs = [], []
    for r in recs:
        gt = np.array([a["bbox"] for a in r["annotations"]], dtype=np.float32)
        labels = np.array([a["category_id"] for a in r["annotations"]])
        boxes = np.concatenate([gt + rng.normal(0, 2.5, gt.shape), rng.uniform(0, 60, (4, 4))]).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        inst = Instances((r["height"], r["width"]))
        inst.pred_boxes = Boxes(torch.from_numpy(boxes))
        inst.scores = torch.from_numpy(rng.random(len(boxes)).astype(np.float32))
        inst.pred_classes = torch.from_numpy(np.concatenate([labels, rng.integers(0, 6, 4)]))
        inputs.append({"image_id": r["image_id"]})
        outputs.append({"instances": inst})
    ours, theirs = VOCEvaluator("synthetic_test", output_dir=str(tmp_path / "ours")), \
        PascalVOCDetectionEvaluator("synthetic_test")
    results = []
    for ev in (ours, theirs):
        ev.reset()
        for i in range(0, len(inputs), 2):
            ev.process(inputs[i:i + 2], outputs[i:i + 2])
        results.append(ev.evaluate()["bbox"])
    assert 0 < results[0]["AP50"] <= 100
    for key in ("AP", "AP50", "AP75"):
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-9)
    assert (tmp_path / "ours" / "coco_instances_results.json").is_file()


@pytest.mark.slow
def test_train_a_few_iterations_then_eval_only(det_synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "RIMIFM_SYNTHETIC": str(det_synth), "OMP_NUM_THREADS": "1"}
    common = ["DATALOADER.NUM_WORKERS", "0", "TEST.PRECISE_BN.NUM_ITER", "2", "OUTPUT_DIR", str(out)]
    train = subprocess.run([sys.executable, "detection/train_net.py", "--config", "synthetic_r18_fpn.yaml",
                            "--engine", "detectron2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
                            *common], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    rec = json.loads((out / "record.json").read_text())
    assert rec["kind"] == "detection" and rec["engine"] == "detectron2" and not rec["eval_only"]
    assert rec["iterations"] == 3 and rec["seed"] == 0 and rec["protocol"] == "synthetic R18-FPN 3it"
    assert rec["dataset"] == {"train": ["synthetic_trainval"], "test": ["synthetic_test"]}
    assert set(rec["metrics"]) == {"AP", "AP50", "AP75"} and all(0 <= v <= 100 for v in rec["metrics"].values())
    assert len(rec["config_hash"]) == 16 and rec["config"]["SOLVER"]["MAX_ITER"] == 3
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()
    assert (out / "inference" / "synthetic_test" / "coco_instances_results.json").is_file()

    ev = subprocess.run([sys.executable, "detection/train_net.py", "--config", "synthetic_r18_fpn.yaml",
                         "--engine", "detectron2", "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
                         *common[:-1], str(tmp_path / "eval")], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    rec2 = json.loads((tmp_path / "eval" / "record.json").read_text())
    assert rec2["eval_only"] and rec2["iterations"] == 3
    assert rec2["source_checkpoint"] == str(out / "model_final.pth")
    assert rec2["metrics"] == pytest.approx(rec["metrics"], abs=1e-6)  # model_final is the evaluated model


def test_unknown_key_is_a_clean_cli_error() -> None:
    proc = subprocess.run([sys.executable, "detection/train_net.py", "--config", "voc_r50.yaml",
                           "--engine", "detectron2", "MODEL.NOPE", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: command line: unknown config key (Non-existent key: MODEL.NOPE)" in proc.stderr


def test_check_runnable_stops_on_what_would_fail_later(tmp_path: Path) -> None:
    import argparse

    from detection.engines.detectron2.engine import check_runnable
    from rimifm.errors import UserError

    register_datasets(root=str(tmp_path), detectron2=True)
    (tmp_path / "VOC2007").mkdir()
    args = argparse.Namespace(resume=False, eval_only=False, num_gpus=1, num_machines=1, dist_url="auto")
    path = REPO / "detection" / "configs" / "voc_r50.yaml"
    placeholder = build_cfg(path, ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(UserError, match=r"MODEL.WEIGHTS path/to/backbone.pkl .*convert_to_d2.py"):
        check_runnable(placeholder, args, path)
    with pytest.raises(UserError, match=r"MODEL.WEIGHTS file .*nope.pkl does not exist"):
        check_runnable(_cfg("voc_r50.yaml", tmp_path, "MODEL.WEIGHTS", str(tmp_path / "nope.pkl")), args, path)
    not_pkl = tmp_path / "junk.pkl"
    not_pkl.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="is not a detectron2 weights pickle"):
        check_runnable(_cfg("voc_r50.yaml", tmp_path, "MODEL.WEIGHTS", str(not_pkl)), args, path)
    with pytest.raises(UserError, match=r"dataset voc_2012_trainval: folder .*VOC2012 does not exist"):
        check_runnable(_cfg("voc_r50.yaml", tmp_path), args, path)
    (tmp_path / "VOC2012").mkdir()
    check_runnable(_cfg("voc_r50.yaml", tmp_path), args, path)  # '' = random init, allowed
    with pytest.raises(UserError, match="--eval-only needs MODEL.WEIGHTS"):
        check_runnable(_cfg("voc_r50.yaml", tmp_path), argparse.Namespace(**{**vars(args), "eval_only": True}),
                       path)
    with pytest.raises(UserError, match="several processes only on GPUs"):
        check_runnable(_cfg("voc_r50.yaml", tmp_path), argparse.Namespace(**{**vars(args), "num_gpus": 2}), path)
    with pytest.raises(UserError, match=r"DATASETS.TEST names 'voc_2099_test'.*not a registered dataset"):
        check_runnable(_cfg("voc_r50.yaml", tmp_path, "DATASETS.TEST", "('voc_2099_test',)"), args, path)


def test_torchvision_engine_matches_detectron2_on_the_same_weights(tmp_path: Path) -> None:
    """Same converted R18 -> same backbone feature maps and res5 head output; same anchors."""
    from detection.engines.torchvision.checkpoint import load_backbone_pkl
    from detection.engines.torchvision.config import build_cfg as tv_build_cfg
    from detection.engines.torchvision.modeling import build_model as tv_build_model

    path, _ = _pkl(tmp_path, "resnet18")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96)
    for name in ("synthetic_r18_fpn.yaml", "synthetic_r18_c4.yaml"):
        opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)]
        d2 = build_model(build_cfg(name, opts)).eval()
        DetectionCheckpointer(d2).load(str(path))
        ours = tv_build_model(tv_build_cfg(name, opts)).eval()
        load_backbone_pkl(ours, str(path))
        with torch.no_grad():
            fpn = "fpn" in name
            theirs = d2.backbone.bottom_up(x) if fpn else d2.backbone(x)
            mine = ours.backbone.body(x)
            assert set(theirs) == ({"res2", "res3", "res4", "res5"} if fpn else {"res4"})
            for level in theirs:
                assert torch.allclose(theirs[level], mine[level], atol=1e-4), (name, level)
            if not fpn:
                assert torch.allclose(d2.roi_heads.res5(theirs["res4"]), ours.roi_heads.box_head.res5(mine["res4"]),
                                      atol=1e-4)
            feats = d2.backbone(x)
            levels = d2.proposal_generator.in_features
            a_d2 = d2.proposal_generator.anchor_generator([feats[f] for f in levels])
            a_tv = ours.rpn.anchors([feats[f] for f in levels])
            assert len(a_d2) == len(a_tv)
            for a, b in zip(a_d2, a_tv):
                assert torch.allclose(a.tensor, b, atol=1e-5)
