"""The MNIST family from IDX files: exact round trip, RGB output, clear errors, and a short pretraining on it."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from pretrain.config import load_config
from pretrain.data.datasets import TwoViewDataset, build_splits
from pretrain.data.idx import IDXSource
from pretrain.data.views import ViewSpec
from rimifm.errors import UserError
from tests.helpers import make_idx_dataset, run_main, tiny_overrides


@pytest.mark.parametrize("gz", [True, False])
def test_pixels_and_labels_round_trip_as_rgb(tmp_path, gz):
    written = make_idx_dataset(tmp_path, train=20, test=10, classes=3, gz=gz)
    for train, split in ((True, "train"), (False, "test")):
        src = IDXSource(tmp_path, train=train)
        images, labels = written[split]
        assert len(src) == len(images) and src.labelled and src.classes == ["0", "1", "2"]
        assert src.labels == labels.tolist()
        for i in (0, len(src) - 1):
            img, label = src[i]
            assert img.mode == "RGB" and img.size == (28, 28) and label == int(labels[i])
            a = np.asarray(img)
            assert a.shape == (28, 28, 3) and all(np.array_equal(a[..., c], images[i]) for c in range(3))


def test_gz_is_preferred_and_plain_names_are_accepted_per_file(tmp_path):
    written = make_idx_dataset(tmp_path, gz=False)
    name = "train-images-idx3-ubyte"
    (tmp_path / name).rename(tmp_path / "raw")
    with gzip.open(tmp_path / f"{name}.gz", "wb") as fh:
        fh.write((tmp_path / "raw").read_bytes())
    assert np.array_equal(np.asarray(IDXSource(tmp_path)[3][0])[..., 0], written["train"][0][3])


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_a_missing_file_is_named_with_what_to_do(tmp_path, name):
    make_idx_dataset(tmp_path)
    (tmp_path / f"{name}.gz").unlink()
    with pytest.raises(UserError, match=f"{name}.gz not found; DATA.ROOT must hold the four IDX files") as info:
        IDXSource(tmp_path, train=name.startswith("train"))
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    with pytest.raises(UserError, match="does not exist; DATA.ROOT"):
        IDXSource(tmp_path / "nowhere")


def _rewrite(path, data: bytes) -> None:
    with gzip.open(path, "wb") as fh:
        fh.write(data)


def test_malformed_files_are_named(tmp_path):
    written = make_idx_dataset(tmp_path, train=20)
    images, labels = written["train"]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    # labels' magic number in the images file
    _rewrite(path, struct.pack(">II", 0x801, 20) + labels.tobytes())
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz is not a valid IDX file \(magic number "
                                        r"0x00000801, expected 0x00000803\)"):
        IDXSource(tmp_path)
    # a cut-short payload
    _rewrite(path, struct.pack(">IIII", 0x803, 20, 28, 28) + images.tobytes()[:-5])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz is not a valid IDX file \(15691 bytes, "
                                        r"but its header \[20, 28, 28\] needs 15696\)"):
        IDXSource(tmp_path)
    # not gzip at all
    path.write_bytes(b"not a gzip stream")
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz is not a valid IDX file .cannot read it"):
        IDXSource(tmp_path)
    # counts that disagree
    _rewrite(path, struct.pack(">IIII", 0x803, 19, 28, 28) + images[:19].tobytes())
    with pytest.raises(UserError, match="holds 19 images but .*train-labels-idx1-ubyte.gz holds 20 labels"):
        IDXSource(tmp_path)


def test_build_splits_and_views(tmp_path):
    make_idx_dataset(tmp_path, train=20, test=10)
    cfg = load_config(None, ["DATA.DATASET", "idx", "DATA.ROOT", str(tmp_path)])
    splits = build_splits(cfg)
    assert len(splits.train) == 20 and splits.knn_train is splits.train and len(splits.knn_val) == 10
    spec = ViewSpec(size=32)
    v1, v2 = TwoViewDataset(splits.train, (spec, spec), [0.286] * 3, [0.353] * 3)[0]
    assert v1.shape == v2.shape == (3, 32, 32)
    with pytest.raises(UserError, match="none does not exist; DATA.ROOT must hold the four IDX files"):
        build_splits(load_config(None, ["DATA.DATASET", "idx", "DATA.ROOT", str(tmp_path / "none")]))


def test_fmnist_config_loads():
    cfg = load_config("fmnist_byol.yaml", [])
    assert cfg.METHOD == "byol" and cfg.DATA.DATASET == "idx" and cfg.DATA.ROOT == "datasets/fashion-mnist"
    assert cfg.MODEL.BACKBONE == "resnet18" and not cfg.MODEL.CIFAR_STEM and cfg.DATA.IMAGE_SIZE == 32
    assert cfg.DATA.MEAN == [0.2860] * 3 and cfg.DATA.STD == [0.3530] * 3
    assert cfg.AUG.SATURATION == 0 and cfg.AUG.HUE == 0


@pytest.mark.slow
def test_short_pretraining_on_idx_files(tmp_path, capsys):
    from pretrain.training.cli import main

    root = tmp_path / "fmnist"
    make_idx_dataset(root, train=20, test=10)
    out = tmp_path / "run"
    args = tiny_overrides({"train": root, "val": ""}, out, **{
        "DATA.DATASET": "idx", "DATA.KNN_VAL": "", "MODEL.CIFAR_STEM": "true", "TRAIN.MAX_STEPS": "2",
        "TRAIN.KNN_PERIOD": "1", "TRAIN.KNN_K": "5", "DATA.MEAN": "[0.286, 0.286, 0.286]",
        "DATA.STD": "[0.353, 0.353, 0.353]"})
    r = run_main(main, args, capsys, threads=1)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "record.json").read_text())
    assert rec["steps"] == 2 and rec["dataset"]["name"] == "idx" and rec["dataset"]["images"] == 20
    assert 0 <= rec["metrics"]["knn_top1"] <= 100 and "knn_top1_init" in rec["metrics"]


def test_in_memory_images_skip_pil_with_the_same_tensors_and_subsets_keep_that(tmp_path):
    from pretrain.data.datasets import EvalDataset, first_images, subset
    from pretrain.data.views import eval_transform

    make_idx_dataset(tmp_path, train=12, test=4)
    source = IDXSource(tmp_path, train=True)
    mean, std = (0.3, 0.3, 0.3), (0.2, 0.2, 0.2)
    fast = EvalDataset(source, 28, mean, std)
    assert fast.array is not None and EvalDataset(source, 32, mean, std).array is None  # resized: PIL's path
    for i in range(len(source)):
        img, label = source[i]
        x, y = fast[i]
        assert torch.equal(x, eval_transform(img, 28, mean, std)) and y == label
    part = subset(source, [5, 2, 9])
    assert len(part) == 3 and np.array_equal(part.images[2], source.images[9]) and part.labels == [2, 2, 0]
    assert EvalDataset(part, 28, mean, std).array is not None
    assert len(first_images(source, 4)) == 4 and first_images(source, 0) is source
