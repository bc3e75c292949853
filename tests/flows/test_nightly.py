"""The `nightly` flow with an s3:// run root (moto server on 127.0.0.1): score, select, publish."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient

from prefcurate import io
from prefcurate.config import NightlyConfig
from tests.flows.conftest import toy_config

pytestmark = pytest.mark.slow


def _trains_as_is(source: str, toy_world, out, n_pairs: int | None = None) -> None:
    """What a downstream user does: load the published dataset with `datasets`, train TRL's DPO on it."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if source.startswith("s3://"):
        data = load_dataset("parquet", data_files={"train": source}, split="train")
    else:
        data = load_dataset(source, split="train")  # the dataset card's configs name the files
        assert len(data) == n_pairs and data[0]["prompt"][-1]["role"] == "user" and data[0]["chosen"][0]["role"] == "assistant"
    model = AutoModelForCausalLM.from_pretrained(toy_world.checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(toy_world.checkpoint_dir)
    args = DPOConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, report_to="none", logging_steps=1,
                     bf16=False)  # a CPU machine, as any user here would set it
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    assert trainer.train().global_step == 2


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
    version = io.read_text(io.join(result.publish_uri, "latest")).strip()
    assert result.dataset_uri == io.join(result.publish_uri, version)
    published = io.read_parquet(io.join(result.dataset_uri, "data/train-00000-of-00001.parquet"))
    # same data, same config sections as the local curate run: the same selection and scores
    local = pd.read_parquet(curated.run / "selection" / "selection.parquet")
    assert published["pair_id"].tolist() == local["pair_id"].tolist()
    assert {"prompt", "chosen", "rejected", "if", "tif", "lossdiff", "irm"} <= set(published.columns)
    pd.testing.assert_frame_equal(io.read_parquet(io.join(result.dataset_uri, "scores.parquet")),
                                  pd.read_parquet(curated.run / "scores" / "scores.parquet"), check_exact=True)
    assert result.n_kept == len(local)
    _trains_as_is(f"{result.dataset_uri}/data/train-*.parquet", toy_world, tmp_path / "from-s3")
    local_copy = tmp_path / "published"
    io.filesystem(result.dataset_uri)[0].get(result.dataset_uri.removeprefix("s3://") + "/", str(local_copy), recursive=True)
    _trains_as_is(str(local_copy), toy_world, tmp_path / "from-dir", n_pairs=len(local))
    client = MlflowClient(tracking_uri=tracking)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.data.tags["prefcurate.flow"] == "nightly" and parent.info.status == "FINISHED"
