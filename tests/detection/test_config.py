"""Detection configs: lookup, `_BASE_` chains read with fvcore, the VOC protocol values, naming."""

from __future__ import annotations

from pathlib import Path

import pytest
from fvcore.common.config import CfgNode

from detection.config import (
    CONFIG_DIR,
    add_rimifm_config,
    available_configs,
    check_override_pairs,
    default_output_dir,
    protocol_string,
    read_config,
    resolve_config_path,
)
from rimifm.errors import UserError

SHIPPED = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def test_bare_name_is_found_in_detection_configs() -> None:
    assert resolve_config_path("voc_r50.yaml") == CONFIG_DIR / "voc_r50.yaml"
    assert resolve_config_path("voc_r50") == CONFIG_DIR / "voc_r50.yaml"


def test_a_path_is_used_as_is(tmp_path: Path) -> None:
    own = tmp_path / "voc_r50.yaml"  # same name as a shipped file: the path wins
    own.write_text(f'_BASE_: "{CONFIG_DIR / "voc_r50.yaml"}"\nSOLVER:\n  MAX_ITER: 7\n')
    assert resolve_config_path(str(own)) == own
    assert read_config(own)["SOLVER"]["MAX_ITER"] == 7
    assert read_config(own)["SOLVER"]["BASE_LR"] == 0.02  # inherited through two _BASE_ levels


def test_unknown_name_lists_the_available_configs() -> None:
    with pytest.raises(UserError, match=r"'voc_r5000\.yaml' not found.*voc_r50\.yaml") as info:
        resolve_config_path("voc_r5000.yaml")
    for name in available_configs():
        assert name in str(info.value)
    with pytest.raises(UserError, match="not found"):
        resolve_config_path("some/dir/voc_r50.yaml")  # a path is never looked up by name


def test_shipped_configs() -> None:
    assert {"voc_r50.yaml", "coco_r50_c4_1x.yaml", "coco_r50_fpn_1x.yaml", "synthetic_r18_fpn.yaml",
            "synthetic_r18_c4.yaml"} <= set(available_configs())
    assert all(not n.startswith("Base-") for n in available_configs())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_yaml_parses_with_fvcore_cfgnode(name: str) -> None:
    raw = CfgNode.load_yaml_with_base(str(CONFIG_DIR / name), allow_unsafe=False)
    node = CfgNode(raw)
    assert isinstance(node.MODEL, CfgNode)
    merged = read_config(name)
    assert merged["MODEL"]["META_ARCHITECTURE"] == "GeneralizedRCNN"
    assert merged["VERSION"] == 2
    if not name.startswith("Base-"):
        assert "_BASE_" not in merged and merged["DATASETS"]["TRAIN"] and merged["DATASETS"]["TEST"]
        assert merged["INPUT"]["FORMAT"] == "RGB"
        if name != "fmnist_scenes.yaml":  # normalised as its Fashion-MNIST pretraining was
            assert merged["MODEL"]["PIXEL_MEAN"] == [123.675, 116.28, 103.53]
            assert merged["MODEL"]["PIXEL_STD"] == [58.395, 57.12, 57.375]
        assert merged["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
        assert merged["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0
        assert merged["TEST"]["PRECISE_BN"]["ENABLED"] is True
        assert "RIMIFM" not in merged or set(merged["RIMIFM"]) <= {"SYNTHETIC_ROOT", "SCENES_ROOT", "STEM"}


def test_voc_r50_is_moco_protocol() -> None:
    c = read_config("voc_r50.yaml")
    m = c["MODEL"]
    assert m["RESNETS"]["NORM"] == "naiveSyncBN" and m["RESNETS"]["DEPTH"] == 50
    assert m["ROI_HEADS"] == {"NAME": "Res5ROIHeadsExtraNorm", "NUM_CLASSES": 20}
    assert m["BACKBONE"]["FREEZE_AT"] == 0 and m["MASK_ON"] is False
    assert m["RPN"] == {"PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 1000}
    assert m["RESNETS"]["STRIDE_IN_1X1"] is False
    assert c["INPUT"]["FORMAT"] == "RGB"
    assert m["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and m["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert c["INPUT"]["MIN_SIZE_TRAIN"] == tuple(range(480, 801, 32))
    assert c["INPUT"]["MIN_SIZE_TEST"] == 800
    s = c["SOLVER"]
    assert (s["IMS_PER_BATCH"], s["BASE_LR"], s["STEPS"], s["MAX_ITER"], s["WARMUP_ITERS"]) == \
        (16, 0.02, (18000, 22000), 24000, 100)
    assert c["TEST"]["PRECISE_BN"]["ENABLED"] is True
    assert c["DATASETS"] == {"TRAIN": ("voc_2007_trainval", "voc_2012_trainval"), "TEST": ("voc_2007_test",)}
    assert protocol_string(c) == "VOC07+12 R50-C4 24k"


def test_coco_and_synthetic_configs() -> None:
    c4 = read_config("coco_r50_c4_1x.yaml")
    assert c4["SOLVER"]["STEPS"] == (60000, 80000) and c4["SOLVER"]["MAX_ITER"] == 90000
    assert c4["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"
    assert c4["MODEL"]["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
    assert protocol_string(c4) == "COCO17 R50-C4 90k"
    fpn = read_config("coco_r50_fpn_1x.yaml")
    m = fpn["MODEL"]
    assert m["RESNETS"]["NORM"] == m["FPN"]["NORM"] == m["ROI_BOX_HEAD"]["NORM"] == "SyncBN"
    assert (m["ROI_BOX_HEAD"]["NAME"], m["ROI_BOX_HEAD"]["NUM_CONV"], m["ROI_BOX_HEAD"]["NUM_FC"]) == \
        ("FastRCNNConvFCHead", 4, 1)
    assert fpn["SOLVER"]["MAX_ITER"] == 90000 and protocol_string(fpn) == "COCO17 R50-FPN 90k"
    for name in ("synthetic_r18_fpn.yaml", "synthetic_r18_c4.yaml"):
        s = read_config(name)
        assert s["MODEL"]["RESNETS"]["DEPTH"] == 18 and s["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] == 64
        assert s["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 6 and s["MODEL"]["DEVICE"] == "cpu"
        assert s["DATASETS"] == {"TRAIN": ("synthetic_trainval",), "TEST": ("synthetic_test",)}
        assert s["INPUT"]["MIN_SIZE_TEST"] == 128 and s["SOLVER"]["MAX_ITER"] <= 500
    assert read_config("synthetic_r18_c4.yaml")["MODEL"]["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
    assert protocol_string(read_config("synthetic_r18_fpn.yaml")) == "synthetic R18-FPN 300it"


def test_rimifm_node_is_added_before_merging() -> None:
    cfg = add_rimifm_config(CfgNode({"OUTPUT_DIR": ""}))
    assert cfg.RIMIFM.SYNTHETIC_ROOT == ""
    cfg.merge_from_list(["RIMIFM.SYNTHETIC_ROOT", "/x"])
    assert cfg.RIMIFM.SYNTHETIC_ROOT == "/x"
    with pytest.raises(KeyError):
        cfg.merge_from_other_cfg(CfgNode({"RIMIFM": {"NOPE": 1}}))


def test_output_dir_naming_and_override_pairs() -> None:
    assert default_output_dir(CONFIG_DIR / "voc_r50.yaml") == str(Path("outputs/detection/voc_r50"))
    assert default_output_dir("voc_r50.yaml", "See Instructions") == str(Path("outputs/detection/voc_r50"))
    assert default_output_dir("voc_r50.yaml", "ckpt/byol_r50.pkl") == str(Path("outputs/detection/voc_r50-byol_r50"))
    assert check_override_pairs(["A", "1"]) == ["A", "1"]
    with pytest.raises(UserError, match="KEY VALUE pairs; 'B' has no value"):
        check_override_pairs(["A", "1", "B"])
    with pytest.raises(UserError, match="unknown option '--foo'"):
        check_override_pairs(["--foo", "1"])


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL: [unclosed\n")
    with pytest.raises(UserError, match=rf"{bad} is not valid YAML"):
        read_config(bad)
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text('_BASE_: "missing-base.yaml"\n')
    with pytest.raises(UserError, match=r"orphan\.yaml.*cannot be read"):
        read_config(orphan)
