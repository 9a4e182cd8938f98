"""Detection datasets: our VOC and COCO readers agree on the synthetic set, bad input stops cleanly,
and registration is lazy and idempotent (no detectron2 needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detection import datasets as ds
from detection.datasets import (
    XYXY_ABS,
    get_dataset_dicts,
    get_metadata,
    read_coco_json,
    read_voc_split,
    register_datasets,
    synthetic_root,
)
from rimifm.errors import UserError
from synthetic.generator import CLASSES, generate

SIZES = {"pretrain_images": 2, "cls_train_per_class": 1, "cls_val_per_class": 1, "det_trainval": 6,
         "det_test": 4, "det_image_size": 96}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A tiny synthetic set (10 detection images of 96 px), shared read-only by the tests here."""
    root = tmp_path_factory.mktemp("det_synth") / "synthetic"
    generate(root, seed=0, **SIZES)
    return root


@pytest.fixture
def voc_copy(synth: Path, tmp_path: Path) -> Path:
    """A private copy of the VOC folder for tests that break files."""
    dst = tmp_path / "VOC2007"
    shutil.copytree(synth / "detection" / "VOC2007", dst)
    return dst


def _voc(synth: Path) -> Path:
    return synth / "detection" / "VOC2007"


def _coco(synth: Path, split: str) -> Path:
    return synth / "detection" / "annotations" / f"instances_{split}.json"


# ----------------------------------------------------------------------------- readers agree


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_voc_and_coco_readers_give_the_same_images_and_boxes(synth: Path, split: str) -> None:
    voc = read_voc_split(_voc(synth), split, CLASSES)
    coco, meta = read_coco_json(_coco(synth, split), _voc(synth) / "JPEGImages")
    assert meta["thing_classes"] == list(CLASSES)
    assert meta["thing_dataset_id_to_contiguous_id"] == {i + 1: i for i in range(len(CLASSES))}
    assert len(voc) == len(coco) == SIZES[f"det_{split}"]
    for v, c in zip(voc, coco):
        assert v["file_name"] == c["file_name"] and Path(v["file_name"]).is_file()
        assert int(v["image_id"]) == c["image_id"]
        assert (v["height"], v["width"]) == (c["height"], c["width"]) == (96, 96)
        assert len(v["annotations"]) == len(c["annotations"]) >= 1
        for a, b in zip(v["annotations"], c["annotations"]):
            # VOC (xmin-1, ymin-1, xmax, ymax) == COCO [x, y, w, h] as (x, y, x+w, y+h)
            assert a["bbox"] == b["bbox"]
            assert a["bbox_mode"] == b["bbox_mode"] == XYXY_ABS
            assert a["category_id"] == b["category_id"]
            assert a["difficult"] == b["difficult"]
            assert a["iscrowd"] == b["iscrowd"] == 0


def test_voc_boxes_follow_detectron2_minus_one_convention(synth: Path) -> None:
    import xml.etree.ElementTree as ET

    rec = read_voc_split(_voc(synth), "test", CLASSES)[0]
    tree = ET.parse(_voc(synth) / "Annotations" / f"{rec['image_id']}.xml")
    obj = tree.findall("object")[0]
    xml_box = [float(obj.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
    assert rec["annotations"][0]["bbox"] == [xml_box[0] - 1, xml_box[1] - 1, xml_box[2], xml_box[3]]
    assert rec["annotations"][0]["category_id"] == CLASSES.index(obj.find("name").text)


def test_category_ids_cover_zero_to_five_and_difficult_flags_are_carried(synth: Path) -> None:
    recs = read_voc_split(_voc(synth), "trainval", CLASSES) + read_voc_split(_voc(synth), "test", CLASSES)
    cats = {a["category_id"] for r in recs for a in r["annotations"]}
    assert cats <= set(range(6)) and len(cats) >= 3
    xml_difficult = sum(p.read_text().count("<difficult>1</difficult>")
                        for p in (_voc(synth) / "Annotations").glob("*.xml"))
    assert sum(a["difficult"] for r in recs for a in r["annotations"]) == xml_difficult
    coco = [json.loads(_coco(synth, s).read_text()) for s in ("trainval", "test")]
    assert sum(a["difficult"] for c in coco for a in c["annotations"]) == xml_difficult


# ----------------------------------------------------------------------------- bad input


def test_malformed_xml_names_the_file(voc_copy: Path) -> None:
    ids = (voc_copy / "ImageSets" / "Main" / "test.txt").read_text().split()
    bad = voc_copy / "Annotations" / f"{ids[1]}.xml"
    bad.write_text("<annotation><object></annotation>")
    with pytest.raises(UserError, match=rf"{bad}.*not valid XML"):
        read_voc_split(voc_copy, "test", CLASSES)


def test_missing_image_names_the_file(voc_copy: Path) -> None:
    ids = (voc_copy / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    img = voc_copy / "JPEGImages" / f"{ids[2]}.jpg"
    img.unlink()
    with pytest.raises(UserError, match=rf"image file {img} does not exist"):
        read_voc_split(voc_copy, "trainval", CLASSES)


def test_unknown_class_names_the_file(voc_copy: Path) -> None:
    ids = (voc_copy / "ImageSets" / "Main" / "test.txt").read_text().split()
    xml = voc_copy / "Annotations" / f"{ids[0]}.xml"
    text = xml.read_text()
    name = text.split("<name>")[1].split("</name>")[0]
    xml.write_text(text.replace(f"<name>{name}</name>", "<name>pentagon</name>", 1))
    with pytest.raises(UserError, match=rf"{xml}.*unknown class 'pentagon'"):
        read_voc_split(voc_copy, "test", CLASSES)


def test_missing_box_coordinate_names_the_file(voc_copy: Path) -> None:
    ids = (voc_copy / "ImageSets" / "Main" / "test.txt").read_text().split()
    xml = voc_copy / "Annotations" / f"{ids[0]}.xml"
    text = xml.read_text()
    start, end = text.index("<xmax>"), text.index("</xmax>") + len("</xmax>")
    xml.write_text(text[:start] + text[end:])
    with pytest.raises(UserError, match=rf"{xml}.*bndbox"):
        read_voc_split(voc_copy, "test", CLASSES)


def test_missing_split_file_and_folder_name_the_path(voc_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"split file .*ImageSets/Main/val\.txt does not exist"):
        read_voc_split(voc_copy, "val", CLASSES)
    missing = tmp_path / "VOC2012"
    with pytest.raises(UserError, match=rf"VOC folder {missing} does not exist"):
        read_voc_split(missing, "trainval", CLASSES)


def test_malformed_json_names_the_file(synth: Path, tmp_path: Path) -> None:
    bad = tmp_path / "instances_test.json"
    bad.write_text(_coco(synth, "test").read_text()[:-40])
    with pytest.raises(UserError, match=rf"{bad} is not valid JSON"):
        read_coco_json(bad, _voc(synth) / "JPEGImages")


def test_coco_unknown_category_and_missing_image_name_the_file(synth: Path, tmp_path: Path) -> None:
    data = json.loads(_coco(synth, "test").read_text())
    data["annotations"][0]["category_id"] = 42
    bad = tmp_path / "unknown_cat.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{bad}.*category_id 42"):
        read_coco_json(bad, _voc(synth) / "JPEGImages")
    data = json.loads(_coco(synth, "test").read_text())
    data["images"][0]["file_name"] = "nope.jpg"
    bad = tmp_path / "missing_image.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"image file .*nope\.jpg does not exist"):
        read_coco_json(bad, _voc(synth) / "JPEGImages")
    with pytest.raises(UserError, match=r"COCO annotation file .*absent\.json does not exist"):
        read_coco_json(tmp_path / "absent.json", _voc(synth) / "JPEGImages")


# ----------------------------------------------------------------------------- registry


def test_registration_is_lazy_idempotent_and_loads_by_name(synth: Path, tmp_path: Path) -> None:
    empty_root = tmp_path / "nothing_here"
    names = register_datasets(root=str(empty_root), synthetic=str(synth), detectron2=False)
    assert {"voc_2007_trainval", "voc_2012_trainval", "voc_2007_test", "coco_2017_train", "coco_2017_val",
            "synthetic_trainval", "synthetic_test"} <= set(names)
    assert not empty_root.exists()  # nothing was read or created
    before = dict(ds.REGISTRY)
    assert register_datasets(root=str(empty_root), synthetic=str(synth), detectron2=False) == names
    assert ds.REGISTRY == before

    meta = get_metadata("voc_2007_test")
    assert meta["evaluator_type"] == "pascal_voc" and meta["year"] == 2007 and meta["split"] == "test"
    assert meta["dirname"] == str(empty_root / "VOC2007") and len(meta["thing_classes"]) == 20
    assert get_metadata("coco_2017_val")["json_file"] == str(empty_root / "coco/annotations/instances_val2017.json")
    smeta = get_metadata("synthetic_test")
    assert smeta["thing_classes"] == list(CLASSES) and smeta["year"] == 2007
    assert smeta["dirname"] == str(synth / "detection" / "VOC2007")

    test = get_dataset_dicts("synthetic_test")
    assert [r["image_id"] for r in test] == (_voc(synth) / "ImageSets/Main/test.txt").read_text().split()
    with pytest.raises(UserError, match=r"dataset voc_2012_trainval: folder .*VOC2012 does not exist"):
        get_dataset_dicts("voc_2012_trainval")
    with pytest.raises(UserError, match=r"coco.*annotations/instances_train2017\.json does not exist"):
        get_dataset_dicts("coco_2017_train")
    with pytest.raises(UserError, match=r"unknown dataset 'voc_2099_test'; known: .*synthetic_test"):
        get_dataset_dicts("voc_2099_test")


def test_missing_synthetic_set_says_how_to_make_it(tmp_path: Path) -> None:
    register_datasets(root=str(tmp_path), synthetic=str(tmp_path / "synth"), detectron2=False)
    with pytest.raises(UserError, match=r"make_synthetic\.py --out .*synth"):
        get_dataset_dicts("synthetic_trainval")


def test_synthetic_root_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIMIFM_SYNTHETIC", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert synthetic_root() == str(Path("datasets") / "synthetic")
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert synthetic_root() == "/data/d2/synthetic"
    monkeypatch.setenv("RIMIFM_SYNTHETIC", "/data/synth")
    assert synthetic_root() == "/data/synth"
    assert synthetic_root("/cfg/synth") == "/cfg/synth"
