"""Prefect artifact helpers: real artifacts inside a flow run, no-ops outside one."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from prefcurate.tasks import artifacts
from prefcurate.tracking import RunHandle
from prefcurate.training.progress import ProgressCallback


def _latest(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created)[-1]


def test_artifact_key_is_what_prefect_accepts():
    assert artifacts.artifact_key("Selection summary: LossDiff_IRM") == "selection-summary-lossdiff-irm"
    assert artifacts.artifact_key("--") == "artifact"


def test_table_rows_are_json_safe_and_keep_a_named_index():
    board = pd.DataFrame({"win_rate": [0.61, float("nan")], "n_total": [200, 200]},
                         index=pd.Index(["selected", "full"], name="model"))
    rows = artifacts.table_rows(board)
    assert rows == [{"model": "selected", "win_rate": 0.61, "n_total": 200},
                    {"model": "full", "win_rate": None, "n_total": 200}]
    assert type(rows[0]["n_total"]) is int


def test_helpers_do_nothing_outside_a_run():
    progress = artifacts.PrefectProgress("scoring")
    for done in range(5):
        progress(done, 4)
    assert progress.artifact_id is None
    assert artifacts.publish_table("t", [{"a": 1}]) is None
    assert artifacts.publish_markdown("m", "# x") is None


def test_artifacts_inside_a_flow_run(prefect_harness):
    handle = RunHandle(tracking_uri="sqlite:///x.db", run_id="abc123", experiment_id="7")
    seen: list[float] = []
    fast_seen: set[float] = set()

    @task
    def score() -> str:
        progress = artifacts.PrefectProgress("Scoring shards", min_step=10.0, min_interval_s=0.0)
        for done in range(101):
            progress(done, 100)
            if progress.progress not in seen:
                seen.append(progress.progress)
        fast = artifacts.PrefectProgress("fast loop")  # defaults: 10 % and 5 s apart, so a quick loop is 2 events
        for done in range(1001):
            fast(done, 1000)
            fast_seen.add(fast.progress)
        return str(progress.artifact_id)

    @flow
    def tiny() -> str:
        board = pd.DataFrame({"model": ["selected", "sft"], "win_rate": [0.64, 0.5], "standard_error": [0.03, math.nan]})
        artifacts.publish_table("leaderboard", board, description="win rates")
        artifacts.publish_markdown("run-report", "# Report\nkept 612 of 1000")
        artifacts.publish_mlflow_link(handle)
        return score()

    progress_id = tiny()

    table = _latest("leaderboard")
    assert table.type == "table" and "0.64" in str(table.data) and "NaN" not in str(table.data)
    assert _latest("run-report").data.startswith("# Report")
    link = _latest("mlflow-run")
    assert "/#/experiments/7/runs/abc123" in link.data
    progress = _latest("scoring-shards")
    assert str(progress.id) == progress_id and progress.type == "progress" and progress.data == 100.0
    assert seen == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]  # throttled, never backwards
    assert fast_seen == {0.0, 100.0}


@pytest.mark.slow
def test_trainer_progress_reaches_100_percent(tmp_path, prefect_harness):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from prefcurate.toyworld.model import build_model
    from prefcurate.toyworld.tokenizer import build_tokenizer

    calls: list[tuple[int, int]] = []

    @flow
    def train() -> str:
        progress = artifacts.PrefectProgress("dpo-final", min_step=0.0)
        tok = build_tokenizer()
        ids = list(range(7, 17))
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                                 report_to="none", save_strategy="no", use_cpu=True)
        callback = ProgressCallback(lambda d, t: (calls.append((d, t)), progress(d, t)))
        Trainer(model=build_model(tok, size="small"), args=args, callbacks=[callback],
                train_dataset=Dataset.from_dict({"input_ids": [ids] * 12, "labels": [ids] * 12})).train()
        return str(progress.artifact_id)

    artifact_id = train()
    assert calls[0] == (0, 3) and (2, 3) in calls and calls[-1] == (3, 3)
    final = _latest("dpo-final")
    assert str(final.id) == artifact_id and final.data == 100.0
