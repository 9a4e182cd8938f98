"""resnet_tiny in detection: the torchvision engine builds it (strides from its stem), fills it from a converted
.pkl and trains it; a mismatched config and detectron2 each get one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detection.engines import detectron2_backbone_problem, select_engine
from detection.engines.torchvision.checkpoint import load_backbone_pkl
from detection.engines.torchvision.config import build_cfg
from detection.engines.torchvision.modeling import backbone_targets, build_model
from pretrain.method.models import build_backbone
from rimifm.errors import UserError
from rimifm.resnet_weights import convert_checkpoint, save_d2_pkl
from rimifm.resnets import ARCHS, arch_metadata

SMALL = ["MODEL.RESNETS.DEPTH", "10", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
         "RIMIFM.STEM", "small"]


@pytest.fixture(scope="module")
def tiny_pkl(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    backbone = build_backbone("resnet_tiny")
    state = {k: v for k, v in backbone.state_dict().items() if "num_batches" not in k}
    conv = convert_checkpoint({"format": "rimifm-pretrain", "backbone": "resnet_tiny",
                               "arch": arch_metadata(ARCHS["resnet_tiny"]),
                               "model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}})
    path = tmp_path_factory.mktemp("tiny") / "tiny.pkl"
    save_d2_pkl(conv.model, path, arch=conv.arch)
    return path, state


def _cfg(tmp_path: Path, *opts: str):
    return build_cfg("synthetic_r18_c4.yaml", ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR",
                                               str(tmp_path), "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
                                               "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", *opts])


def test_the_engine_builds_fills_and_trains_the_small_backbone(tmp_path, tiny_pkl):
    path, state = tiny_pkl
    model = build_model(_cfg(tmp_path, *SMALL))
    assert model.backbone.strides == {"res4": 8} and model.backbone.channels == {"res4": 64}
    assert model.rpn is not None and isinstance(model.backbone.body.maxpool, torch.nn.Identity)
    assert load_backbone_pkl(model, str(path)) == len(backbone_targets(model)) == len(state)
    targets = backbone_targets(model)
    assert all(torch.equal(model.state_dict()[targets[k]], v) for k, v in state.items())
    model.train()
    images = [torch.rand(3, 96, 96) * 255 for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20.0, 80.0, 70.0], [5.0, 5.0, 30.0, 28.0]]),
                "labels": torch.tensor([0, 2])}]
    losses = model(images, targets)
    total = sum(losses.values())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} and torch.isfinite(total)
    total.backward()
    assert model.backbone.body.conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert len(model(images)) == 2


def test_a_config_that_does_not_build_the_pkl_s_backbone_says_which_keys_to_set(tmp_path, tiny_pkl):
    model = build_model(_cfg(tmp_path))  # detectron2's R18
    with pytest.raises(UserError, match=r"holds resnet_tiny \(ResNet-10 layout, width 16, small stem\), but the config "
                                        r"builds resnet18 .* set MODEL.RESNETS.DEPTH 10, MODEL.RESNETS.STEM_OUT_CHANNELS "
                                        r"16, MODEL.RESNETS.RES2_OUT_CHANNELS 16 and RIMIFM.STEM small"):
        load_backbone_pkl(model, str(tiny_pkl[0]))
    with pytest.raises(UserError, match=r"RES2_OUT_CHANNELS = 64 \(a ResNet-18 with STEM_OUT_CHANNELS 16 has 16\)"):
        _cfg(tmp_path, "MODEL.RESNETS.STEM_OUT_CHANNELS", "16")
    with pytest.raises(UserError, match=r"RIMIFM.STEM = 'tiny' \(one of imagenet, cifar, small\)"):
        _cfg(tmp_path, "RIMIFM.STEM", "tiny")


def test_detectron2_is_refused_with_the_reason_and_auto_takes_the_torchvision_engine(tiny_pkl, capsys):
    path = str(tiny_pkl[0])
    assert detectron2_backbone_problem("synthetic_r18_c4.yaml", []) is None
    problem = detectron2_backbone_problem("synthetic_r18_c4.yaml", ["MODEL.WEIGHTS", path, *SMALL])
    assert "RIMIFM.STEM is 'small'" in problem and "MODEL.RESNETS.DEPTH is 10" in problem
    assert f"MODEL.WEIGHTS {path} holds resnet_tiny" in detectron2_backbone_problem(
        "synthetic_r18_c4.yaml", ["MODEL.WEIGHTS", path])
    with pytest.raises(UserError, match="--engine detectron2: detectron2 cannot build this backbone: .* Use --engine "
                                        "torchvision"):
        select_engine("detectron2", "synthetic_r18_c4.yaml", ["MODEL.WEIGHTS", path, *SMALL])
    name, module = select_engine("auto", "synthetic_r18_c4.yaml", ["MODEL.WEIGHTS", path, *SMALL])
    assert name == "torchvision" and module.__name__.endswith("torchvision.engine")
