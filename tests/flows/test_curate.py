"""The `curate` flow on the small toy world: Prefect states, the run layout, MLflow's run tree,
Prefect artifacts, a rerun that recomputes nothing, and Dask scoring = in-process scoring."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest
from mlflow import MlflowClient

from prefcurate import io
from prefcurate.config import RunConfig, load_config
from tests.flows.conftest import stage_outputs

pytestmark = pytest.mark.slow

LAYOUT = [
    "data/train.parquet", "data/validation.parquet", "data/eval_prompts.parquet", "data/rejects.parquet",
    "models/warmup/model.safetensors", "models/val/model.safetensors", "gradients/val_grad.safetensors",
    "scores/ref_logps.parquet", "scores/scores.parquet", "selection/selection.parquet", "selection/selection.json",
    "selection/agreement.json", "selection/rules/random/selection.parquet",
    "models/final/selected/model.safetensors", "models/final/full/model.safetensors",
    "models/final/random/model.safetensors", "eval/leaderboard.csv", "eval/sft/model_outputs.json",
    "eval/selected/annotations.json", "report.md", "figures",
]  # fmt: skip


async def _prefect_records():
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs()
        names = {f.id: f.name for f in await client.read_flows()}
        artifacts = await client.read_artifacts()
    return [(names[r.flow_id], r.state.type.value) for r in runs], {a.key for a in artifacts}


def test_run_layout_and_manifests(curated):
    assert curated.exit_code == 0, curated.stdout
    for rel in LAYOUT:
        assert (curated.run / rel).exists(), rel
    outputs = stage_outputs(curated.run)
    shards = [s for s in outputs if s.startswith("score-shard-")]
    assert len(shards) == 4  # 240 pairs / 60
    assert sum(outputs[s].pairs for s in shards) == outputs["score"].pairs == 240
    kept = pd.read_parquet(curated.run / "selection" / "selection.parquet")
    assert outputs["select"].n_kept == len(kept) == outputs["final-selected"].n_pairs
    random = pd.read_parquet(curated.run / "selection" / "rules" / "random" / "selection.parquet")
    assert len(random) == len(kept) == outputs["final-random"].n_pairs
    assert outputs["final-full"].n_pairs == 240
    # every output a manifest vouches for still has the content it recorded
    for stage, output in outputs.items():
        refs = list(output.file_refs())
        assert refs or stage == "register", stage  # registering writes to MLflow only
        for name, ref in refs:
            assert ref.problem() is None, (stage, name)


def test_prefect_states_and_artifacts(curated):
    runs, keys = asyncio.run(_prefect_records())
    assert ("curate", "COMPLETED") in runs
    assert ("score-shards", "COMPLETED") in runs  # the scoring sub-flow on its own task runner
    assert {"leaderboard", "selection-summary", "agreement-overlap", "run-report", "mlflow-run"} <= keys


def test_mlflow_run_tree(curated):
    client = MlflowClient(tracking_uri=curated.tracking_uri)
    exp = client.get_experiment_by_name("flows-test")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`prefcurate.flow` = 'curate'")
    assert len(runs) == 1
    parent = runs[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("prefect.flow_run_id")
    assert parent.data.params["training.learning_rate"] == "0.0002"
    assert parent.data.params["scoring.shard_size"] == "60"
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages = {c.data.tags["prefcurate.stage"]: c for c in children}
    assert {"ingest", "reference", "warmup", "val", "val-gradient", "score", "select", "final-selected", "final-full",
            "final-random", "judge"} <= set(stages)  # fmt: skip
    assert all(c.info.status == "FINISHED" for c in children)
    ingest = stages["ingest"].data
    assert len(ingest.params["model.fingerprint"]) == 64 and "data.hash.train" in ingest.params
    assert ingest.metrics["rows.train"] == 240
    # TRL's training logs, written into the stage's own run
    warmup = stage_outputs(curated.run)["warmup"]
    assert stages["warmup"].data.metrics["train/train_loss"] == pytest.approx(warmup.train_loss)
    select = stages["select"].data.metrics
    kept = pd.read_parquet(curated.run / "selection" / "selection.parquet")
    assert select["kept_fraction"] == pytest.approx(len(kept) / 240)
    assert "pearson_if.lossdiff" in select and "overlap_tif.lossdiff-irm" in select
    board = pd.read_csv(curated.run / "eval" / "leaderboard.csv", index_col=0)
    assert stages["judge"].data.metrics["win_rate.selected"] == pytest.approx(board.loc["selected", "win_rate"])
    for model in board.index:  # the headline numbers also sit on the parent, for the runs table
        assert parent.data.metrics[f"win_rate.{model}"] == pytest.approx(board.loc[model, "win_rate"])
        assert parent.data.metrics[f"standard_error.{model}"] == pytest.approx(board.loc[model, "standard_error"])
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert len(figures) == 4
    assert {a.path for a in client.list_artifacts(stages["score"].info.run_id, "scores")} == {"scores/scores.parquet"}
    version = client.get_model_version_by_alias("toy-selected", "candidate")
    assert version.run_id == stages["register"].info.run_id
    # the version says what it is without opening the run: rule, kept share, win rates, digests
    outputs = stage_outputs(curated.run)
    assert version.tags["prefcurate.rule"] == "lossdiff-irm"
    assert float(version.tags["prefcurate.kept_fraction"]) == pytest.approx(len(kept) / 240, abs=1e-4)
    assert float(version.tags["prefcurate.win_rate.selected"]) == pytest.approx(board.loc["selected", "win_rate"], abs=0.01)
    assert version.tags["prefcurate.data_sha256"] == outputs["ingest"].train.sha256
    assert version.tags["prefcurate.model_sha256"] == outputs["final-selected"].model.sha256
    assert f"{len(kept)} of 240 pairs" in version.description and "lossdiff-irm" in version.description


def test_rerun_recomputes_nothing_and_gives_the_same_result(curated, prefect_harness):
    from prefcurate.flows.curate import curate

    before = stage_outputs(curated.run)
    config = load_config(RunConfig, curated.config_file)
    state = curate(config, return_state=True)
    assert state.is_completed()
    result = state.result()
    after = stage_outputs(curated.run)
    assert set(after) == set(before)
    for stage, output in before.items():
        assert after[stage].meta.created_at == output.meta.created_at, stage
    board = pd.read_csv(curated.run / "eval" / "leaderboard.csv", index_col=0)
    assert {r["model"]: r["win_rate"] for r in result.leaderboard} == pytest.approx(board["win_rate"].to_dict())
    assert result.n_kept == before["select"].n_kept
    # the rerun continued the first run's MLflow parent instead of leaving an empty one beside it
    client = MlflowClient(tracking_uri=curated.tracking_uri)
    experiment = client.get_experiment_by_name("flows-test")
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`prefcurate.run_uri` = '{curated.run}' "
                                 "and tags.`prefcurate.flow` = 'curate'")
    assert [p.info.run_id for p in parents] == [result.mlflow_run_id]
    assert parents[0].info.status == "FINISHED"


def test_dask_scoring_equals_in_process(curated, prefect_harness, tmp_path, monkeypatch):
    import prefcurate.flows.runs as runs_module
    from prefcurate.config import ScaleOutConfig
    from prefcurate.flows.curate import score_shards
    from prefcurate.flows.runs import task_runner

    # shards finishing in any order (here: last first) must not change the merge stage's cache key
    monkeypatch.setattr(runs_module, "as_completed", lambda futures: list(reversed(list(futures))))

    m = stage_outputs(curated.run)
    config = load_config(RunConfig, curated.config_file)
    run = str(tmp_path / "dask-run")
    runner = task_runner(ScaleOutConfig(task_runner="dask", workers=2, processes=True))
    done = {"ingest": m["ingest"], "ref": m["reference"], "warmup": m["warmup"], "val": m["val"], "gradient": m["val-gradient"]}
    merged = score_shards.with_options(task_runner=runner)(done, config, run)
    assert merged.meta.run_uri == run and merged.shards == 4
    dask_scores = io.read_parquet(merged.scores.uri)
    local_scores = pd.read_parquet(curated.run / "scores" / "scores.parquet")
    pd.testing.assert_frame_equal(dask_scores, local_scores, check_exact=True)
    assert merged.meta.cache_key == m["score"].meta.cache_key  # so a rerun on Dask reuses the merged scores


def test_invalid_flow_parameters_fail_before_any_work(prefect_harness, tmp_path):
    from prefect.exceptions import ParameterTypeError

    from prefcurate.flows.curate import curate

    bad = {"root": str(tmp_path / "runs"), "model": {"uri": "m"}, "data": {"pool_uri": "p"},
           "scoring": {"tif_band": [80, 20]}}  # fmt: skip
    with pytest.raises(ParameterTypeError, match="tif_band"):
        curate(bad)
    assert not (tmp_path / "runs").exists()
