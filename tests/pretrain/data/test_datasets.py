import pickle

import numpy as np
import pytest
import torch

from pretrain.config import load_config
from pretrain.data.datasets import CIFARSource, EpochSampler, ImageFolderSource, TwoViewDataset, build_splits
from pretrain.data.views import ViewSpec, crop_box
from rimifm.errors import UserError
from tests.helpers import make_image_folder


def test_image_folder_labelled_and_flat(tmp_path):
    lab = ImageFolderSource(make_image_folder(tmp_path / "lab", classes=2, per_class=3))
    assert lab.labelled and lab.classes == ["class0", "class1"] and len(lab) == 6
    assert lab.labels == [0, 0, 0, 1, 1, 1]
    flat = ImageFolderSource(make_image_folder(tmp_path / "flat", classes=2, per_class=3, labelled=False))
    assert not flat.labelled and len(flat) == 6 and set(flat.labels) == {-1}
    img, label = lab[4]
    assert img.size == (16, 16) and label == 1


def test_missing_empty_and_unreadable(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="contains no images"):
        ImageFolderSource(tmp_path / "empty")
    with pytest.raises(UserError, match="no labelled images"):
        ImageFolderSource(make_image_folder(tmp_path / "flat", labelled=False), require_labels=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\x00garbage")
    src = ImageFolderSource(bad)
    with pytest.raises(UserError, match="broken.jpg"):
        src[0]


def _write_cifar(root, name="cifar10"):
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    key = b"labels" if name == "cifar10" else b"fine_labels"
    for f in files:
        with open(folder / f, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), key: [0, 1, 2, 3]}, fh)
    return folder


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_format(tmp_path, name):
    _write_cifar(tmp_path, name)
    train = CIFARSource(tmp_path, name, train=True)
    test = CIFARSource(tmp_path, name, train=False)
    assert len(train) == (20 if name == "cifar10" else 4) and len(test) == 4
    img, label = train[1]
    assert img.size == (32, 32) and label == 1
    with pytest.raises(UserError, match="never downloads"):
        CIFARSource(tmp_path / "missing", name)


def test_cifar_missing_batch_file(tmp_path):
    folder = _write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        CIFARSource(tmp_path, "cifar10")


def test_synthetic_missing_gives_the_command_to_make_it(tmp_path):
    cfg = load_config(None, ["DATA.ROOT", str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="make_synthetic.py"):
        build_splits(cfg)


def test_views_are_per_sample_and_keyed_by_seed_epoch_index(tmp_path):
    src = ImageFolderSource(make_image_folder(tmp_path / "d", classes=1, per_class=2, size=32))
    spec = ViewSpec(size=16)
    ds = TwoViewDataset(src, (spec, spec), [0.5] * 3, [0.25] * 3, seed=1)
    a1, a2 = ds[0]
    b1, b2 = ds[0]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # same key -> same views
    assert not torch.equal(a1, a2)  # two different views of one image
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], a1)  # a new epoch draws new parameters


def test_crop_box_respects_scale_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop_box(rng, 40, 30, (0.2, 1.0))
        assert 0 <= top and 0 <= left and top + h <= 30 and left + w <= 40
        assert h * w >= 0.2 * 1200 * 0.9


def test_epoch_sampler_partitions_and_resumes():
    s0, s1 = EpochSampler(23, 4, 0, 2, seed=3), EpochSampler(23, 4, 1, 2, seed=3)
    assert s0.steps_per_epoch() == 2
    a, b = list(s0), list(s1)
    assert len(a) == len(b) == 8 and not set(a) & set(b)
    s0.set_epoch(0, start_step=1)
    assert list(s0) == a[4:]
    s0.set_epoch(1)
    assert list(s0) != a
    with pytest.raises(UserError, match="fewer than one global batch"):
        EpochSampler(3, 4)
