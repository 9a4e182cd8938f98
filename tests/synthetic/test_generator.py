"""Tests of the synthetic benchmark generator (tiny sizes; the whole file runs in a few seconds)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rimifm.errors import UserError
from synthetic import generator as synthetic
from synthetic.generator import CLASSES, DEFAULT_SIZES, generate, is_complete, read_meta
from tests.helpers import REPO

SMALL = dict(pretrain_images=12, cls_train_per_class=3, cls_val_per_class=2, det_trainval=4, det_test=3,
             image_size=32, det_image_size=96)
# Enough detection images for difficult / truncated objects to appear; classification kept minimal.
DET = dict(pretrain_images=1, cls_train_per_class=1, cls_val_per_class=1, det_trainval=20, det_test=20,
           image_size=16, det_image_size=96)
TINY = dict(pretrain_images=2, cls_train_per_class=1, cls_val_per_class=1, det_trainval=1, det_test=1,
            image_size=16, det_image_size=32)


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_voc(path: Path) -> list[dict]:
    root = ET.parse(path).getroot()
    objs = []
    for o in root.findall("object"):
        b = o.find("bndbox")
        objs.append({"name": o.findtext("name"), "difficult": int(o.findtext("difficult")),
                     "truncated": int(o.findtext("truncated")), "pose": o.findtext("pose"),
                     **{k: int(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")}})
    return objs


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("small") / "synth", seed=0, **SMALL)


@pytest.fixture(scope="module")
def det_set(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("det") / "synth", seed=3, **DET)


def test_layout_and_counts(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir()) == ["classification", "detection", "meta.json", "pretrain"]
    meta = read_meta(small_set)
    assert meta == {"format": "rimifm-synthetic", "version": 2, "seed": 0, "sizes": {**DEFAULT_SIZES, **SMALL},
                    "classes": list(CLASSES)}
    assert is_complete(small_set)
    pre = sorted(small_set.glob("pretrain/*"))
    assert [p.name for p in pre] == [f"{i:06d}.png" for i in range(12)]
    with Image.open(pre[0]) as im:
        assert im.mode == "RGB" and im.size == (32, 32)
    for split, n in (("train", 3), ("val", 2)):
        folder = small_set / "classification" / split
        assert sorted(p.name for p in folder.iterdir()) == sorted(CLASSES)
        for c in CLASSES:
            assert sorted(p.name for p in (folder / c).iterdir()) == [f"{i:06d}.png" for i in range(n)]
    voc = small_set / "detection" / "VOC2007"
    assert sorted(p.name for p in voc.iterdir()) == ["Annotations", "ImageSets", "JPEGImages"]
    trainval = (voc / "ImageSets/Main/trainval.txt").read_text().split()
    test = (voc / "ImageSets/Main/test.txt").read_text().split()
    assert trainval == ["000001", "000002", "000003", "000004"] and test == ["000005", "000006", "000007"]
    assert sorted(p.stem for p in (voc / "JPEGImages").iterdir()) == trainval + test
    assert sorted(p.stem for p in (voc / "Annotations").iterdir()) == trainval + test
    with Image.open(voc / "JPEGImages" / "000001.jpg") as im:
        assert im.format == "JPEG" and im.size == (96, 96) and im.mode == "RGB"
    assert sorted(p.name for p in (small_set / "detection" / "annotations").iterdir()) == \
        ["instances_test.json", "instances_trainval.json"]


def test_same_seed_is_byte_identical_and_seed_matters(tmp_path: Path, small_set: Path) -> None:
    again = tree_hashes(generate(tmp_path / "a", seed=0, **SMALL))
    assert again == tree_hashes(small_set)
    other = tree_hashes(generate(tmp_path / "b", seed=1, **SMALL))
    assert set(other) == set(again)
    images = [k for k in again if k.endswith((".png", ".jpg"))]
    assert all(other[k] != again[k] for k in images)


def test_pretrain_classes_are_the_classes_the_images_were_drawn_with(small_set: Path) -> None:
    classes = synthetic.pretrain_classes(0, SMALL["pretrain_images"])
    assert len(set(classes)) > 1 and all(0 <= c < len(CLASSES) for c in classes)
    for i, cls in enumerate(classes):
        on_disk = np.asarray(Image.open(small_set / "pretrain" / f"{i:06d}.png"))
        rng = synthetic._rng(0, "pretrain", i)
        rng.integers(len(CLASSES))  # the class draw
        assert np.array_equal(np.asarray(synthetic._render_single(rng, 32, cls)), on_disk), i
        other = synthetic._rng(0, "pretrain", i)
        other.integers(len(CLASSES))
        assert not np.array_equal(np.asarray(synthetic._render_single(other, 32, (cls + 1) % len(CLASSES))), on_disk)


def test_voc_annotations(det_set: Path) -> None:
    voc = det_set / "detection" / "VOC2007"
    trainval = (voc / "ImageSets/Main/trainval.txt").read_text().split()
    test = (voc / "ImageSets/Main/test.txt").read_text().split()
    assert len(trainval) == 20 and len(test) == 20 and not set(trainval) & set(test)
    objs = []
    for image_id in trainval + test:
        assert (voc / "JPEGImages" / f"{image_id}.jpg").is_file()
        root = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
        assert root.findtext("folder") == "VOC2007" and root.findtext("filename") == f"{image_id}.jpg"
        assert [root.findtext(f"size/{k}") for k in ("width", "height", "depth")] == ["96", "96", "3"]
        per_image = read_voc(voc / "Annotations" / f"{image_id}.xml")
        assert per_image, "every image has at least one annotated object"
        objs += per_image
    for o in objs:
        assert o["name"] in CLASSES and o["pose"] == "Unspecified"
        assert 1 <= o["xmin"] <= o["xmax"] <= 96 and 1 <= o["ymin"] <= o["ymax"] <= 96
        assert o["xmax"] - o["xmin"] + 1 >= 4 and o["ymax"] - o["ymin"] + 1 >= 4
    difficult = sum(o["difficult"] for o in objs)
    assert 0 < difficult < len(objs) / 2, (difficult, len(objs))
    assert 0 < sum(o["truncated"] for o in objs) < len(objs)
    assert len({o["name"] for o in objs}) == len(CLASSES)


def test_coco_matches_voc(det_set: Path) -> None:
    from pycocotools.coco import COCO

    voc = det_set / "detection" / "VOC2007"
    for split in ("trainval", "test"):
        ids = (voc / "ImageSets/Main" / f"{split}.txt").read_text().split()
        coco = COCO(str(det_set / "detection" / "annotations" / f"instances_{split}.json"))
        assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(CLASSES)
        assert sorted(coco.cats) == list(range(1, len(CLASSES) + 1))
        assert sorted(coco.getImgIds()) == [int(i) for i in ids]
        for image_id in ids:
            img = coco.loadImgs(int(image_id))[0]
            assert img["file_name"] == f"{image_id}.jpg" and img["width"] == img["height"] == 96
            anns = coco.loadAnns(coco.getAnnIds(imgIds=int(image_id)))
            objs = read_voc(voc / "Annotations" / f"{image_id}.xml")
            assert len(anns) == len(objs)
            for a, o in zip(sorted(anns, key=lambda a: a["id"]), objs):
                w, h = o["xmax"] - o["xmin"] + 1, o["ymax"] - o["ymin"] + 1
                assert a["bbox"] == [o["xmin"] - 1, o["ymin"] - 1, w, h]
                assert all(isinstance(v, float) for v in a["bbox"])
                assert a["area"] == w * h and a["iscrowd"] == 0 and a["difficult"] == o["difficult"]
                assert coco.cats[a["category_id"]]["name"] == o["name"]
        ann_ids = sorted(coco.getAnnIds())
        assert ann_ids == list(range(1, len(ann_ids) + 1))
    text = (det_set / "detection" / "annotations" / "instances_test.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


def test_reuse_mismatch_and_force(tmp_path: Path) -> None:
    out = generate(tmp_path / "s", seed=0, **TINY)
    meta_mtime = (out / "meta.json").stat().st_mtime_ns
    img_mtime = (out / "pretrain" / "000000.png").stat().st_mtime_ns
    assert generate(out, seed=0, **TINY) == out
    assert (out / "meta.json").stat().st_mtime_ns == meta_mtime
    assert (out / "pretrain" / "000000.png").stat().st_mtime_ns == img_mtime
    with pytest.raises(UserError, match="seed 0 .requested 1.*--force"):
        generate(out, seed=1, **TINY)
    with pytest.raises(UserError, match="pretrain_images 2 .requested 3"):
        generate(out, seed=0, **{**TINY, "pretrain_images": 3})
    generate(out, seed=0, force=True, **{**TINY, "pretrain_images": 3})
    assert read_meta(out)["sizes"]["pretrain_images"] == 3
    assert len(list((out / "pretrain").iterdir())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["s"], "no temporary folders left behind"


def test_existing_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a complete synthetic set.*--force"):
        generate(out, **TINY)
    with pytest.raises(UserError, match="refusing to delete"):
        generate(out, force=True, **TINY)
    assert (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_complete(generate(empty, **TINY))


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "s.partial-4999999"  # a pid above Linux's maximum: a dead run
    stale.mkdir()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_render_detection", boom)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "s", **TINY)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ([] if os.name != "nt" else ["s.partial-4999999"])
    assert not is_complete(tmp_path / "s")


@pytest.mark.parametrize("bad, option", [
    ({"image_size": 8}, "image_size"),
    ({"pretrain_images": 0}, "pretrain_images"),
    ({"det_test": -1}, "det_test"),
    ({"cls_val_per_class": 2.5}, "cls_val_per_class"),
    ({"det_image_size": True}, "det_image_size"),
    ({"colour": 3}, "colour"),
])
def test_bad_sizes(tmp_path: Path, bad: dict, option: str) -> None:
    with pytest.raises(UserError, match=option):
        generate(tmp_path / "s", **bad)
    assert not (tmp_path / "s").exists()


def test_bad_seed(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="seed"):
        generate(tmp_path / "s", seed=-1, **TINY)


def test_read_meta_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="meta.json missing"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        read_meta(tmp_path)
    assert not is_complete(tmp_path)


def test_set_of_another_generator_version_is_refused_with_the_command_to_regenerate(tmp_path: Path) -> None:
    from pretrain.config import load_config
    from pretrain.data.datasets import build_splits

    out = generate(tmp_path / "s", **TINY)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": synthetic.VERSION - 1}))
    with pytest.raises(UserError, match=rf"version-{synthetic.VERSION - 1} synthetic set .* pass --force"):
        generate(out, **TINY)
    cfg = load_config(None, ["DATA.DATASET", "synthetic", "DATA.ROOT", str(out)])
    with pytest.raises(UserError, match=r"version \d+ \(expected \d+\).*make_synthetic.py --out .* --force"):
        build_splits(cfg)
    assert read_meta(generate(out, force=True, **TINY))["version"] == synthetic.VERSION


def test_class_is_not_encoded_in_colour(tmp_path: Path) -> None:
    """Per-class mean colours agree, and a nearest-mean-colour classifier is near chance."""
    out = generate(tmp_path / "s", **{**TINY, "cls_train_per_class": 50, "cls_val_per_class": 30, "image_size": 32})

    def mean_colours(split: str) -> list[np.ndarray]:
        folder = out / "classification" / split
        return [np.stack([np.asarray(Image.open(p), dtype=float).mean((0, 1))
                          for p in sorted((folder / c).iterdir())]) for c in CLASSES]

    train, val = mean_colours("train"), mean_colours("val")
    centroids = np.stack([m.mean(0) for m in train])
    spread = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1).max()
    assert spread < 40.0, centroids
    x = np.concatenate(val)
    y = np.concatenate([np.full(len(m), i) for i, m in enumerate(val)])
    pred = np.linalg.norm(x[:, None] - centroids[None], axis=-1).argmin(1)
    assert (pred == y).mean() < 0.35


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "make_synthetic.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli(tmp_path: Path) -> None:
    sizes = ["--pretrain-images", "2", "--cls-train-per-class", "1", "--cls-val-per-class", "1",
             "--det-trainval", "1", "--det-test", "1", "--image-size", "16", "--det-image-size", "32"]
    out = tmp_path / "cli"
    first = run_cli("--out", str(out), "--seed", "5", *sizes)
    assert first.returncode == 0, first.stderr
    assert "generated" in first.stdout and str(out) in first.stdout and first.stdout.count("\n") == 1
    assert read_meta(out)["seed"] == 5
    second = run_cli("--out", str(out), "--seed", "5", *sizes)
    assert second.returncode == 0 and "reused" in second.stdout
    clash = run_cli("--out", str(out), "--seed", "6", *sizes)
    assert clash.returncode == 2 and "--force" in clash.stderr
    bad = run_cli("--out", str(tmp_path / "bad"), "--image-size", "4")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error:") and "image_size" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
