"""The `nightly` flow with an s3:// run root (moto server on 127.0.0.1): score, select, publish."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient

from prefcurate import io
from prefcurate.config import NightlyConfig
from tests.flows.conftest import toy_config

pytestmark = pytest.mark.slow


def test_nightly_on_s3_publishes_the_selection(curated, toy_world, prefect_harness, s3_bucket, tmp_path, monkeypatch):
    from prefcurate.flows.nightly import nightly

    monkeypatch.setenv("PREFCURATE_CACHE", str(tmp_path / "checkpoint-cache"))  # s3 checkpoints download here

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = toy_config(toy_world, f"{s3_bucket}/runs", tracking, run_name="toy", cache_dir=str(tmp_path / "cache"))
    raw.pop("tracking")
    config = NightlyConfig.model_validate({**raw, "tracking": {"tracking_uri": tracking},
                                           "publish_uri": f"{s3_bucket}/published/latest"})  # fmt: skip
    state = nightly(config, return_state=True)
    assert state.is_completed()
    result = state.result()
    run = f"{s3_bucket}/runs/toy"
    assert result.run_uri == run and result.publish_uri == f"{s3_bucket}/published/latest"
    for rel in ("data/train.parquet", "models/warmup/model.safetensors", "models/val/model.safetensors",
                "scores/scores.parquet", "selection/selection.json", "manifests/select.json"):  # fmt: skip
        assert io.exists(io.join(run, rel)), rel
    assert not io.exists(io.join(run, "models/final"))  # nightly trains no final model
    published = io.read_parquet(io.join(result.publish_uri, "selection.parquet"))
    # same data, same config sections as the local curate run: the same selection and scores
    local = pd.read_parquet(curated.run / "selection" / "selection.parquet")
    pd.testing.assert_frame_equal(published, local, check_exact=True)
    pd.testing.assert_frame_equal(io.read_parquet(io.join(result.publish_uri, "scores.parquet")),
                                  pd.read_parquet(curated.run / "scores" / "scores.parquet"), check_exact=True)
    assert result.n_kept == len(local)
    client = MlflowClient(tracking_uri=tracking)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.data.tags["prefcurate.flow"] == "nightly" and parent.info.status == "FINISHED"
