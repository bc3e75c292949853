"""Every input checked before any work: a bad input is one line on stderr and exit 2, in seconds,
with no traceback anywhere — before any stage runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from prefcurate.lease import run_lease
from tests.flows.conftest import toy_config

BOUND_S = 30  # ~4 s on an idle 2-core machine (interpreter start + imports); generous for a loaded CI box


def _cli(config_file, *sets, env=None):
    args = [sys.executable, "-m", "prefcurate.flows.cli", "curate", "--config", str(config_file)]
    for s in sets:
        args += ["--set", s]
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    return done, time.monotonic() - start


@pytest.fixture
def config_file(toy_world, tmp_path):
    config = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("override, message", [
    ("data.pool_uri=/nonexistent/pool.parquet", "preference pool (data.pool_uri) /nonexistent/pool.parquet does not exist"),
    ("defects_uri=/nonexistent/defects.parquet", "defect labels (defects_uri) /nonexistent/defects.parquet does not exist"),
    ("model.uri=/nonexistent/sft", "SFT checkpoint (model.uri) /nonexistent/sft does not exist"),
    ("tracking.tracking_uri=http://127.0.0.1:9", "MLflow tracking server http://127.0.0.1:9 did not answer"),
    ("training.warmup_epochs=.inf", "invalid config field 'training.warmup_epochs': Input should be a finite number"),
    ("scoring.batch_size=100000000000000000000000000000", "beyond any sane setting"),
])  # fmt: skip
def test_a_bad_input_is_one_line_in_seconds(config_file, tmp_path, override, message):
    done, seconds = _cli(config_file, override)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert seconds < BOUND_S, seconds
    assert not (tmp_path / "runs" / "toy" / "manifests").exists()  # no stage ran


def test_a_missing_bucket_is_refused_not_created(config_file, moto_s3):
    import s3fs

    done, _ = _cli(config_file, "root=s3://bucket-that-does-not-exist/runs")
    assert done.returncode == 2 and "bucket bucket-that-does-not-exist" in done.stderr and "does not exist" in done.stderr
    assert not s3fs.S3FileSystem().exists("bucket-that-does-not-exist")


def test_a_run_in_use_is_refused_in_one_line(config_file, tmp_path, prefect_harness):
    with run_lease(str(tmp_path / "runs" / "toy"), owner="another curate run"):
        done, _ = _cli(config_file, env={"PREFECT_API_URL": prefect_harness})
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]  # among Prefect's log lines
    assert len(errors) == 1 and "is in use by another curate run" in errors[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_failed_flow_run_carries_the_one_line_reason(toy_world, tmp_path, prefect_harness):
    """What `prefect deployment run --watch` and the UI show of a failed run: its state message."""
    from prefcurate.config import RunConfig
    from prefcurate.flows.curate import curate

    raw = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = RunConfig.model_validate({**raw, "data": {**raw["data"], "pool_uri": "/nonexistent/pool.parquet"}})
    state = curate(config, return_state=True)
    assert state.is_failed()
    assert "preference pool (data.pool_uri) /nonexistent/pool.parquet does not exist" in state.message
    assert "\n" not in state.message and "Traceback" not in state.message, state.message
