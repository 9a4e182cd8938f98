"""Shared fixtures: tiny image folders and tiny-model config overrides, so tests run in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import make_image_folder

# Under pytest-xdist each worker gets one thread (the workers already fill the cores); alone, two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where a CUDA GPU is visible (benchmarks/gpu_check.sh runs them there)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny_data")
    return {"train": make_image_folder(base / "train", per_class=8, seed=0),
            "val": make_image_folder(base / "val", per_class=4, seed=1)}


@pytest.fixture(scope="module")
def det_synth(tmp_path_factory) -> Path:
    """A tiny synthetic set for detection tests: 8 trainval and 4 test images of 96 px."""
    from synthetic.generator import generate

    root = tmp_path_factory.mktemp("det_synth") / "synthetic"
    generate(root, seed=0, pretrain_images=1, cls_train_per_class=1, cls_val_per_class=1, det_trainval=8,
             det_test=4, det_image_size=96)
    return root

