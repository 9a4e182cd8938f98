"""The Fashion-MNIST scenes generator on tiny IDX files of made-up items (no real data, a few seconds)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detection.datasets import get_dataset_dicts, read_coco_json, read_voc_split, register_datasets
from rimifm.errors import UserError
from synthetic.cli import scenes_main
from synthetic.fmnist_scenes import CLASSES, INK, generate, render_scene, resolve_sizes
from tests.helpers import make_idx_dataset, run_main

SIZES = dict(trainval=12, test=8, canvas=112)
TRAIN_INK, TEST_INK = 250, 150  # the two splits' items differ in brightness, so a scene shows where its items came from


def _items(n: int, value: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` 28 px frames, each a filled rectangle of random extent (4-28 px a side) at a random spot: the ink
    never fills the frame, as with real clothes, so a tight box differs from the frame's."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for image in images:
        h, w = rng.integers(4, 29, 2)
        y, x = rng.integers(0, 29 - h), rng.integers(0, 29 - w)
        image[y:y + h, x:x + w] = value
    return images, (np.arange(n) % len(CLASSES)).astype(np.uint8)


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("fmnist")
    make_idx_dataset(root, arrays={"train": _items(40, TRAIN_INK, rng), "test": _items(30, TEST_INK, rng)})
    return root


@pytest.fixture(scope="module")
def scenes(idx_root, tmp_path_factory) -> Path:
    return generate(idx_root, tmp_path_factory.mktemp("out") / "fmnist-scenes", seed=3, **SIZES)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_boxes_are_tight_on_each_item_s_pixels():
    rng = np.random.default_rng(1)
    images, labels = _items(50, 200, rng)
    sizes = resolve_sizes({"items_max": 6})
    seen = 0
    for i in range(40):
        canvas, objects = render_scene(np.random.default_rng(i), images, labels, sizes)
        assert 1 <= len(objects) <= 6
        ink = canvas > INK
        covered = np.zeros_like(ink)
        for o in objects:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 <= x1 < 112 and 0 <= y0 <= y1 < 112 and o["label"] == labels[o["index"]]
            covered[y0:y1 + 1, x0:x1 + 1] = True
            # every edge of the box touches ink: no slack, whatever the frame's size
            assert ink[y0, x0:x1 + 1].any() and ink[y1, x0:x1 + 1].any()
            assert ink[y0:y1 + 1, x0].any() and ink[y0:y1 + 1, x1].any()
            seen += 1
        assert not (ink & ~covered).any()  # and no ink outside the boxes
    assert seen > 60


def test_train_and_test_scenes_take_items_from_their_own_split_only(scenes, idx_root):
    sources = json.loads((scenes / "sources.json").read_text())
    voc = scenes / "VOC2007"
    trainval = (voc / "ImageSets/Main/trainval.txt").read_text().split()
    test = (voc / "ImageSets/Main/test.txt").read_text().split()
    assert len(trainval) == 12 and len(test) == 8 and not set(trainval) & set(test)
    assert all(split == "train" for i in trainval for split, _ in sources[i])
    assert all(split == "t10k" for i in test for split, _ in sources[i])
    for ids, brightness in ((trainval, TRAIN_INK), (test, TEST_INK)):  # the pixels agree with sources.json
        for i in ids:
            peak = int(np.asarray(Image.open(voc / "JPEGImages" / f"{i}.jpg").convert("L")).max())
            assert abs(peak - brightness) < 20


def test_the_voc_and_coco_files_parse_with_the_suite_s_readers(scenes):
    sources = json.loads((scenes / "sources.json").read_text())
    for split in ("trainval", "test"):
        records = read_voc_split(scenes / "VOC2007", split, CLASSES)
        coco, meta = read_coco_json(scenes / "annotations" / f"instances_{split}.json", scenes / "VOC2007/JPEGImages")
        assert meta["thing_classes"] == list(CLASSES) and len(coco) == len(records)
        for r, c in zip(records, coco):
            assert (r["height"], r["width"]) == (112, 112) and len(r["annotations"]) == len(sources[r["image_id"]])
            assert [a["bbox"] for a in r["annotations"]] == [a["bbox"] for a in c["annotations"]]
            assert [a["category_id"] for a in r["annotations"]] == [a["category_id"] for a in c["annotations"]]


def test_deterministic_from_the_seed_and_reused_only_with_the_same_settings(scenes, idx_root, tmp_path):
    again = generate(idx_root, tmp_path / "again", seed=3, **SIZES)
    assert _hashes(again) == _hashes(scenes)
    assert _hashes(generate(idx_root, tmp_path / "other", seed=4, **SIZES)) != _hashes(scenes)
    before = _hashes(again)
    assert generate(idx_root, again, seed=3, **SIZES) == again and _hashes(again) == before  # reused
    with pytest.raises(UserError, match=r"different settings: seed 3 \(requested 4\).*--force"):
        generate(idx_root, again, seed=4, **SIZES)
    other_items = tmp_path / "items"
    make_idx_dataset(other_items, arrays={"train": _items(40, 240, np.random.default_rng(9)),
                                          "test": _items(30, 140, np.random.default_rng(9))})
    with pytest.raises(UserError, match=r"different settings: source .*sha256"):
        generate(other_items, again, seed=3, **SIZES)


def test_bad_input_gets_one_clear_line(idx_root, tmp_path, capsys):
    (tmp_path / "partial").mkdir()
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz not found; --root must hold the four IDX files"):
        generate(tmp_path / "partial", tmp_path / "out")
    with pytest.raises(UserError, match=r"a canvas of 48 px \(--canvas\) is too small for items of up to 64 px "
                                        r"\(--item-max\)"):
        generate(idx_root, tmp_path / "out", canvas=48)
    with pytest.raises(UserError, match=r"items_min \(--items-min\) 5 is above items_max"):
        resolve_sizes({"items_min": 5})
    assert not (tmp_path / "out").exists()
    result = run_main(scenes_main, ["--root", str(tmp_path / "partial"), "--out", str(tmp_path / "o")], capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--root" in result.stderr and "must hold" in result.stderr


def test_the_command_writes_where_the_detection_configs_look(idx_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    result = run_main(scenes_main, ["--root", str(idx_root), "--trainval", "3", "--test", "2"], capsys)
    assert result.returncode == 0 and "3 trainval scenes of training items + 2 test scenes of t10k items" in result.stdout
    register_datasets(detectron2=False)
    try:
        assert len(get_dataset_dicts("fmnist_scenes_trainval")) == 3
        assert len(get_dataset_dicts("fmnist_scenes_test")) == 2
    finally:
        monkeypatch.undo()
        register_datasets(detectron2=False)
