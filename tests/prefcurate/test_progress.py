"""Progress off a terminal: log lines with counts and an ETA instead of carriage-return bars."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from prefcurate import progress
from prefcurate.config import TrainingConfig
from prefcurate.training.progress import EtaLogCallback


@pytest.fixture
def no_terminal(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)


def test_track_logs_counts_and_an_eta_off_a_terminal(no_terminal, caplog):
    caplog.set_level(logging.INFO, logger="prefcurate.progress")
    assert list(progress.track(range(4), desc="θ log-probs", every_s=0.0)) == [0, 1, 2, 3]
    lines = [r.message for r in caplog.records]
    assert len(lines) == 4 and lines[0].startswith("θ log-probs: 1/4 batches (25%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("θ log-probs: 4/4 batches (100%)") and lines[-1].endswith("ETA 0 s")
    caplog.clear()
    list(progress.track(range(1000), desc="quiet"))  # every 30 s: a fast loop logs only its end
    assert [r.message.split(",")[0] for r in caplog.records] == ["quiet: 1000/1000 batches (100%)"]
    assert list(progress.track(range(3), desc=None)) == [0, 1, 2]


def test_durations_read_as_people_write_them():
    assert [progress.duration(s) for s in (4.2, 245, 7620)] == ["4 s", "4 min 05 s", "2 h 07 min"]


def test_training_logs_loss_and_eta(no_terminal, monkeypatch, caplog):
    monkeypatch.setattr("prefcurate.training.progress.on_terminal", lambda: False)
    callback = EtaLogCallback("DPO warmup")
    state = SimpleNamespace(global_step=10, max_steps=40)
    with caplog.at_level(logging.INFO, logger="prefcurate.training"):
        callback.on_log(None, state, None, logs={"loss": 0.61234})
        callback.on_log(None, state, None, logs={"train_runtime": 3.0})  # the end-of-training summary: no line
    (line,) = [r.message for r in caplog.records]
    assert line.startswith("DPO warmup: 10/40 steps (25%)") and line.endswith("loss 0.6123")


def test_run_estimate_grows_with_the_work():
    base = dict(n_train=1000, n_validation=100, training=TrainingConfig(), compute_if=True)
    one = progress.estimate_seconds(10.0, 1100, **base)
    assert progress.estimate_seconds(20.0, 1100, **base) == pytest.approx(2 * one)  # a slower forward, a longer run
    assert progress.estimate_seconds(10.0, 1100, **{**base, "compute_if": False}) < one
    assert progress.estimate_seconds(10.0, 1100, **base, n_final_models=4) > one
