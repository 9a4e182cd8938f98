"""The architecture registry: torchvision's ResNets unchanged, the CPU-sized resnet_tiny's shape and stem, and
its weights through conversion and back (the stem named in the .pkl)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pretrain.evaluation.backbones import load_backbone
from pretrain.method.models import backbone_arch, build_backbone
from rimifm.d2_pkl import ARCH_KEY, load_d2_pkl, save_d2_pkl
from rimifm.errors import UserError
from rimifm.resnet_weights import convert_checkpoint, d2_to_torchvision
from rimifm.resnets import ARCHS, arch_for, arch_from_metadata, arch_metadata, build_resnet, get_arch


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnets_are_built_exactly_as_torchvision_builds_them(name):
    torch.manual_seed(3)
    ours = build_resnet(ARCHS[name]).state_dict()
    torch.manual_seed(3)
    theirs = getattr(torchvision.models, name)(weights=None).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_resnet_tiny_shape_stem_and_feature_size():
    net = build_backbone("resnet_tiny")
    arch = net.arch
    assert (arch.depth, arch.width, arch.stem, arch.stem_stride, net.feature_dim) == (10, 16, "small", 2, 128)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (2, 2) and isinstance(net.maxpool, torch.nn.Identity)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]  # one basic block per stage
    assert [getattr(net, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)] == [16, 32, 64, 128]
    sizes = []
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        x = net.relu(net.bn1(net.conv1(x)))
        sizes.append(x.shape[-1])
        for i in range(1, 5):
            x = getattr(net, f"layer{i}")(x)
            sizes.append(x.shape[-1])
        assert net(torch.randn(2, 3, 28, 28)).shape == (2, 128)
    assert sizes == [14, 14, 7, 4, 2]  # res2 at stride 2, no max-pool
    # torchvision's names (so conversion applies unchanged): those of ResNet-18's first block of each stage
    first_blocks = {k for k in build_backbone("resnet18").state_dict() if not k.startswith(tuple(
        f"layer{i}.1." for i in range(1, 5)))}
    assert set(net.state_dict()) == first_blocks
    cifar = build_backbone("resnet_tiny", cifar_stem=True)
    assert cifar.conv1.stride == (1, 1) and cifar.arch.stem == "cifar"


def test_lookups_and_metadata():
    assert get_arch("resnet_tiny") is ARCHS["resnet_tiny"]
    with pytest.raises(UserError, match="MODEL.BACKBONE 'resnet7' is not a known backbone; choose one of"):
        get_arch("resnet7")
    assert arch_for(10, 16) == ARCHS["resnet_tiny"] and arch_for(10, 16, "cifar").stem == "cifar"
    assert arch_for(18, 24).name == "resnet18-w24" and arch_for(18, 24).stem == "imagenet"
    tiny = ARCHS["resnet_tiny"]
    assert arch_from_metadata(arch_metadata(tiny), "x") == tiny
    with pytest.raises(UserError, match="names no ResNet this suite builds"):
        arch_from_metadata({**arch_metadata(tiny), "stem": "huge"}, "file.pkl")


def test_resnet_tiny_weights_convert_and_load_back_bit_exact(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("resnet_tiny")
    for m in backbone.modules():  # non-trivial statistics, so a missed tensor would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    ckpt = {"format": "rimifm-pretrain", "method": "byol", "backbone": "resnet_tiny", "cifar_stem": False,
            "arch": arch_metadata(backbone_arch("resnet_tiny")),
            "model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}
    conv = convert_checkpoint(ckpt)
    assert conv.depth == 10 and conv.arch == arch_metadata(ARCHS["resnet_tiny"])
    assert "depth=10" in conv.summary() and "arch=resnet_tiny (width 16, small stem)" in conv.summary()
    pkl = tmp_path / "tiny.pkl"
    save_d2_pkl(conv.model, pkl, arch=conv.arch)
    data = load_d2_pkl(pkl)
    assert data[ARCH_KEY]["stem"] == "small" and data["model"]["stem.conv1.weight"].shape == (16, 3, 3, 3)
    back = d2_to_torchvision(data["model"])
    fresh = build_backbone("resnet_tiny")
    fresh.load_state_dict(back, strict=False)
    state = backbone.state_dict()
    assert all(torch.equal(fresh.state_dict()[k], state[k]) for k in back)
    # the evaluation loads the .pkl (and the checkpoint) into the same network, stem included
    torch.save(ckpt, tmp_path / "last.pth")
    x = torch.randn(3, 3, 28, 28)
    backbone.eval()
    for path in (pkl, tmp_path / "last.pth"):
        net, src = load_backbone(path)
        assert src.backbone == "resnet_tiny" and net.arch.stem == "small"
        with torch.no_grad():
            assert torch.allclose(net.eval()(x), backbone(x), atol=1e-6)
    # a third-party file without the architecture entry: width from conv1, the registered stem of that width
    save_d2_pkl(conv.model, tmp_path / "anonymous.pkl")
    net, src = load_backbone(tmp_path / "anonymous.pkl")
    assert src.backbone == "resnet_tiny" and net.conv1.stride == (2, 2)
