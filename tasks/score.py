"""Scoring tasks: π_ref's log-probs, the pool's shards (mappable over any task runner), the pool's table and an
external reward model's margins."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.data.stage import IngestOut
from prefcurate.scoring.reference import REFERENCE, ReferenceOut
from prefcurate.scoring.stage import REWARD, SCORE, SHARD, GradientOut, RewardOut, ScoreOut, ShardOut, shard_stage_name
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle
from prefcurate.training.stage import ModelOut


@task(name="reference-logps", cache_policy=NONE, **IO_RETRIES)
def reference_stage(ingest: IngestOut, config: Any, run: str, tracking: RunHandle | None = None) -> ReferenceOut:
    """scores/ref_logps.parquet: the SFT model's log-probs of every train and validation pair."""
    return run_spec(REFERENCE, run, config, inputs={"ingest": ingest}, tracking=tracking)


@task(name="score-shard", cache_policy=NONE, **IO_RETRIES)
def score_shard_stage(index: int, rows: tuple[int, int], ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut,
                      val: ModelOut, gradient: GradientOut | None, config: Any, run: str) -> ShardOut:
    """scores/shards/shard-XXXXX.parquet: every score of one row range of the pool except TIF."""
    inputs = {"rows": tuple(rows), "ingest": ingest, "ref": ref, "warmup": warmup, "val": val, "gradient": gradient}
    return run_spec(SHARD, run, config, inputs=inputs, stage=shard_stage_name(index))


@task(name="score", cache_policy=NONE, **IO_RETRIES)
def merge_scores_stage(shards: list[ShardOut], config: Any, run: str, tracking: RunHandle | None = None) -> ScoreOut:
    """scores/scores.parquet: the shards joined, with TIF from the pool's IF percentiles."""
    return run_spec(SCORE, run, config, inputs={"shards": list(shards)}, tracking=tracking)


@task(name="reward-scores", cache_policy=NONE, **IO_RETRIES)
def reward_stage(ingest: IngestOut, config: Any, run: str, tracking: RunHandle | None = None) -> RewardOut | None:
    """scores/reward_scores.parquet: `selection.reward_model`'s chosen − rejected margin of every pool pair
    (None without a reward model)."""
    if config.selection.reward_model is None:
        return None
    return run_spec(REWARD, run, config, inputs={"ingest": ingest}, tracking=tracking)
