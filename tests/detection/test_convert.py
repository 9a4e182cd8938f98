"""Checkpoint conversion to detectron2 names: every supported layout, the inverse, errors and the CLI."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from detection.convert import convert_file
from rimifm.d2_pkl import load_d2_pkl, save_d2_pkl
from rimifm.errors import UserError
from rimifm.resnet_weights import convert_checkpoint, d2_to_torchvision, expected_d2_keys
from tests.helpers import REPO, run_main

ARCHS = {"resnet18": 18, "resnet50": 50}


# ----------------------------------------------------------------------------- fixtures / helpers


def _real_keys(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


_KEYS = {arch: _real_keys(arch) for arch in ARCHS}


def tiny_backbone(arch: str, seed: int = 0, with_fc: bool = True) -> dict[str, torch.Tensor]:
    """The real torchvision key names of `arch` with tiny distinct tensors (conversion does not look at shapes)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in _KEYS[arch].items():
        if not with_fc and k.startswith("fc."):
            continue
        out[k] = v.clone() if v.dtype == torch.long else torch.randn(3, generator=g)
    return out


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def expected_d2(state: dict) -> dict[str, np.ndarray]:
    """Independent renaming by plain string substitutions (the MoCo recipe), dropping fc and counters."""
    out = {}
    for k, v in state.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        if not k.startswith("layer"):
            k = "stem." + k
        for i in range(1, 5):
            k = k.replace(f"layer{i}.", f"res{i + 1}.")
        for i in range(1, 4):
            k = k.replace(f"bn{i}.", f"conv{i}.norm.")
        k = k.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        out[k] = v.numpy()
    return out


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


def head(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"0.weight": torch.randn(4, generator=g), "1.weight": torch.randn(4, generator=g),
            "1.running_mean": torch.randn(4, generator=g), "1.num_batches_tracked": torch.tensor(3)}


def ours(arch: str, method: str = "byol") -> dict:
    online = tiny_backbone(arch, 1, with_fc=False)
    model = {**prefixed(online, "backbone."), **prefixed(head(2), "projector."), **prefixed(head(3), "predictor.")}
    if method == "byol":
        model.update(prefixed(tiny_backbone(arch, 4, with_fc=False), "target_backbone."))
        model.update(prefixed(head(5), "target_projector."))
    return {"format": "rimifm-pretrain", "format_version": 1, "method": method, "backbone": arch,
            "epoch": 3, "model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}


# layout name -> (builder(arch) -> (checkpoint, the torchvision state it should yield))
def _moco(arch):
    q, k = tiny_backbone(arch, 1), tiny_backbone(arch, 2)
    q = {kk: v for kk, v in q.items() if not kk.startswith("fc.")}
    q.update({"fc.0.weight": torch.randn(5), "fc.0.bias": torch.randn(5), "fc.2.weight": torch.randn(5)})
    ckpt = {"epoch": 200, "arch": arch, "state_dict": {**prefixed(q, "module.encoder_q."),
                                                      **prefixed(k, "module.encoder_k."),
                                                      "module.queue": torch.randn(8), "module.queue_ptr": torch.zeros(1)}}
    return ckpt, q


def _simsiam(arch):
    enc = tiny_backbone(arch, 1, with_fc=False)
    enc.update({"fc.0.weight": torch.randn(5), "fc.1.running_var": torch.rand(5), "fc.6.bias": torch.randn(5)})
    sd = {**prefixed(enc, "module.encoder."), **prefixed(head(7), "module.predictor.")}
    return {"epoch": 100, "arch": arch, "state_dict": sd, "optimizer": {"state": {}}}, enc


def _solo(arch):
    bb = tiny_backbone(arch, 1, with_fc=False)
    sd = {**prefixed(bb, "backbone."), **prefixed(head(2), "projector."), **prefixed(head(3), "predictor."),
          **prefixed(tiny_backbone(arch, 4, with_fc=False), "momentum_backbone."),
          **prefixed(head(5), "momentum_projector."), "classifier.weight": torch.randn(4)}
    return {"epoch": 9, "global_step": 100, "state_dict": sd}, bb


def _byol_online_network(arch):
    enc = tiny_backbone(arch, 1, with_fc=False)
    sd = {**prefixed(enc, "online_network.encoder."), **prefixed(head(2), "online_network.projector."),
          **prefixed(head(3), "predictor."), **prefixed(tiny_backbone(arch, 4, with_fc=False),
                                                        "target_network.encoder.")}
    return {"network": sd}, enc


def _byol_sequential(arch):
    """BYOL code that keeps nn.Sequential(*resnet.children())[:-1]: conv1=0, bn1=1, layer1..4 = 4..7."""
    enc = tiny_backbone(arch, 1, with_fc=False)
    children = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    seq = {}
    for k, v in enc.items():
        top, rest = k.split(".", 1)
        seq[f"encoder.{children[top]}.{rest}"] = v
    seq.update(prefixed(head(2), "projetion.net."))
    return {"online_network_state_dict": seq}, enc


def _pixpro(arch):
    enc = tiny_backbone(arch, 1, with_fc=False)
    sd = {**prefixed(enc, "module.encoder."), **prefixed(tiny_backbone(arch, 2, with_fc=False), "module.encoder_k."),
          **prefixed(head(3), "module.projector."), **prefixed(head(4), "module.projector_k.")}
    return {"model": sd, "epoch": 400, "opt": {"arch": arch}}, enc


def _densecl(arch):
    """OpenSelfSup keeps the backbone both as encoder_q.0 and as backbone (same tensors)."""
    enc = tiny_backbone(arch, 1, with_fc=False)
    sd = {**prefixed(enc, "encoder_q.0."), **prefixed(head(2), "encoder_q.1.mlp."),
          **prefixed(enc, "backbone."), **prefixed(tiny_backbone(arch, 3, with_fc=False), "encoder_k.0."),
          "queue": torch.randn(6), "queue2": torch.randn(6)}
    return {"meta": {"epoch": 200}, "state_dict": sd}, enc


def _densecl_encoder_q(arch):
    enc = tiny_backbone(arch, 1, with_fc=False)
    return {"state_dict": {**prefixed(enc, "encoder_q."), **prefixed(tiny_backbone(arch, 2), "encoder_k.")}}, enc


def _torchvision(arch):
    sd = tiny_backbone(arch, 1)
    return sd, sd


def _torchvision_ddp(arch):
    sd = tiny_backbone(arch, 1)
    return {"state_dict": prefixed(sd, "module.")}, sd


def _nested(arch):
    sd = tiny_backbone(arch, 1)
    return {"model": {"state_dict": prefixed(sd, "module.encoder_q."), "epoch": 5}, "note": "x"}, sd


LAYOUTS = {
    "ours-online": (lambda a: (ours(a), tiny_backbone(a, 1, with_fc=False)), "backbone."),
    "moco": (_moco, "module.encoder_q."),
    "simsiam": (_simsiam, "module.encoder."),
    "solo-learn": (_solo, "backbone."),
    "byol-online_network": (_byol_online_network, "online_network.encoder."),
    "byol-sequential": (_byol_sequential, "encoder."),
    "pixpro": (_pixpro, "module.encoder."),
    "densecl": (_densecl, "encoder_q.0."),
    "densecl-encoder_q": (_densecl_encoder_q, "encoder_q."),
    "torchvision": (_torchvision, ""),
    "torchvision-ddp": (_torchvision_ddp, "module."),
    "nested-containers": (_nested, "module.encoder_q."),
}


# ----------------------------------------------------------------------------- layouts


def test_expected_key_counts_match_torchvision():
    for arch, depth in ARCHS.items():
        tv = [k for k in _KEYS[arch] if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
        assert len(expected_d2_keys(depth)) == len(tv)
        assert set(expected_d2(tiny_backbone(arch))) == expected_d2_keys(depth)
    assert len(expected_d2_keys(18)) == 100 and len(expected_d2_keys(50)) == 265


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_converts_exactly(layout, arch):
    builder, prefix = LAYOUTS[layout]
    ckpt, tv_state = builder(arch)
    conv = convert_checkpoint(ckpt)
    assert conv.prefix == prefix
    assert conv.depth == ARCHS[arch]
    assert_same_arrays(conv.model, expected_d2(tv_state))
    assert set(conv.model) == expected_d2_keys(ARCHS[arch])
    assert not any(s in k for k in conv.model for s in ("fc", "projector", "predictor", "num_batches"))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_ours_target_branch(arch):
    conv = convert_checkpoint(ours(arch), target=True)
    assert conv.prefix == "target_backbone."
    assert_same_arrays(conv.model, expected_d2(tiny_backbone(arch, 4, with_fc=False)))
    online = convert_checkpoint(ours(arch))
    assert online.model["stem.conv1.weight"].tobytes() != conv.model["stem.conv1.weight"].tobytes()


def test_target_of_other_layouts():
    ckpt, _ = _moco("resnet18")
    conv = convert_checkpoint(ckpt, target=True)
    assert conv.prefix == "module.encoder_k."
    assert_same_arrays(conv.model, expected_d2(tiny_backbone("resnet18", 2)))
    ckpt, _ = _solo("resnet50")
    assert convert_checkpoint(ckpt, target=True).prefix == "momentum_backbone."


def test_prefix_override():
    ckpt, _ = _moco("resnet18")
    conv = convert_checkpoint(ckpt, prefix="module.encoder_k.")
    assert conv.prefix == "module.encoder_k."
    assert_same_arrays(conv.model, expected_d2(tiny_backbone("resnet18", 2)))
    # without the trailing dot, and on our own format (target branch picked by name)
    conv = convert_checkpoint(ours("resnet18"), prefix="target_backbone")
    assert_same_arrays(conv.model, expected_d2(tiny_backbone("resnet18", 4, with_fc=False)))
    # densecl: the shorter "backbone." instead of the auto-detected "encoder_q.0." gives the same tensors
    ckpt, enc = _densecl("resnet50")
    assert_same_arrays(convert_checkpoint(ckpt, prefix="backbone.").model, expected_d2(enc))
    with pytest.raises(UserError, match="no ResNet under prefix 'nothing.'"):
        convert_checkpoint(ckpt, prefix="nothing.")


def test_depth_option_validates():
    ckpt, _ = _moco("resnet50")
    assert convert_checkpoint(ckpt, depth=50).depth == 50
    with pytest.raises(UserError, match="ResNet-101"):
        convert_checkpoint(ckpt, depth=101)
    ckpt, _ = _torchvision("resnet18")
    with pytest.raises(UserError, match="ResNet-34"):
        convert_checkpoint(ckpt, depth=34)
    with pytest.raises(UserError, match="ResNet-50"):
        convert_checkpoint(ckpt, depth=50)
    with pytest.raises(UserError, match="disagrees"):
        convert_checkpoint(ours("resnet18"), depth=50)


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("arch", list(ARCHS))
def test_round_trip_bit_exact_and_loadable(arch, tmp_path):
    torch.manual_seed(1)
    net = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():  # make running stats non-trivial
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    original = net.state_dict()
    conv = convert_checkpoint({"state_dict": prefixed(original, "module.encoder_q.")})
    if arch == "resnet18":  # through the file as well
        save_d2_pkl(conv.model, tmp_path / "w.pkl")
        model = load_d2_pkl(tmp_path / "w.pkl")["model"]
    else:
        model = conv.model
    back = d2_to_torchvision(model)
    kept = {k for k in original if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(back) == kept
    for k in kept:
        assert back[k].dtype == original[k].dtype and torch.equal(back[k], original[k]), k
    fresh = getattr(torchvision.models, arch)(weights=None)
    result = fresh.load_state_dict(back, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    for k in kept:
        assert torch.equal(fresh.state_dict()[k], original[k])


def test_d2_to_torchvision_rejects_unknown_names():
    model = convert_checkpoint(tiny_backbone("resnet18")).model
    model["roi_heads.box_predictor.cls_score.weight"] = np.zeros(2, np.float32)
    with pytest.raises(UserError, match="roi_heads"):
        d2_to_torchvision(model)


# ----------------------------------------------------------------------------- bad checkpoints


def test_not_a_dict_and_no_tensors():
    with pytest.raises(UserError, match="not a checkpoint"):
        convert_checkpoint([torch.zeros(1)])
    with pytest.raises(UserError, match="not a checkpoint"):
        convert_checkpoint({"epoch": 3, "model": {"lr": 0.1}})


def test_unknown_layout():
    sd = prefixed(tiny_backbone("resnet18"), "weird.trunk.")
    with pytest.raises(UserError, match="unknown checkpoint layout.*--prefix"):
        convert_checkpoint({"state_dict": sd})


def test_leftover_and_unplaceable_keys():
    sd = tiny_backbone("resnet18")
    sd["projector.0.weight"] = torch.randn(2)
    with pytest.raises(UserError, match="projector.0.weight"):
        convert_checkpoint(sd)
    ck = ours("resnet18")
    ck["model"]["backbone.extra.head.weight"] = torch.randn(2)
    with pytest.raises(UserError, match=r"backbone\.extra\.head\.weight"):
        convert_checkpoint(ck)
    sd = tiny_backbone("resnet50")
    sd["layer1.0.bn1.some_stat"] = torch.randn(2)
    with pytest.raises(UserError, match="layer1.0.bn1.some_stat"):
        convert_checkpoint(sd)


def test_missing_tensors():
    sd = tiny_backbone("resnet50")
    del sd["layer3.5.bn3.running_var"]
    with pytest.raises(UserError, match=r"missing: res4\.5\.conv3\.norm\.running_var"):
        convert_checkpoint(sd, depth=50)


def test_target_without_target():
    with pytest.raises(UserError, match="no target"):
        convert_checkpoint(ours("resnet18", method="simsiam"), target=True)
    ckpt, _ = _simsiam("resnet50")
    with pytest.raises(UserError, match="no target"):
        convert_checkpoint(ckpt, target=True)


def test_bad_declared_backbone():
    ck = ours("resnet18")
    ck["backbone"] = "resnet50"
    with pytest.raises(UserError, match="ResNet-50"):
        convert_checkpoint(ck)
    ck["backbone"] = "vit_small"
    with pytest.raises(UserError, match="vit_small"):
        convert_checkpoint(ck)


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        convert_file(tmp_path / "nope.pth", tmp_path / "out.pkl")
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        convert_file(tmp_path / "garbage.pth", tmp_path / "out.pkl")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(UserError, match="not a checkpoint"):
        convert_file(tmp_path / "tensor.pth", tmp_path / "out.pkl")
    assert not (tmp_path / "out.pkl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pth", "tensor.pth"]


def test_legacy_pickle_needs_flag(tmp_path):
    ck = ours("resnet18")
    ck["args"] = argparse.Namespace(lr=0.1)  # arbitrary object: weights_only refuses it
    torch.save(ck, tmp_path / "legacy.pth")
    with pytest.raises(UserError, match="--unsafe-legacy-pickle") as err:
        convert_file(tmp_path / "legacy.pth", tmp_path / "out.pkl")
    assert "argparse.Namespace" in str(err.value)
    assert not (tmp_path / "out.pkl").exists()
    conv = convert_file(tmp_path / "legacy.pth", tmp_path / "out.pkl", unsafe_legacy_pickle=True)
    assert_same_arrays(load_d2_pkl(tmp_path / "out.pkl")["model"], conv.model)


def test_load_d2_pkl_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump({"model": {"x": Evil()}}, fh)
    with pytest.raises(UserError, match="not a detectron2 weights pickle"):
        load_d2_pkl(tmp_path / "evil.pkl")
    with open(tmp_path / "list.pkl", "wb") as fh:
        pickle.dump([1, 2], fh)
    with pytest.raises(UserError, match="no 'model'"):
        load_d2_pkl(tmp_path / "list.pkl")


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/convert_to_d2.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_success_and_failure(tmp_path, capsys):
    from detection.convert import main

    torch.save(ours("resnet50"), tmp_path / "ckpt.pth")
    out = tmp_path / "sub" / "r50.pkl"
    res = run_main(main, [tmp_path / "ckpt.pth", out, "--target"], capsys)
    assert res.returncode == 0, res.stderr
    assert "prefix='target_backbone.'" in res.stdout and "depth=50" in res.stdout and "tensors=265" in res.stdout
    assert len(res.stdout.strip().splitlines()) == 1
    with open(out, "rb") as fh:
        data = pickle.load(fh)
    assert data["__author__"] == "rimifm" and data["matching_heuristics"] is True
    assert_same_arrays(data["model"], expected_d2(tiny_backbone("resnet50", 4, with_fc=False)))
    assert [p.name for p in out.parent.iterdir()] == ["r50.pkl"]  # no temp file left

    bad = tmp_path / "bad.pkl"  # by path, as a user types it
    res = _cli(str(tmp_path / "ckpt.pth"), str(bad), "--depth", "18")
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not bad.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "sub"]
