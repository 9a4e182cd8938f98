"""benchmarks/pretrain_throughput.py --config: the recipe's step on its real data, split into loader, views and
model shares (figures are printed, never asserted: only that the split is made and adds up)."""

from __future__ import annotations

import re
import runpy
import sys

from tests.helpers import REPO, make_idx_dataset


def test_config_mode_prints_the_loader_views_and_model_shares(tmp_path, monkeypatch, capsys):
    make_idx_dataset(tmp_path, train=48, test=8)
    argv = ["pretrain_throughput.py", "--config", "fmnist_cpu_byol.yaml", "--steps", "2", "--warmup", "1",
            "DATA.ROOT", str(tmp_path), "DATA.BATCH_SIZE", "16", "MODEL.PROJ_HIDDEN_DIM", "32",
            "MODEL.PRED_HIDDEN_DIM", "32", "TRAIN.KNN_PERIOD", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "benchmarks" / "pretrain_throughput.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "byol resnet_tiny, DATA.VIEWS batch, 28px, batch 16, 2 timed steps" in out
    assert re.search(r"end to end +\d+\.\d images/s", out)
    shares = {m.group(1): float(m.group(2)) for m in re.finditer(r"^  (loader|views|model) +([\d.]+)% ", out, re.M)}
    assert set(shares) == {"loader", "views", "model"} and abs(sum(shares.values()) - 100) < 0.5, out
