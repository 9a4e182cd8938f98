"""resnet_tiny in detection: the torchvision engine builds it (strides from its stem), fills it from a converted
.pkl and trains it; a mismatched config and detectron2 each get one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detection.engines import detectron2_backbone_problem, select_engine
from detection.engines.torchvision.checkpoint import load_backbone_pkl
from detection.engines.torchvision.config import build_cfg
from detection.engines.torchvision.modeling import backbone_targets, build_model
from pretrain.method.models import build_backbone
from rimifm.d2_pkl import save_d2_pkl
from rimifm.errors import UserError
from rimifm.resnet_weights import convert_checkpoint
from rimifm.resnets import ARCHS, arch_metadata
from synthetic.fmnist_scenes import render_scene, resolve_sizes

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


def _cfg(tmp_path: Path, *opts: str, config: str = "synthetic_r18_c4.yaml"):
    return build_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR",
                                               str(tmp_path), "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
                                               "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", *opts])


def test_the_engine_builds_fills_and_trains_the_small_backbone_of_the_scenes_config(tmp_path, tiny_pkl):
    path, state = tiny_pkl
    model = build_model(_cfg(tmp_path, config="fmnist_scenes.yaml"))
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
    assert select_engine("auto", "fmnist_scenes.yaml", [])[0] == "torchvision"


def test_the_scenes_config_has_an_anchor_for_every_object_the_generator_makes(tmp_path):
    """Every tight box of the default scene sizes has a co-centred anchor at IoU >= 0.5 (items whose ink spans
    9-28 px of the 28 px frame either way, as Fashion-MNIST's trousers, sandals and coats do)."""
    cfg = _cfg(tmp_path, config="fmnist_scenes.yaml")
    shapes = [(s / r ** 0.5, s * r ** 0.5) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]
              for r in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]]
    rng = np.random.default_rng(0)
    images = np.zeros((200, 28, 28), dtype=np.uint8)
    for image in images:
        h, w = rng.integers(9, 29, 2)
        image[:h, :w] = 200
    sizes = resolve_sizes({})
    assert cfg.INPUT.MIN_SIZE_TEST == sizes["canvas"]  # the boxes are seen at the generator's scale
    worst = 1.0
    for i in range(100):
        for o in render_scene(np.random.default_rng(i), images, np.zeros(200, dtype=np.int64), sizes)[1]:
            w, h = o["box"][2] - o["box"][0] + 1, o["box"][3] - o["box"][1] + 1
            worst = min(worst, max(min(aw, w) * min(ah, h) / (aw * ah + w * h - min(aw, w) * min(ah, h))
                                   for aw, ah in shapes))
    assert worst >= 0.5


def test_the_scenes_config_normalises_pixels_as_the_fashion_mnist_recipes_did(tmp_path):
    from pretrain.config import load_config

    cfg = _cfg(tmp_path, config="fmnist_scenes.yaml")
    for recipe in ("fmnist_cpu_byol.yaml", "fmnist_cpu_simsiam.yaml"):
        data = load_config(recipe, []).DATA
        assert cfg.MODEL.PIXEL_MEAN == pytest.approx([255 * m for m in data.MEAN], abs=0.01)
        assert cfg.MODEL.PIXEL_STD == pytest.approx([255 * s for s in data.STD], abs=0.01)
