"""MLflow tracking on a temporary sqlite store: what is logged is read back from the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from prefcurate import tracking
from prefcurate.config import DataSource, ModelSource, RunConfig, TrackingConfig, flatten
from prefcurate.errors import PrefcurateError


@pytest.fixture(scope="module")
def store_db(tmp_path_factory) -> Path:
    """One sqlite store per module: creating MLflow's schema takes seconds."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture
def store(store_db: Path, tmp_path: Path, request) -> TrackingConfig:
    """A fresh experiment per test in the shared store, with its own artifact root."""
    return TrackingConfig(tracking_uri=f"sqlite:///{store_db}", experiment=request.node.name,
                          artifact_location=str(tmp_path / "artifacts"))


@pytest.fixture
def mlc(store: TrackingConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)


def test_parent_and_stage_runs_form_a_tree_with_status(store, mlc):
    parent = tracking.start_parent_run(store, run_name="curate", flow_run_id="fr-1", deployment="curate/curate",
                                       tags={"team": "align"})
    with tracking.stage_run(parent, "score") as score:
        pass
    with pytest.raises(RuntimeError):
        with tracking.stage_run(parent, "warmup"):
            raise RuntimeError("boom")
    tracking.finish_run(parent)

    p = mlc.get_run(parent.run_id)
    assert p.data.tags[tracking.FLOW_RUN_TAG] == "fr-1"
    assert p.data.tags[tracking.DEPLOYMENT_TAG] == "curate/curate"
    assert p.data.tags["team"] == "align"
    assert p.info.status == "FINISHED"
    children = mlc.search_runs([parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    by_stage = {r.data.tags[tracking.STAGE_TAG]: r for r in children}
    assert set(by_stage) == {"score", "warmup"}
    assert by_stage["score"].info.run_id == score.run_id
    assert by_stage["score"].info.status == "FINISHED"
    assert by_stage["warmup"].info.status == "FAILED"


def test_rerun_reuses_parent_and_stage_runs(store, mlc):
    first = tracking.start_parent_run(store, run_name="curate", flow_run_id="fr-2")
    with tracking.stage_run(first, "score") as a:
        pass
    again = tracking.start_parent_run(store, run_name="curate", flow_run_id="fr-2")
    with tracking.stage_run(again, "score") as b:
        pass
    other = tracking.start_parent_run(store, run_name="curate", flow_run_id="fr-3")
    assert again.run_id == first.run_id and b.run_id == a.run_id
    assert other.run_id != first.run_id
    assert len(mlc.search_runs([first.experiment_id], "tags.`prefcurate.stage` = 'score'")) == 1


def test_params_hold_the_flattened_config_without_secrets(store, mlc):
    config = RunConfig(model=ModelSource(uri="/m"), data=DataSource(pool_uri="/p.parquet"), tracking=store)
    run = tracking.start_parent_run(store, run_name="p")
    secrets = {"hub_token": "hf_SECRET", "db.password": "hunter2", "evaluation.judge.api_key_env": "OPENAI_API_KEY"}
    flat = flatten(config) | {"model.fingerprint": "abc123", "data.pool_uri": "s3://AKIA:hunter2@bucket/p"} | secrets
    logged = tracking.log_params(run, flat)
    tracking.log_params(run, flat)  # resume: same values again is fine

    params = mlc.get_run(run.run_id).data.params
    assert params == logged
    assert params["training.beta"] == "0.5" and params["selection.rule"] == "lossdiff-irm"
    assert params["model.fingerprint"] == "abc123"
    assert params["evaluation.generation.max_new_tokens"] == "64"  # a word match, not a substring match
    assert params["data.pool_uri"] == "s3://bucket/p"
    assert not any(s in v for s in ("hf_SECRET", "hunter2", "AKIA") for v in params.values())
    assert set(params) == set(flat) - set(secrets)


def test_metrics_keep_their_steps_and_skip_non_numbers(store, mlc):
    run = tracking.start_parent_run(store, run_name="m")
    for step, loss in enumerate([0.69, 0.5, 0.4]):
        tracking.log_metrics(run, {"loss": loss}, step=step)
    logged = tracking.log_metrics(run, {"kept_fraction": 0.6, "pearson(if,lossdiff)": 0.77, "rule": "lossdiff-irm"})
    assert set(logged) == {"kept_fraction", "pearson_if_lossdiff_"}
    history = mlc.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.69), (1, 0.5), (2, 0.4)]
    assert mlc.get_run(run.run_id).data.metrics["kept_fraction"] == 0.6


def test_artifacts_from_bytes_files_and_directories(store, mlc, tmp_path):
    run = tracking.start_parent_run(store, run_name="a")
    scores = tmp_path / "scores.parquet"
    scores.write_bytes(b"PAR1fake")
    (tmp_path / "eval" / "sft").mkdir(parents=True)
    (tmp_path / "eval" / "sft" / "leaderboard.csv").write_text("model,win_rate\nsft,0.5\n")
    tracking.log_artifact(run, b"\x89PNG...", "figures/scores.png")
    tracking.log_artifact(run, scores, "scores/scores.parquet")
    tracking.log_artifact(run, scores, "selection/renamed.parquet")
    tracking.log_artifact(run, tmp_path / "eval", "eval")

    root = Path(mlc.get_run(run.run_id).info.artifact_uri)
    assert (root / "figures/scores.png").read_bytes() == b"\x89PNG..."
    assert (root / "scores/scores.parquet").read_bytes() == b"PAR1fake"
    assert (root / "selection/renamed.parquet").read_bytes() == b"PAR1fake"
    assert (root / "eval/sft/leaderboard.csv").read_text().endswith("sft,0.5\n")
    with pytest.raises(PrefcurateError, match="no such file"):
        tracking.log_artifact(run, tmp_path / "missing.txt", "x/missing.txt")


def test_register_model_sets_alias_on_a_loadable_checkpoint(store, mlc, tmp_path):
    from transformers import AutoModelForCausalLM

    from prefcurate.toyworld.model import build_model
    from prefcurate.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, size="small", seed=0)
    ckpt = tmp_path / "final"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    (ckpt / "checkpoint-1").mkdir()
    (ckpt / "checkpoint-1" / "optimizer.pt").write_bytes(b"x")
    run = tracking.start_parent_run(store, run_name="r")

    v1 = tracking.register_model(run, ckpt, "toy", alias="candidate")
    v2 = tracking.register_model(run, ckpt, "toy", alias="candidate")
    assert (v1, v2) == ("1", "2")
    version = mlc.get_model_version_by_alias("toy", "candidate")
    assert str(version.version) == "2" and version.run_id == run.run_id
    files = {a.path for a in mlc.list_artifacts(run.run_id, "model")}
    assert "model/model.safetensors" in files and not any("checkpoint-1" in f for f in files)
    reloaded = AutoModelForCausalLM.from_pretrained(version.source)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(PrefcurateError, match="not a checkpoint directory"):
        tracking.register_model(run, tmp_path / "nowhere", "toy")


def test_run_url_and_ui_command_never_show_credentials(store):
    run = tracking.start_parent_run(store, run_name="u")
    assert tracking.run_url(run) == f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    remote = run.model_copy(update={"tracking_uri": "https://alice:s3cret@mlflow.example.com:8443/"})
    assert tracking.run_url(remote).startswith("https://mlflow.example.com:8443/#/experiments/")
    assert "s3cret" not in tracking.ui_command(remote.tracking_uri)
    assert tracking.ui_command(store.tracking_uri) == f"mlflow ui --backend-store-uri {store.tracking_uri}"
    custom = run.model_copy(update={"ui_url": "http://mlflow.internal/"})
    assert tracking.run_url(custom).startswith("http://mlflow.internal/#/experiments/")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "nosuchscheme://x"])
def test_unreachable_store_is_one_clear_error(uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(PrefcurateError, match="check tracking.tracking_uri") as err:
        tracking.start_parent_run(TrackingConfig(tracking_uri=uri), run_name="x")
    assert "\n" not in str(err.value) and uri in str(err.value)


@pytest.mark.slow
def test_trainer_curve_lands_in_the_stage_run_without_checkpoints(store, mlc, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from prefcurate.toyworld.model import build_model
    from prefcurate.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, size="small", seed=0)
    ids = list(range(7, 17))
    data = Dataset.from_dict({"input_ids": [ids] * 16, "labels": [ids] * 16})
    parent = tracking.start_parent_run(store, run_name="t")
    with tracking.stage_run(parent, "warmup") as stage:
        args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=4,
                                 logging_steps=1, save_strategy="steps", save_steps=2, report_to="none",
                                 learning_rate=1e-2, use_cpu=True, seed=0)
        Trainer(model=model, args=args, train_dataset=data,
                callbacks=[tracking.MlflowMetricsCallback(stage)]).train()

    history = mlc.get_metric_history(stage.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert history[-1].value < history[0].value
    assert "train/train_runtime" in mlc.get_run(stage.run_id).data.metrics
    assert mlc.list_artifacts(stage.run_id) == []  # checkpoints were saved on disk, not uploaded
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    assert mlc.get_metric_history(parent.run_id, "train/loss") == []
    assert json.loads(json.dumps(stage.model_dump()))["run_id"] == stage.run_id  # the handle crosses processes
