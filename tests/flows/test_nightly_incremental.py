"""Nights of a growing pool: the first trains the scoring bundle, the next scores only the new pairs
and selects exactly what a full rescoring at the same bundle selects; removed pairs drop out; a
damaged store part is scored again, never used."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from prefcurate import io
from prefcurate.config import NightlyConfig
from prefcurate.toyworld.pool import new_pairs
from tests.flows.conftest import stage_outputs, toy_config
from tests.flows.test_nightly import _trains_as_is

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nights(toy_world, prefect_harness, tmp_path_factory):
    """Night 1 on the small world's pool; night 2 on it plus 5 % new pairs (fresh run names, one store)."""
    from prefcurate.flows.nightly import nightly

    base = tmp_path_factory.mktemp("nights")
    pool = pd.read_parquet(toy_world.pool_parquet)
    grown = pd.concat([pool, new_pairs(toy_world.spec.pool, toy_world.spec.seed, pool, n=len(pool) // 20)], ignore_index=True)
    pools = {"night-1": base / "pool-1.parquet", "night-2": base / "pool-2.parquet"}
    pool.to_parquet(pools["night-1"])
    grown.to_parquet(pools["night-2"])
    tracking = f"sqlite:///{base / 'mlflow.db'}"

    def night(name: str, pool_file: Path, store: Path = base / "store", **extra):
        raw = toy_config(toy_world, str(base / "runs"), tracking, run_name=name, cache_dir=str(base / "cache"))
        raw["data"] = {**raw["data"], "pool_uri": str(pool_file)}
        config = NightlyConfig.model_validate({**raw, "store_uri": str(store), "publish_uri": str(base / "published"), **extra})
        state = nightly(config, return_state=True)
        assert state.is_completed(), state.message
        return state.result()

    results = {name: night(name, uri) for name, uri in pools.items()}
    return base, pools, results, night, tracking


def test_the_second_night_scores_only_the_new_pairs(nights, toy_world):
    base, pools, results, _, tracking = nights
    first, second = results["night-1"], results["night-2"]
    n_new = len(pd.read_parquet(pools["night-2"])) - len(pd.read_parquet(pools["night-1"]))
    assert first.bundle_refreshed and "no scoring bundle" in first.refresh_reason and first.n_new == first.n_pool
    assert not second.bundle_refreshed and second.bundle_id == first.bundle_id
    assert second.n_new == n_new and second.n_pool == first.n_pool + n_new
    assert not (base / "runs" / "night-2" / "models").exists()  # no θ, θ_val trained on the second night
    stages = stage_outputs(base / "runs" / "night-2")
    assert "warmup" not in stages and stages["new-pairs"].n_new == n_new
    assert sum(s.pairs for name, s in stages.items() if name.startswith("score-new-")) == n_new  # only those were scored
    # the run records which bundle it used and why
    tags = MlflowClient(tracking_uri=tracking).get_run(second.mlflow_run_id).data.tags
    assert tags["bundle.id"] == first.bundle_id and tags["bundle.refreshed"] == "False" and tags["bundle.reason"] == "reused"
    # the published dataset of the second night trains as is
    published = io.read_parquet(io.join(second.dataset_uri, "data/train-00000-of-00001.parquet"))
    assert len(published) == second.n_kept
    _trains_as_is(second.dataset_uri, toy_world, base / "trl", n_pairs=second.n_kept)


def test_incremental_selection_equals_a_full_rescoring_at_the_same_bundle(nights):
    base, pools, results, night, _ = nights
    # a store that holds only the bundle: every pair of night 2's pool is scored against it from scratch
    fresh = base / "store-rescore"
    shutil.copytree(base / "store" / "bundles", fresh / "bundles")
    full = night("night-2-full", pools["night-2"], store=fresh)
    assert not full.bundle_refreshed and full.bundle_id == results["night-1"].bundle_id and full.n_new == full.n_pool
    incremental = pd.read_parquet(base / "runs" / "night-2" / "selection" / "selection.parquet")
    rescored = pd.read_parquet(base / "runs" / "night-2-full" / "selection" / "selection.parquet")
    assert incremental["pair_id"].tolist() == rescored["pair_id"].tolist()
    a = pd.read_parquet(base / "runs" / "night-2" / "scores" / "scores.parquet")
    b = pd.read_parquet(base / "runs" / "night-2-full" / "scores" / "scores.parquet")
    assert a["pair_id"].tolist() == b["pair_id"].tolist()
    for column in ("if", "lossdiff", "irm"):
        pd.testing.assert_series_equal(a[column], b[column], rtol=1e-4, atol=1e-6)  # fp32: other batch companions


def test_removed_pairs_drop_out_and_a_damaged_part_is_scored_again(nights, caplog):
    base, pools, results, night, _ = nights
    grown = pd.read_parquet(pools["night-2"])
    shrunk_file = base / "pool-3.parquet"
    removed = grown.iloc[:10]
    grown.iloc[10:].to_parquet(shrunk_file)
    third = night("night-3", shrunk_file)
    assert third.n_new == 0 and third.n_pool == len(grown) - 10 and not third.bundle_refreshed
    scores = pd.read_parquet(base / "runs" / "night-3" / "scores" / "scores.parquet")
    from prefcurate.data.pairs import read_pairs

    removed_ids = set(read_pairs(str(base / "runs" / "night-2" / "data" / "train.parquet"))["pair_id"]) - set(scores["pair_id"])
    assert len(removed_ids) == len(removed)
    # night 2's store part is damaged: its pairs are scored again, the damaged rows never read
    part = next(p for p in (base / "store" / "scores").rglob("part-night-2-*.parquet"))
    part.write_bytes(part.read_bytes()[:-20] + b"x" * 20)
    fourth = night("night-4", pools["night-2"])
    assert fourth.n_new == results["night-2"].n_new and not fourth.bundle_refreshed
    again = pd.read_parquet(base / "runs" / "night-4" / "selection" / "selection.parquet")
    before = pd.read_parquet(base / "runs" / "night-2" / "selection" / "selection.parquet")
    assert again["pair_id"].tolist() == before["pair_id"].tolist()


def test_a_changed_validation_set_refreshes_the_bundle(nights, toy_world):
    base, pools, results, night, _ = nights
    validation = pd.read_parquet(toy_world.validation_parquet).iloc[:-4]
    val_file = base / "validation-5.parquet"
    validation.to_parquet(val_file)
    raw_data = {"pool_uri": str(pools["night-2"]), "validation_uri": str(val_file), "eval_prompts_uri": toy_world.eval_prompts}
    kept = night("night-5-never", pools["night-2"], data=raw_data, refresh={"policy": "never"})
    assert not kept.bundle_refreshed and kept.n_new == 0
    fifth = night("night-5", pools["night-2"], data=raw_data)
    assert fifth.bundle_refreshed and "validation set changed" in fifth.refresh_reason
    assert fifth.bundle_id != results["night-1"].bundle_id and fifth.n_new == fifth.n_pool


def test_every_location_the_cli_prints_works_from_another_directory(toy_world, prefect_harness, tmp_path, monkeypatch):
    """A config with relative locations (root, store, publish target, sqlite store), run from one
    directory: what the command prints must be found from another."""
    import re

    import yaml
    from datasets import load_dataset
    from typer.testing import CliRunner

    from prefcurate.flows.cli import app

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("PREFCURATE_BASE_DIR", raising=False)  # the CLI: relative to where it runs
    config = {"model": {"uri": toy_world.checkpoint_dir},
              "data": {"pool_uri": toy_world.pool_parquet, "validation_uri": toy_world.validation_parquet},
              "scoring": {"shard_size": 120}, "tracking": {"experiment": "links"},
              "evaluation": {"baselines": ["sft"]}}  # a curate config: its evaluation section is ignored
    (here / "cfg.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["nightly", "--config", "cfg.yaml"])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(elsewhere)
    run_root = re.search(r"Run root:\s+(\S+)", result.output).group(1)
    assert run_root == str(here / "runs" / "nightly") and (Path(run_root) / "manifests" / "publish.json").exists()
    n_kept, dataset = re.search(r"Published (\d+) pairs to (\S+) ", result.output).groups()
    assert Path(dataset).is_absolute() and len(load_dataset(dataset, split="train")) == int(n_kept)
    store_uri = re.search(r"--backend-store-uri (\S+)", result.output).group(1)
    run_id = re.search(r"MLflow run: \S+/runs/(\w+)", result.output).group(1)
    assert store_uri == f"sqlite:///{here / 'mlflow.db'}"
    assert MlflowClient(tracking_uri=store_uri).get_run(run_id).data.tags["bundle.refreshed"] == "True"
    assert (here / "runs" / "store" / "bundles").is_dir()  # the store defaults to <root>/store
