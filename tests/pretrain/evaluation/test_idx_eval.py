"""kNN / linear evaluation on the MNIST family's IDX files: train = train-*, val = t10k-*."""

from __future__ import annotations

import json

import pytest

from pretrain.evaluation.datasets import build_eval_splits
from rimifm.errors import UserError
from tests.helpers import make_idx_dataset, run_main


def test_eval_splits(tmp_path):
    make_idx_dataset(tmp_path, train=20, test=10, classes=3)
    s = build_eval_splits("idx", tmp_path)
    assert s.name == "idx" and len(s.train) == 20 and len(s.val) == 10 and s.num_classes == 3
    assert s.train.labels == [i % 3 for i in range(20)] and s.val[0][0].mode == "RGB"
    assert str(tmp_path.resolve()) in s.identity
    with pytest.raises(UserError, match="--dataset idx needs --root"):
        build_eval_splits("idx", None)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz not found; --root must hold the four IDX"):
        build_eval_splits("idx", tmp_path)


def test_cli_knn_on_idx(tmp_path, capsys):
    from pretrain.evaluation.cli import main

    make_idx_dataset(tmp_path / "data", train=20, test=10, classes=3)
    r = run_main(main, ["none", "--random-init", "--backbone", "resnet18", "--dataset", "idx", "--root",
                        tmp_path / "data", "--image-size", "16", "--device", "cpu", "--protocol", "knn", "--k", "5",
                        "--out", tmp_path / "knn"],
                 capsys, threads=1)
    assert r.returncode == 0, r.stderr
    assert "20 train / 10 val images" in r.stdout
    rec = json.loads((tmp_path / "knn" / "record.json").read_text())
    assert rec["kind"] == "knn" and 0 <= rec["metrics"]["top1"] <= 100
