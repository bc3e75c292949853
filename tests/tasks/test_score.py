"""Scoring tasks via `.fn` on the small toy world, with θ = θ_val = the SFT model (no training):
sharded + merged scores equal the core's one-pass `score_pool`, and each shard resumes alone."""

from __future__ import annotations

import pandas as pd
import pytest

from prefcurate import io
from prefcurate.config import DataSource, ModelSource, ScoringConfig, TrainingConfig
from prefcurate.data import read_pairs
from prefcurate.influence import load_gradient
from prefcurate.manifest import manifest_uri, new_manifest
from prefcurate.scores import load_scoring_models, score_pool
from tasks.gradient import gradient_stage
from tasks.ingest import ingest_stage
from tasks.score import merge_scores_stage, reference_stage, score_shard_stage, shard_ranges


def test_shard_ranges_cover_the_pool_once():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(3, 100) == [(0, 3)]


@pytest.fixture(scope="module")
def staged(toy_world, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("score-run"))
    model = ModelSource(uri=toy_world.checkpoint_dir)
    source = DataSource(pool_uri=toy_world.pool_parquet, validation_uri=toy_world.validation_parquet)
    training, scoring = TrainingConfig(), ScoringConfig(shard_size=100, batch_size=32)
    ingest = ingest_stage.fn(model, source, run, str(tmp_path_factory.mktemp("cache")))
    ref = reference_stage.fn(ingest, training, scoring, run)
    # stand-ins for θ and θ_val: the SFT checkpoint itself (a valid model; scoring needs no training)
    sft = new_manifest("warmup", run, key="sft", outputs={"model": toy_world.checkpoint_dir})
    grad = gradient_stage.fn(ingest, ref, sft, training, scoring, run)
    return run, ingest, ref, sft, grad, training, scoring


def test_sharded_scores_equal_one_pass_scoring(staged):
    run, ingest, ref, sft, grad, training, scoring = staged
    ranges = shard_ranges(ingest.rows["train"], scoring.shard_size)
    shards = [score_shard_stage.fn(i, r, ingest, ref, sft, sft, grad, training, scoring, run) for i, r in enumerate(ranges)]
    merged = merge_scores_stage.fn(shards, scoring, run)
    sharded = io.read_parquet(merged.outputs["scores"])
    models = load_scoring_models(sft.outputs["model"], sft.outputs["model"], training)
    direct = score_pool(read_pairs(ingest.outputs["train"]), models=models, ref_logps=io.read_parquet(ref.outputs["ref_logps"]),
                        gradient=load_gradient(grad.outputs["gradient"]), training=training, scoring=scoring)
    pd.testing.assert_frame_equal(sharded, direct, check_exact=False, rtol=1e-6)
    assert merged.rows == {"pairs": 240, "shards": 3, "truncated": int(direct["truncated"].sum())}
    # θ = θ_val ⇒ LossDiff is 0 for every pair; IF is defined and TIF keeps the middle half
    assert sharded["lossdiff"].abs().max() < 1e-5
    assert sharded["tif"].mean() == pytest.approx(0.5, abs=0.01)


def test_a_lost_shard_is_the_only_one_recomputed(staged):
    run, ingest, ref, sft, grad, training, scoring = staged
    ranges = shard_ranges(ingest.rows["train"], scoring.shard_size)
    first = [score_shard_stage.fn(i, r, ingest, ref, sft, sft, grad, training, scoring, run) for i, r in enumerate(ranges)]
    io.filesystem(manifest_uri(run, "score-shard-00001"))[0].rm(manifest_uri(run, "score-shard-00001"))
    again = [score_shard_stage.fn(i, r, ingest, ref, sft, sft, grad, training, scoring, run) for i, r in enumerate(ranges)]
    assert [a.created_at == f.created_at for a, f in zip(again, first)] == [True, False, True]
    assert again[1].hashes == first[1].hashes  # recomputed to the same bytes


def test_ingest_reruns_when_the_pool_file_changes(toy_world, tmp_path):
    pool = tmp_path / "pool.parquet"
    frame = pd.read_parquet(toy_world.pool_parquet)
    frame.to_parquet(pool)
    model, run, cache = ModelSource(uri=toy_world.checkpoint_dir), str(tmp_path / "run"), str(tmp_path / "cache")
    source = DataSource(pool_uri=str(pool), validation_fraction=0.2)
    first = ingest_stage.fn(model, source, run, cache)
    assert ingest_stage.fn(model, source, run, cache).created_at == first.created_at
    frame.iloc[:200].to_parquet(pool)  # same URI, new content
    second = ingest_stage.fn(model, source, run, cache)
    assert second.created_at > first.created_at
    assert second.rows["read"] == 200 and first.rows["read"] == len(frame)
    assert second.extra["sft_fingerprint"] == toy_world.stats["sft"]["fingerprint"]
