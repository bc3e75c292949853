"""Training across processes: two CPU processes (gloo) train the warm-up stage exactly as one does,
MLflow gets the curve once, a kill -9 of the launcher leaves no manifest and no process, and the
stage then trains again; a launcher failure is one line with its log's tail."""

from __future__ import annotations

import sys
import threading
import time

import psutil
import pytest

from prefcurate.checkpoint import load_checkpoint
from prefcurate.config import DataSource, ModelSource, NightlyConfig, TrackingConfig, TrainingConfig
from prefcurate.data.pairs import read_pairs
from prefcurate.data.stage import INGEST
from prefcurate.errors import TrainingError
from prefcurate.io import read_parquet
from prefcurate.scoring.reference import REFERENCE
from prefcurate.stage import run_stage
from prefcurate.tracking import client, start_parent_run
from prefcurate.training.dpo import fit_dpo
from prefcurate.training.launch import run_launcher
from prefcurate.training.stage import WARMUP

pytestmark = pytest.mark.slow

# 24 of the small world's pairs, 3 optimiser steps of a global batch of 8 (4 per process)
TRAINING = dict(batch_size=8, learning_rate=1e-3, seed=3, logging_steps=1, warmup_epochs=0.1)


def _workers() -> list[psutil.Process]:
    """The training processes (not the launcher, nor torchrun's pt_elastic helper)."""
    return [p for p in psutil.Process().children(recursive=True)
            if p.name() != "pt_elastic" and "prefcurate.training.worker" in (cmd := " ".join(p.cmdline()))
            and "accelerate" not in cmd]


def _launcher() -> psutil.Process:
    return next(p for p in psutil.Process().children() if "accelerate.commands.launch" in " ".join(p.cmdline()))


def test_two_processes_train_as_one_and_resume_after_kill(toy_world, tmp_path):
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="ddp")
    config = NightlyConfig(model=ModelSource(uri=toy_world.checkpoint_dir), cache_dir=str(tmp_path / "cache"),
                           data=DataSource(pool_uri=toy_world.pool_parquet, validation_uri=toy_world.validation_parquet),
                           training=TrainingConfig(**TRAINING, num_processes=2), tracking=tracking)
    run = str(tmp_path / "run")
    ingest = run_stage(INGEST, run, config)
    ref = run_stage(REFERENCE, run, config, inputs={"ingest": ingest})
    parent = start_parent_run(tracking, run_name="ddp")

    # kill -9 of the launcher as soon as both workers are up
    failure: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(failure, lambda: run_stage(
        WARMUP, run, config, inputs={"ingest": ingest, "ref": ref}, tracking=parent)))
    thread.start()
    deadline = time.monotonic() + 60
    while len(workers := _workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) == 2, "the launcher did not start two workers"
    _launcher().kill()
    thread.join(60)
    assert len(failure) == 1 and isinstance(failure[0], TrainingError), failure
    assert "killed by signal 9" in str(failure[0]) and "\n" not in str(failure[0])
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE], "stray workers"
    assert _no_manifest(run)

    # the rerun trains again, in two processes, and writes the manifest
    two = run_stage(WARMUP, run, config, inputs={"ingest": ingest, "ref": ref}, tracking=parent)
    assert not _no_manifest(run) and not _workers()

    # one process on the same pairs: the same steps, the same loss curve, the same weights
    one_config = config.training.model_copy(update={"num_processes": 1})
    sft = load_checkpoint(toy_world.checkpoint_dir)
    one = fit_dpo(sft.model, sft.tokenizer, read_pairs(ingest.train.uri), one_config, epochs=0.1,
                  ref_logps=read_parquet(ref.ref_logps.uri), device="cpu")
    assert two.steps == one.global_step == 3 and two.n_trained == one.n_trained
    mlc = client(parent)
    child = mlc.search_runs([parent.experiment_id], "tags.`prefcurate.stage` = 'warmup'")[0]
    curve = [(m.step, m.value) for m in mlc.get_metric_history(child.info.run_id, "train/loss")]
    expected = [(h["step"], h["loss"]) for h in one.log_history if "loss" in h]
    assert [s for s, _ in curve] == [s for s, _ in expected] == [1, 2, 3]  # each step logged once
    assert max(abs(a - b) for (_, a), (_, b) in zip(curve, expected)) < 1e-5
    trained, alone = load_checkpoint(two.model.uri).model.state_dict(), one.model.state_dict()
    start = load_checkpoint(toy_world.checkpoint_dir).model.state_dict()
    moved = max(float((alone[k] - start[k]).abs().max()) for k in alone)
    assert moved > 1e-4  # it trained
    # measured 0.3 % of the update (gradients averaged over two processes differ at fp32 rounding, and Adam's
    # first steps magnify that); another data order differs by the size of the update itself
    assert max(float((trained[k] - alone[k]).abs().max()) for k in alone) < 2e-2 * moved


def _catch(box: list, fn) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        box.append(exc)


def _no_manifest(run: str) -> bool:
    from pathlib import Path

    return not (Path(run) / "manifests" / "warmup.json").exists()


def test_a_failed_launch_is_one_line_with_the_log_tail_and_leaves_no_process(tmp_path):
    marker = f"time.sleep(60)  # {tmp_path.name}"  # a grandchild the launcher leaves behind
    script = (f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; {marker}']); "
              "print('loading model'); print('CheckpointError: no checkpoint at /nowhere'); sys.exit(3)")
    with pytest.raises(TrainingError) as err:
        run_launcher([sys.executable, "-c", script], tmp_path / "launcher.log")
    message = str(err.value)
    assert "\n" not in message and "exited with 3" in message
    assert "CheckpointError: no checkpoint at /nowhere" in message
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["cmdline", "status"])
            if marker in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not left, left
