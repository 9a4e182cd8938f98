import pickle

import pytest
import torch

from pretrain.config import config_hash, load_config
from pretrain.training.checkpoint import check_compatible
from rimifm.errors import UserError
from rimifm.io import atomic_torch_save, load_checkpoint


def test_every_shipped_config_loads():
    from pretrain.config import CONFIG_DIR

    names = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    assert {"synthetic_byol.yaml", "synthetic_simsiam.yaml", "cifar10_byol.yaml", "cifar100_simsiam.yaml",
            "imagenet_byol.yaml", "imagenet_simsiam.yaml"} <= set(names)
    for n in names:
        load_config(n)


def test_base_inheritance_and_overrides():
    cfg = load_config("cifar100_simsiam.yaml", ["RIM.ENABLED", "true", "IFM.WEIGHT", "0", "AUG.BLUR_PROB", "[1, 0]"])
    assert cfg.METHOD == "simsiam" and cfg.DATA.DATASET == "cifar100" and cfg.MODEL.CIFAR_STEM
    assert cfg.RIM.ENABLED is True and cfg.IFM.WEIGHT == 0.0 and cfg.AUG.BLUR_PROB == [1.0, 0.0]


def test_unknown_key_in_file_and_command_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("RIM:\n  RATOI: 0.2\n")
    with pytest.raises(UserError, match="RATOI"):
        load_config(str(bad))
    with pytest.raises(UserError, match="IFM.WIEGHT"):
        load_config(None, ["IFM.WIEGHT", "1"])


def test_bad_values_name_the_key():
    with pytest.raises(UserError, match="RIM.FILL"):
        load_config(None, ["RIM.FILL", "mean"])
    with pytest.raises(UserError, match="RIM.RATIO"):
        load_config(None, ["RIM.RATIO", "1.5"])
    with pytest.raises(UserError, match="no value"):
        load_config(None, ["RIM.RATIO"])
    with pytest.raises(UserError, match="not found"):
        load_config("no_such_config.yaml")


def test_config_hash_ignores_output_dir_only():
    a = load_config(None, ["OUTPUT_DIR", "x"])
    b = load_config(None, ["OUTPUT_DIR", "y"])
    c = load_config(None, ["RIM.ENABLED", "true"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_checkpoint_round_trip_and_atomicity(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"format": "rimifm-pretrain", "method": "byol", "backbone": "resnet18",
             "model": net.state_dict(), "optimizer": opt.state_dict(), "step": 7}
    path = tmp_path / "ck" / "last.pth"
    atomic_torch_save(state, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temporary left behind
    loaded = load_checkpoint(path)
    net2 = torch.nn.Linear(3, 2)
    net2.load_state_dict(loaded["model"])
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    check_compatible(loaded, path, "byol", "resnet18")
    with pytest.raises(UserError, match="simsiam"):
        check_compatible(loaded, path, "simsiam", "resnet18")
    with pytest.raises(UserError, match="resnet50"):
        check_compatible(loaded, path, "byol", "resnet50")


class _Legacy:
    pass


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(junk)
    legacy = tmp_path / "legacy.pth"
    torch.save({"obj": _Legacy()}, legacy)
    with pytest.raises(UserError, match="--unsafe-legacy-pickle"):
        load_checkpoint(legacy)
    assert isinstance(load_checkpoint(legacy, unsafe_legacy_pickle=True)["obj"], _Legacy)
    with pytest.raises(UserError, match="not a pretraining checkpoint"):
        check_compatible({"model": {}}, junk, "byol", "resnet18")


def test_pickle_module_is_not_needed_for_plain_checkpoints(tmp_path):
    p = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2)}, p)
    assert torch.equal(load_checkpoint(p)["w"], torch.ones(2))
    assert pickle  # the unsafe path is opt-in only


@pytest.mark.parametrize("where", ["before", "after"])
def test_print_config_prints_the_merged_yaml_and_reads_no_data(tmp_path, capsys, where):
    """`--print-config` works before or after the KEY VALUE pairs; the YAML it prints loads back to the
    same config; DATA.ROOT points nowhere, so any data access would fail."""
    from pretrain.training.cli import main
    from tests.helpers import run_main

    pairs = ["OPTIM.BASE_LR", "2", "DATA.ROOT", str(tmp_path / "missing"), "RIM.ENABLED", "true"]
    argv = ["--config", "cifar10_byol.yaml"] + (["--print-config"] + pairs if where == "before" else pairs + ["--print-config"])
    r = run_main(main, argv, capsys)
    assert r.returncode == 0, r.stderr
    printed = tmp_path / "printed.yaml"
    printed.write_text(r.stdout)
    again = load_config(str(printed))
    want = load_config("cifar10_byol.yaml", pairs)
    assert again.dump() == want.dump()
    assert again.OPTIM.BASE_LR == 2.0 and again.RIM.ENABLED and again.OPTIM.LARS_FORM == "solo-learn"
    assert not (tmp_path / "missing").exists() and not any(tmp_path.glob("outputs"))
