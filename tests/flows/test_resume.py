"""Crash and resume: `prefcurate curate` killed with SIGKILL mid-scoring, then mid-training, then
run to the end — finished stages are not redone and the results equal an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.flows.conftest import stage_outputs, toy_config

pytestmark = pytest.mark.slow


def _start(config_file: Path, api_url: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(log.parent / "prefect-home")}
    return subprocess.Popen(
        [sys.executable, "-m", "prefcurate.flows.cli", "curate", "--config", str(config_file)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[2],
    )  # fmt: skip


def _kill_when(proc: subprocess.Popen, marker: Path, timeout: float = 300) -> None:
    """SIGKILL `proc` as soon as `marker` (a stage's manifest) appears."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before {marker.name} appeared")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{marker.name} did not appear in {timeout} s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _manifests(run: Path) -> dict:
    return stage_outputs(run)


def test_killed_twice_then_resumed_matches_uninterrupted_run(curated, toy_world, prefect_harness, tmp_path):
    root = tmp_path / "runs"
    config = toy_config(toy_world, str(root), f"sqlite:///{tmp_path / 'mlflow.db'}", run_name=curated.config["run_name"])
    config_file = tmp_path / "toy.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run, log = root / "toy", tmp_path / "run.log"

    # 1. killed mid-scoring: right after the first shard finished
    _kill_when(_start(config_file, prefect_harness, log), run / "manifests" / "score-shard-00000.json")
    after_first = _manifests(run)
    assert "score" not in after_first and "warmup" in after_first

    # 2. killed mid-training: once the selected model is saved, while the baselines train
    _kill_when(_start(config_file, prefect_harness, log), run / "manifests" / "final-selected.json")
    after_second = _manifests(run)
    assert "final-full" not in after_second or "final-random" not in after_second
    for stage, manifest in after_first.items():
        assert after_second[stage].meta.created_at == manifest.meta.created_at, f"{stage} was recomputed"

    # 3. runs to the end
    proc = _start(config_file, prefect_harness, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    final = _manifests(run)
    for stage, manifest in after_second.items():
        assert final[stage].meta.created_at == manifest.meta.created_at, f"{stage} was recomputed"
    assert {"judge", "report", "final-full", "final-random"} <= set(final)

    # the same result as the uninterrupted run (same config, other root, other process), exactly:
    # with the same torch thread count the float summation order is the same in every process.
    ref = curated.run
    pd.testing.assert_frame_equal(pd.read_parquet(run / "scores" / "scores.parquet"),
                                  pd.read_parquet(ref / "scores" / "scores.parquet"), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(run / "selection" / "selection.parquet")[["pair_id"]],
                                  pd.read_parquet(ref / "selection" / "selection.parquet")[["pair_id"]])
    for stage in ("ingest", "reference"):
        assert final[stage].digest == _manifests(ref)[stage].digest, stage

    # 4. corrupt outputs of every kind: a rerun recomputes exactly the stages whose outputs failed
    #    their check — and nothing downstream, since the recomputed bytes are the same
    (run / "scores" / "scores.parquet").write_bytes((run / "scores" / "scores.parquet").read_bytes()[:100])
    weights = run / "models" / "final" / "random" / "model.safetensors"
    weights.write_bytes(os.urandom(weights.stat().st_size))
    (run / "selection" / "agreement.json").write_text('{"not": "the report"}')
    tokenizer = run / "models" / "warmup" / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:-10])
    proc = _start(config_file, prefect_harness, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    repaired = _manifests(run)
    redone = {s for s, m in repaired.items() if m.meta.created_at != final[s].meta.created_at}
    assert redone == {"score", "select", "final-random", "warmup"}, redone
    text = log.read_text()
    for output in ("scores", "agreement", "model"):
        assert f"output {output} (" in text and "failed its check" in text, output
    for stage, output in repaired.items():
        assert all(ref.problem() is None for _, ref in output.file_refs()), stage
        assert output.digest == final[stage].digest, stage  # recomputed to the same content
    pd.testing.assert_frame_equal(pd.read_parquet(run / "scores" / "scores.parquet"),
                                  pd.read_parquet(ref / "scores" / "scores.parquet"), check_exact=True)

    # 5. only the defect labels change: the selection stage reruns (its agreement report counts
    #    defects) and the report with it; no model is retrained
    defects = pd.read_parquet(toy_world.defects_parquet)
    edited = tmp_path / "defects-edited.parquet"
    defects.iloc[1:].to_parquet(edited)
    config_file.write_text(yaml.safe_dump({**config, "defects_uri": str(edited)}))
    proc = _start(config_file, prefect_harness, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    relabelled = _manifests(run)
    redone = {s for s, m in relabelled.items() if m.meta.created_at != repaired[s].meta.created_at}
    assert redone == {"select", "report"}, redone
