"""The metrics log shared by pretraining and the torchvision detection engine."""

import json

from rimifm.events import JsonLinesLog


def test_reopening_drops_rows_the_resumed_run_logs_again_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonLinesLog(path, "step", first_new=1)
    for step in (1, 2, 3, 4):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    with open(path, "a") as fh:
        fh.write('{"step": 5, "lo')  # a line cut by a kill
    JsonLinesLog(path, "step", first_new=3).close()  # resumed after step 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_a_disabled_log_writes_nothing(tmp_path):
    path = tmp_path / "metrics.json"
    log = JsonLinesLog(path, "iteration", first_new=0, enabled=False, tb_dir=tmp_path)
    log.write({"iteration": 0, "loss": 1.0})
    log.close()
    assert not path.exists() and not list(tmp_path.iterdir())


def test_tensorboard_gets_the_finite_numbers_under_the_prefix(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = JsonLinesLog(tmp_path / "m.jsonl", "step", first_new=1, tb_dir=tmp_path / "tb", tag_prefix="pretrain/",
                       not_scalars=("epoch",))
    log.write({"step": 1, "epoch": 0, "loss": 0.5, "bad": float("nan"), "note": "text"})
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["scalars"] == ["pretrain/loss"]
