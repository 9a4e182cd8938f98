"""A tiny pretraining run with DATA.VIEWS device: it trains, and stopping after one epoch then resuming ends
with the same weights as the uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import run_main, tiny_overrides


def _weights(out) -> dict:
    return torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_device_views_train_and_resume_exactly(tiny_data, tmp_path, capsys):
    from pretrain.training.cli import main

    extra = {"DATA.VIEWS": "device", "TRAIN.DEVICE": "cpu"}
    ref, split = tmp_path / "ref", tmp_path / "split"
    r = run_main(main, tiny_overrides(tiny_data, ref, **extra), capsys, threads=1)
    assert r.returncode == 0, r.stderr
    rec = json.loads((ref / "record.json").read_text())
    assert rec["steps"] == 6 and rec["config"]["DATA"]["VIEWS"] == "device"
    rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(rows) == 6 and all(0 < row["loss"] < 10 for row in rows)

    # the first epoch (same schedule: MAX_STEPS stops it), then the rest after a resume
    assert run_main(main, tiny_overrides(tiny_data, split, **extra, **{"TRAIN.MAX_STEPS": "3"}), capsys,
                    threads=1).returncode == 0
    r = run_main(main, tiny_overrides(tiny_data, split, **extra), capsys, threads=1)
    assert r.returncode == 0, r.stderr
    assert "at step 3 (epoch 1)" in r.stdout
    a, b = _weights(ref), _weights(split)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged from the uninterrupted one"
