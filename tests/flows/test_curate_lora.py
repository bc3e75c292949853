"""`curate` with LoRA on the small toy world: every trained model is an adapter on the SFT model
(no full weights in the run root), the registry holds the adapter with its base, `verify` loads
base + adapter, and a resumed run reuses or retrains adapters as the cache keys say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from prefcurate.checkpoint import load_checkpoint
from prefcurate.config import RunConfig, load_config
from tests.flows.conftest import stage_outputs, toy_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(toy_world, prefect_harness, tmp_path_factory):
    from prefcurate.flows.cli import app

    root = tmp_path_factory.mktemp("curated-lora")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    config = toy_config(toy_world, str(root / "runs"), tracking_uri, run_name="lora",
                        training={"lora": {"r": 4, "alpha": 8}, "learning_rate": 5e-3},
                        evaluation={"baselines": ["sft", "random"], "single_score": False})
    config["tracking"]["register_model"] = "toy-lora"
    config_file = root / "lora.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["curate", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    return root / "runs" / "lora", config_file, tracking_uri


def test_every_trained_model_is_an_adapter_on_the_sft_model(lora_run, toy_world):
    run, _, _ = lora_run
    outputs = stage_outputs(run)
    sft_fp = outputs["ingest"].sft_fingerprint
    for stage in ("warmup", "val", "final-selected", "final-random"):
        out = outputs[stage]
        files = set(out.model.files)
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files, (stage, files)
        meta = json.loads(Path(out.model.uri, "prefcurate.json").read_text())
        assert meta["base_fingerprint"] == sft_fp and meta["base"]["uri"] == toy_world.checkpoint_dir, stage
        assert meta["fingerprint"] == out.fingerprint
    # θ_val and the final models continue θ's adapter
    for stage in ("val", "final-selected"):
        assert json.loads(Path(outputs[stage].model.uri, "prefcurate.json")
                          .read_text())["parent_fingerprint"] == outputs["warmup"].fingerprint
    # IF was taken over θ's adapter (A and B), not over the base
    theta = load_checkpoint(outputs["warmup"].model.uri)
    n_adapter = sum(p.numel() for p in theta.model.parameters() if p.requires_grad)
    assert outputs["val-gradient"].n_parameters == n_adapter < theta.n_parameters / 10


def test_the_registry_holds_the_adapter_and_names_its_base(lora_run):
    run, _, tracking_uri = lora_run
    outputs = stage_outputs(run)
    client = MlflowClient(tracking_uri=tracking_uri)
    version = client.get_model_version_by_alias("toy-lora", "candidate")
    assert version.tags["prefcurate.base_fingerprint"] == outputs["ingest"].sft_fingerprint
    assert version.tags["prefcurate.base_model"] == outputs["ingest"].sft.uri
    assert "LoRA adapter on base model" in version.description
    files = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert "model/adapter_model.safetensors" in files and "model/model.safetensors" not in files
    assert not client.list_artifacts(version.run_id, "model-merged")  # a merged copy only on request


def test_verify_loads_base_and_adapter(lora_run):
    from prefcurate.flows.cli import app

    run, _, _ = lora_run
    result = CliRunner().invoke(app, ["verify", str(run), "--sample", "12"])
    assert result.exit_code == 0, result.output


def test_resume_reuses_adapters_and_retrains_only_what_is_missing(lora_run, prefect_harness):
    from prefcurate.flows.curate import curate

    run, config_file, _ = lora_run
    before = stage_outputs(run)
    config = load_config(RunConfig, config_file)
    assert curate(config, return_state=True).is_completed()
    after = stage_outputs(run)
    assert all(after[s].meta.created_at == before[s].meta.created_at for s in before)  # nothing recomputed

    (run / "manifests" / "final-selected.json").unlink()  # as if killed while training the final model
    assert curate(config, return_state=True).is_completed()
    resumed = stage_outputs(run)
    assert resumed["final-selected"].meta.created_at > before["final-selected"].meta.created_at
    assert resumed["final-selected"].fingerprint == before["final-selected"].fingerprint  # seeded: the same adapter
    assert resumed["warmup"].meta.created_at == before["warmup"].meta.created_at



def test_a_merged_copy_is_registered_only_on_request(lora_run, prefect_harness, tmp_path):
    import mlflow

    from prefcurate.data.pairs import read_pairs
    from prefcurate.flows.curate import curate
    from prefcurate.scoring.logps import compute_logps

    run, config_file, tracking_uri = lora_run
    config = load_config(RunConfig, config_file)
    config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"register_merged": True})})
    assert curate(config, return_state=True).is_completed()
    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias("toy-lora", "candidate")
    assert version.tags["prefcurate.merged_artifact"] == "model-merged"
    mlflow.set_tracking_uri(tracking_uri)
    merged_dir = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="model-merged", dst_path=str(tmp_path))
    assert (Path(merged_dir) / "model.safetensors").is_file() and not (Path(merged_dir) / "adapter_config.json").exists()
    outputs = stage_outputs(run)
    merged, adapter = load_checkpoint(merged_dir), load_checkpoint(outputs["final-selected"].model.uri)
    pairs = read_pairs(outputs["ingest"].validation.uri).select(range(16))
    a, b = (compute_logps(c.model, c.tokenizer, pairs, desc=None) for c in (merged, adapter))
    assert (a["chosen_logps"] - b["chosen_logps"]).abs().max() < 1e-4


def test_model_check_on_an_adapter_checks_its_base(lora_run):
    from prefcurate.flows.cli import app

    run, _, _ = lora_run
    outputs = stage_outputs(run)
    result = CliRunner().invoke(app, ["model", "check", outputs["warmup"].model.uri])
    assert result.exit_code == 0, result.output
    assert f"fingerprint   {outputs['warmup'].fingerprint}" in result.output
    assert f"(fingerprint {outputs['ingest'].sft_fingerprint}, checked)" in result.output
