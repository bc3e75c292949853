"""Incremental scoring tasks: choose or refresh the scoring bundle, find and score the new pairs (in shards,
on any task runner), read the pool's scores from the store (`prefcurate.scoring.bundle`, `prefcurate.scoring.incremental`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.data.stage import IngestOut
from prefcurate.scoring.bundle import BUNDLE, BundleOut
from prefcurate.scoring.incremental import (
    NEW_PAIRS,
    POOL_SCORES,
    SCORE_NEW_SHARD,
    BundleChoice,
    NewPairsOut,
    NewShardOut,
    choose_bundle,
    new_shard_stage_name,
)
from prefcurate.scoring.stage import GradientOut, ScoreOut
from prefcurate.tasks.common import IO_RETRIES, run_spec, wire_core_logging
from prefcurate.tracking import RunHandle
from prefcurate.training.stage import ModelOut


@task(name="choose-bundle", cache_policy=NONE, **IO_RETRIES)
def choose_bundle_task(ingest: IngestOut, config: Any) -> BundleChoice:
    """The latest scoring bundle of the SFT model, or the refresh policy's reason to train a new one."""
    wire_core_logging()
    return choose_bundle(config, ingest)


@task(name="save-bundle", cache_policy=NONE, **IO_RETRIES)
def save_bundle_stage(ingest: IngestOut, warmup: ModelOut, val: ModelOut, gradient: GradientOut | None, reason: str,
                      config: Any, run: str, tracking: RunHandle | None = None) -> BundleOut:
    """θ, θ_val and ∇L_val of this run copied into the store as the SFT model's latest bundle."""
    inputs = {"ingest": ingest, "warmup": warmup, "val": val, "gradient": gradient, "reason": reason}
    return run_spec(BUNDLE, run, config, inputs=inputs, tracking=tracking)


@task(name="new-pairs", cache_policy=NONE, **IO_RETRIES)
def new_pairs_stage(ingest: IngestOut, bundle: BundleOut, config: Any, run: str,
                    tracking: RunHandle | None = None) -> NewPairsOut:
    """scores/new_pairs.parquet: the pool's pairs the store has no score for at this bundle."""
    return run_spec(NEW_PAIRS, run, config, inputs={"ingest": ingest, "bundle": bundle}, tracking=tracking)


@task(name="score-new-shard", cache_policy=NONE, **IO_RETRIES)
def score_new_shard_stage(index: int, rows: tuple[int, int], ingest: IngestOut, new: NewPairsOut, bundle: BundleOut,
                          config: Any, run: str) -> NewShardOut:
    """One shard of the new pairs scored at the bundle and appended to the store."""
    inputs = {"rows": tuple(rows), "ingest": ingest, "new": new, "bundle": bundle}
    return run_spec(SCORE_NEW_SHARD, run, config, inputs=inputs, stage=new_shard_stage_name(index))


@task(name="score", cache_policy=NONE, **IO_RETRIES)
def pool_scores_stage(ingest: IngestOut, bundle: BundleOut, new: NewPairsOut, shards: list[NewShardOut], config: Any,
                      run: str, tracking: RunHandle | None = None) -> ScoreOut:
    """scores/scores.parquet: the current pool's rows from the store, TIF over the whole pool."""
    inputs = {"ingest": ingest, "bundle": bundle, "new": new, "shards": list(shards)}
    return run_spec(POOL_SCORES, run, config, inputs=inputs, tracking=tracking)
