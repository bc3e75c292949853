"""Scoring stages: π_ref's log-probs once, then the pool in shards, then the pool-wide table.

Each shard is a stage of its own (`score-shard-00003`), cached by its row range and every
input it reads, so a run killed mid-scoring resumes at the first unfinished shard, and the
shards can be mapped over any Prefect task runner (prefect-dask included): they read their
inputs from the run root, never from the flow's memory.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from prefcurate import io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.config import ScoringConfig, TrainingConfig
from prefcurate.data import read_pairs
from prefcurate.influence import load_gradient
from prefcurate.logps import compute_logps
from prefcurate.manifest import StageManifest
from prefcurate.scores import finalize_scores, load_scoring_models, score_shard
from prefcurate.tracking import RunHandle, log_artifact
from tasks.common import IO_RETRIES, StageOutput, run_stage, sft_source

REF_MODULES = ("prefcurate.logps", "prefcurate.checkpoint")
SHARD_MODULES = ("prefcurate.scores", "prefcurate.influence", "prefcurate.logps", "prefcurate.checkpoint")


def _shape(training: TrainingConfig) -> dict[str, Any]:
    """The training fields that change a log-prob or a DPO loss."""
    return {"beta": training.beta, "max_length": training.max_length, "truncation_mode": training.truncation_mode,
            "lora": training.lora.model_dump(mode="json") if training.lora else None, "seed": training.seed}


@task(name="reference-logps", cache_policy=NONE, **IO_RETRIES)
def reference_stage(
    ingest: StageManifest, training: TrainingConfig, scoring: ScoringConfig, run: str, tracking: RunHandle | None = None
) -> StageManifest:
    """scores/ref_logps.parquet: the SFT model's log-probs of every train and validation pair."""

    def compute(_: RunHandle | None) -> StageOutput:
        ckpt = load_checkpoint(sft_source(ingest))
        frames = [
            compute_logps(ckpt.model, ckpt.tokenizer, read_pairs(ingest.outputs[split]), batch_size=scoring.batch_size,
                          max_length=training.max_length, truncation_mode=training.truncation_mode,
                          desc=f"π_ref log-probs ({split})")
            for split in ("train", "validation")
        ]  # fmt: skip
        frame = pd.concat([f for f in frames if len(f)], ignore_index=True)
        uri = io.write_parquet(io.join(run, "scores", "ref_logps.parquet"), frame)
        return StageOutput(outputs={"ref_logps": uri},
                           rows={"pairs": len(frame), "truncated": int(frame["truncated"].sum())})

    config = {k: v for k, v in _shape(training).items() if k in ("max_length", "truncation_mode")}
    return run_stage("reference", run, inputs=(ingest,), config=config, modules=REF_MODULES, tracking=tracking,
                     compute=compute)


def shard_ranges(n_pairs: int, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) row ranges, as `prefcurate.scores.shards` cuts them."""
    return [(start, min(start + shard_size, n_pairs)) for start in range(0, n_pairs, shard_size)]


def shard_stage_name(index: int) -> str:
    return f"score-shard-{index:05d}"


@task(name="score-shard", cache_policy=NONE, **IO_RETRIES)
def score_shard_stage(
    index: int,
    rows: tuple[int, int],
    ingest: StageManifest,
    ref: StageManifest,
    warmup: StageManifest,
    val: StageManifest,
    gradient: StageManifest | None,
    training: TrainingConfig,
    scoring: ScoringConfig,
    run: str,
    tracking: RunHandle | None = None,
) -> StageManifest:
    """scores/shards/shard-XXXXX.parquet: every score of one row range of the pool except TIF."""
    stage = shard_stage_name(index)
    inputs = tuple(m for m in (ingest, ref, warmup, val, gradient) if m is not None)

    def compute(_: RunHandle | None) -> StageOutput:
        pool = read_pairs(ingest.outputs["train"])
        pairs = pool.select(range(*rows))
        models = load_scoring_models(warmup.outputs["model"], val.outputs["model"], training)
        grad = load_gradient(gradient.outputs["gradient"], models.policy_fingerprint) if gradient is not None else None
        frame = score_shard(pairs, models=models, ref_logps=io.read_parquet(ref.outputs["ref_logps"]),
                            gradient=grad, training=training, scoring=scoring)
        uri = io.write_parquet(io.join(run, "scores", "shards", f"shard-{index:05d}.parquet"), frame)
        return StageOutput(outputs={"scores": uri}, rows={"pairs": len(frame), "truncated": int(frame["truncated"].sum())})

    config = {"rows": list(rows), **_shape(training),
              **scoring.model_dump(mode="json", include={"batch_size", "cosine", "compute_if"})}
    return run_stage(stage, run, inputs=inputs, config=config, modules=SHARD_MODULES, tracking=None, compute=compute)


def _summary(frame: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for column in ("if", "lossdiff", "irm"):
        values = frame[column].astype(float)
        if values.notna().any():
            out.update({f"{column}.mean": values.mean(), f"{column}.std": values.std(),
                        f"{column}.p50": values.median()})
    if frame["tif"].notna().any():
        out["tif.kept_fraction"] = float(frame["tif"].astype(float).mean())
    return out


@task(name="score", cache_policy=NONE, **IO_RETRIES)
def merge_scores_stage(
    shards: list[StageManifest], scoring: ScoringConfig, run: str, tracking: RunHandle | None = None
) -> StageManifest:
    """scores/scores.parquet: the shards joined, with TIF from the pool's IF percentiles."""

    def compute(child: RunHandle | None) -> StageOutput:
        frames = [io.read_parquet(m.outputs["scores"]) for m in sorted(shards, key=lambda m: m.stage)]
        scores = finalize_scores(frames, scoring.tif_band)
        uri = io.write_parquet(io.join(run, "scores", "scores.parquet"), scores)
        summary = _summary(scores)
        if child is not None:
            log_artifact(child, uri, "scores/scores.parquet")
        return StageOutput(
            outputs={"scores": uri},
            rows={"pairs": len(scores), "shards": len(shards), "truncated": int(scores["truncated"].sum())},
            extra={"summary": summary},
            metrics=summary,
            params={"scoring.shards": len(shards)},
        )

    return run_stage("score", run, inputs=shards, config=scoring, modules=("prefcurate.scores",), tracking=tracking,
                     compute=compute)
