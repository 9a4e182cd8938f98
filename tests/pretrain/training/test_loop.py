"""End-to-end pretraining runs on tiny data: records, exact resume after SIGKILL, DDP, clean errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain.config import load_config
from rimifm.errors import UserError
from tests.helpers import REPO, make_image_folder, run_main, tiny_overrides

PRETRAIN = [sys.executable, str(REPO / "tools" / "pretrain.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(args, **kw):
    """python tools/pretrain.py ARGS as a child process (for what needs a process of its own: kill, torchrun)."""
    return subprocess.run(PRETRAIN + args, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300, **kw)


@pytest.fixture
def run_here(capsys):
    """The same command run by its main() in this process, one thread like the child processes:
    (returncode, stdout, stderr) without a second start-up of torch."""
    from pretrain.training.cli import main

    return lambda args: run_main(main, args, capsys, threads=1)


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_record_metrics_and_knn(tiny_data, tmp_path, run_here):
    out = tmp_path / "run"
    r = run_here(tiny_overrides(tiny_data, out, **{"RIM.ENABLED": "true", "IFM.ENABLED": "true", "TRAIN.KNN_PERIOD": "1",
                                              "TRAIN.TENSORBOARD": "true"}))
    assert r.returncode == 0, r.stderr
    assert f"checkpoint: {out / 'checkpoints' / 'last.pth'}" in r.stdout
    rec = json.loads((out / "record.json").read_text())
    for key in ("run_id", "kind", "method", "rim", "ifm", "backbone", "dataset", "epochs", "seed", "metrics",
                "config", "config_hash", "checkpoint", "wall_time_s", "images_per_s", "code_version"):
        assert key in rec, key
    assert rec["kind"] == "pretrain" and rec["rim"]["enabled"] and rec["ifm"]["enabled"]
    assert rec["steps"] == 2 * 3  # 24 images / batch 8, 2 epochs
    assert 0 <= rec["metrics"]["knn_top1"] <= 100 and "knn_top1_init" in rec["metrics"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 6
    assert {"loss", "base_loss", "ifm_loss", "lr", "momentum", "images_per_s", "z_std"} <= set(steps[0])
    assert all(abs(r["loss"] - r["base_loss"] - r["ifm_loss"]) < 1e-5 for r in steps)
    assert [r["epoch"] for r in rows if "knn_top1" in r] == [0, 1, 2]
    assert any((out / "tb").iterdir())
    assert (out / "config.yaml").is_file()


@pytest.mark.slow
def test_sigkill_then_restart_ends_with_the_same_weights(tiny_data, tmp_path, run_here):
    extra = {"TRAIN.EPOCHS": "8", "RIM.ENABLED": "true", "IFM.ENABLED": "true", "TRAIN.CHECKPOINT_PERIOD_STEPS": "1",
             "DATA.NUM_WORKERS": "1", "RIM.FILL": "noise"}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # 24 steps of resnet_tiny: the kill below lands at about step 2-6 (2026-12-05, development machine), so a
    # machine several times faster still kills it mid-run.
    # the reference needs no per-step checkpoints (they change nothing but the time it takes)
    assert run_here(tiny_overrides(tiny_data, ref, **{**extra, "TRAIN.CHECKPOINT_PERIOD_STEPS": "0"})).returncode == 0

    proc = subprocess.Popen(PRETRAIN + tiny_overrides(tiny_data, killed, **extra), env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pth"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.5))  # an arbitrary point, possibly mid-write of a checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    killed_at = torch.load(last, weights_only=True)["step"]
    assert killed_at < 24

    r = run_here(tiny_overrides(tiny_data, killed, **extra))
    assert r.returncode == 0, r.stderr
    assert f"resumed from {last} at step" in r.stdout
    a, b = weights(ref / "checkpoints" / "last.pth"), weights(last)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 25))  # no duplicated or missing log lines


@pytest.mark.slow
def test_explicit_resume_and_finished_run_is_a_no_op(tiny_data, tmp_path, run_here):
    first = tmp_path / "first"
    assert run_here(tiny_overrides(tiny_data, first, **{"TRAIN.EPOCHS": "1"})).returncode == 0
    second = tmp_path / "second"
    r = run_here(["--resume", str(first / "checkpoints" / "last.pth")] + tiny_overrides(tiny_data, second))
    assert r.returncode == 0, r.stderr
    assert "at step 3 (epoch 1)" in r.stdout
    assert json.loads((second / "record.json").read_text())["steps"] == 6
    before = {**json.loads((second / "record.json").read_text()), "finished_at": "2026-01-02T03:04:05+0000"}
    (second / "record.json").write_text(json.dumps(before))  # as if it had finished long ago
    again = run_here(tiny_overrides(tiny_data, second))
    assert again.returncode == 0 and "at step 6" in again.stdout
    assert "epoch 1/" not in again.stdout
    after = json.loads((second / "record.json").read_text())  # re-running a finished run keeps its figures
    assert after["images_per_s"] == before["images_per_s"] and after["images_per_s"] > 0
    assert after["metrics"] == before["metrics"] and "loss" in after["metrics"]
    assert after["finished_at"] == before["finished_at"]  # and its date


@pytest.mark.slow
def test_two_process_ddp_gloo(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tools" / "pretrain.py")] + tiny_overrides(
        tiny_data, out, **{"IFM.ENABLED": "true", "RIM.ENABLED": "true", "MODEL.SYNC_BN": "true"})
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "record.json").read_text())
    assert rec["world_size"] == 2 and rec["steps"] == 6  # global batch 8 = 2 x 4
    assert r.stdout.count("record:") == 1  # only rank 0 reports
    assert "SYNC_BN needs GPUs" in r.stderr
    w = weights(out / "checkpoints" / "last.pth")
    assert any("running_mean" in k for k in w)


def _error(r):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_cli_errors_are_one_clean_line(tiny_data, tmp_path, run_here):
    # by path, as a user types it: one `error:` line, exit 2, no traceback
    assert "RATIOO" in _error(run(tiny_overrides(tiny_data, tmp_path / "a") + ["RIM.RATIOO", "0.2"]))
    assert "per-process batch is 1" in _error(
        run_here(tiny_overrides(tiny_data, tmp_path / "b", **{"IFM.ENABLED": "true", "DATA.BATCH_SIZE": "1"})))
    missing = tmp_path / "missing"
    assert str(missing) in _error(run_here(tiny_overrides(tiny_data, tmp_path / "c", **{"DATA.ROOT": missing})))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _error(run_here(tiny_overrides(tiny_data, tmp_path / "d", **{"DATA.ROOT": empty})))


@pytest.mark.slow
def test_unreadable_image_and_wrong_resume_errors(tiny_data, tmp_path, run_here):
    broken = make_image_folder(tmp_path / "broken", per_class=4)
    (broken / "class1" / "c1_002.png").write_bytes(b"not a png")
    msg = _error(run_here(tiny_overrides(tiny_data, tmp_path / "e", **{"DATA.ROOT": broken, "DATA.NUM_WORKERS": "1"})))
    assert "c1_002.png" in msg

    out = tmp_path / "f"
    assert run_here(tiny_overrides(tiny_data, out, **{"TRAIN.EPOCHS": "1"})).returncode == 0
    assert "simsiam" in _error(run_here(tiny_overrides(tiny_data, out, **{"METHOD": "simsiam"})))
    assert "resnet34" in _error(run_here(tiny_overrides(tiny_data, out, **{"MODEL.BACKBONE": "resnet34"})))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    import pretrain.training.loop as train_mod
    from pretrain.training.cli import train

    out = tmp_path / "nan"
    cfg = load_config(None, tiny_overrides(tiny_data, out, **{"TRAIN.EPOCHS": "2"}))
    train(cfg, "", None)
    good = weights(out / "checkpoints" / "last.pth")

    real_build = train_mod.build_method

    def poisoned(c):
        model = real_build(c)
        forward = model.forward

        def nan_forward(*a, **k):
            res = forward(*a, **k)
            res["loss"] = res["loss"] * float("nan")
            return res

        model.forward = nan_forward
        return model

    monkeypatch.setattr(train_mod, "build_method", poisoned)
    cfg3 = load_config(None, tiny_overrides(tiny_data, out, **{"TRAIN.EPOCHS": "3"}))
    with pytest.raises(UserError, match="loss became nan.*last good checkpoint"):
        train(cfg3, "", None)
    after = weights(out / "checkpoints" / "last.pth")
    assert all(torch.equal(good[k], after[k]) for k in good)


@pytest.mark.slow
def test_run_pretrain_sh_makes_missing_synthetic_data_and_trains(tmp_path):
    root = tmp_path / "synthetic"
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "tools" / "run_pretrain.sh"), "DATA.ROOT", str(root), "OUTPUT_DIR", str(out),
                        "TRAIN.MAX_STEPS", "2", "TRAIN.KNN_PERIOD", "0", "DATA.BATCH_SIZE", "16",
                        "TRAIN.PROGRESS", "false", "DATA.NUM_WORKERS", "0"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={**ENV, "MAKE_SYNTHETIC_OPTS": "--pretrain-images 64 --cls-train-per-class 2 "
                            "--cls-val-per-class 2 --det-trainval 2 --det-test 2"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "making the synthetic dataset" in r.stdout
    assert json.loads((root / "meta.json").read_text())["sizes"]["pretrain_images"] == 64
    rec = json.loads((out / "record.json").read_text())
    assert rec["steps"] == 2 and rec["dataset"]["name"] == "synthetic"
    bad = subprocess.run(["bash", str(REPO / "tools" / "run_pretrain.sh"), "RIM.NOPE", "1"],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "RIM.NOPE" in bad.stderr and "Traceback" not in bad.stderr
