"""Scoring tasks via `.fn` on the small toy world, with θ = θ_val = the SFT model (no training):
sharded + merged scores equal the core's one-pass `score_pool`, and each shard resumes alone."""

from __future__ import annotations

import pandas as pd
import pytest

from prefcurate import io
from prefcurate.config import DataSource, ModelSource, NightlyConfig, ScoringConfig, TrainingConfig
from prefcurate.data.pairs import read_pairs
from prefcurate.manifest import FileRef, manifest_uri
from prefcurate.scoring.influence import load_gradient
from prefcurate.scoring.scores import load_scoring_models, score_pool, shard_ranges
from prefcurate.tasks.gradient import gradient_stage
from prefcurate.tasks.ingest import ingest_stage
from prefcurate.tasks.score import merge_scores_stage, reference_stage, score_shard_stage
from prefcurate.training.stage import ModelOut


def test_shard_ranges_cover_the_pool_once():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(3, 100) == [(0, 3)]


def _config(toy_world, cache: str, **data) -> NightlyConfig:
    return NightlyConfig(
        model=ModelSource(uri=toy_world.checkpoint_dir), cache_dir=cache,
        data=DataSource(pool_uri=toy_world.pool_parquet, validation_uri=toy_world.validation_parquet, **data),
        training=TrainingConfig(), scoring=ScoringConfig(shard_size=100, batch_size=32),
    )


@pytest.fixture(scope="module")
def staged(toy_world, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("score-run"))
    config = _config(toy_world, str(tmp_path_factory.mktemp("cache")))
    ingest = ingest_stage.fn(config, run)
    ref = reference_stage.fn(ingest, config, run)
    # stand-ins for θ and θ_val: the SFT checkpoint itself (a valid model; scoring needs no training)
    sft = ModelOut(model=FileRef.of(toy_world.checkpoint_dir), fingerprint="sft", n_pairs=0, n_trained=0, steps=0,
                   train_loss=0.0, seconds=0.0)
    grad = gradient_stage.fn(ingest, ref, sft, config, run)
    return run, config, ingest, ref, sft, grad


def _shards(run, config, ingest, ref, sft, grad):
    ranges = shard_ranges(ingest.n_train, config.scoring.shard_size)
    return [score_shard_stage.fn(i, r, ingest, ref, sft, sft, grad, config, run) for i, r in enumerate(ranges)]


def test_sharded_scores_equal_one_pass_scoring(staged):
    run, config, ingest, ref, sft, grad = staged
    merged = merge_scores_stage.fn(_shards(run, config, ingest, ref, sft, grad), config, run)
    sharded = io.read_parquet(merged.scores.uri)
    models = load_scoring_models(sft.model.uri, sft.model.uri)
    direct = score_pool(read_pairs(ingest.train.uri), models=models, ref_logps=io.read_parquet(ref.ref_logps.uri),
                        gradient=load_gradient(grad.gradient.uri), training=config.training, scoring=config.scoring)
    pd.testing.assert_frame_equal(sharded, direct, check_exact=False, rtol=1e-6)
    assert (merged.pairs, merged.shards, merged.truncated) == (240, 3, int(direct["truncated"].sum()))
    # θ = θ_val ⇒ LossDiff is 0 for every pair; IF is defined and TIF keeps the middle half
    assert sharded["lossdiff"].abs().max() < 1e-5
    assert sharded["tif"].mean() == pytest.approx(0.5, abs=0.01)


def test_a_lost_shard_is_the_only_one_recomputed(staged):
    run, config, ingest, ref, sft, grad = staged
    first = _shards(run, config, ingest, ref, sft, grad)
    io.filesystem(manifest_uri(run, "score-shard-00001"))[0].rm(manifest_uri(run, "score-shard-00001"))
    again = _shards(run, config, ingest, ref, sft, grad)
    assert [a.meta.created_at == f.meta.created_at for a, f in zip(again, first)] == [True, False, True]
    assert again[1].scores.sha256 == first[1].scores.sha256  # recomputed to the same bytes


def test_ingest_reruns_when_the_pool_file_changes(toy_world, tmp_path):
    pool = tmp_path / "pool.parquet"
    frame = pd.read_parquet(toy_world.pool_parquet)
    frame.to_parquet(pool)
    run = str(tmp_path / "run")
    config = NightlyConfig(model=ModelSource(uri=toy_world.checkpoint_dir), cache_dir=str(tmp_path / "cache"),
                           data=DataSource(pool_uri=str(pool), validation_fraction=0.2))
    first = ingest_stage.fn(config, run)
    assert ingest_stage.fn(config, run).meta.created_at == first.meta.created_at
    frame.iloc[:200].to_parquet(pool)  # same URI, new content
    second = ingest_stage.fn(config, run)
    assert second.meta.created_at > first.meta.created_at
    assert second.rows_read == 200 and first.rows_read == len(frame)
    assert second.sft_fingerprint == toy_world.stats["sft"]["fingerprint"]
