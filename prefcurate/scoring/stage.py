"""The scoring stages: ∇L_val(θ), the pool in shards, then the pool's table; and, when a
reward-model rule is asked for, an external reward model's margin of every pair (kept in the
score store with `store_uri`, so a grown pool scores only its new pairs).

Each shard is a stage of its own (`score-shard-00003`), keyed by its row range and every
input it reads, so a run killed mid-scoring resumes at the first unfinished shard, and the
shards can be mapped over any task runner: they read their inputs from the run root, never
from the flow's memory.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
from pydantic import Field

from prefcurate import compute, io
from prefcurate.checkpoint import load_checkpoint, source_fingerprint
from prefcurate.data.pairs import read_pairs
from prefcurate.data.stage import IngestOut
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.scoring.influence import load_gradient, save_gradient, validation_gradient
from prefcurate.scoring.reference import ReferenceOut
from prefcurate.scoring.reward_model import REWARD_COLUMNS, RewardModel, pair_rewards
from prefcurate.scoring.scores import finalize_scores, load_scoring_models, score_shard
from prefcurate.scoring.store import ScoreStore
from prefcurate.stage import StageContext, StageSpec, read_config
from prefcurate.tracking import log_metrics
from prefcurate.training.stage import ModelOut

# The training fields that change a log-prob, the per-pair loss or the trainable set IF is taken over.
LOSS_FIELDS = ("training.beta", "training.loss_type", "training.max_length", "training.truncation_mode", "training.lora",
               "training.seed")


class GradientOut(StageOutput):
    gradient: FileRef
    n_validation: int
    n_parameters: int
    norm: float
    val_loss: float
    model_fingerprint: str


def _gradient(ctx: StageContext, ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut) -> GradientOut:
    training, scoring = ctx.config.training, ctx.config.scoring
    ckpt = load_checkpoint(warmup.model.uri)
    model = compute.place(ckpt.model, ctx.config.compute)
    with compute.autocast(ctx.config.compute):
        gradient = validation_gradient(
            model, ckpt.tokenizer, read_pairs(ingest.validation.uri), io.read_parquet(ref.ref_logps.uri),
            beta=training.beta, loss_type=training.loss_type, batch_size=scoring.batch_size, max_length=training.max_length,
            truncation_mode=training.truncation_mode, max_tokens_per_batch=scoring.max_tokens_per_batch,
            model_fingerprint=ckpt.fingerprint,
        )  # fmt: skip
    uri = save_gradient(gradient, ctx.path("gradients", "val_grad.safetensors"))
    out = GradientOut(gradient=FileRef.of(uri), n_validation=int(gradient.metadata["n_pairs"]),
                      n_parameters=sum(t.numel() for t in gradient.tensors.values()), norm=gradient.norm(),
                      val_loss=float(gradient.metadata["val_loss"]), model_fingerprint=ckpt.fingerprint)
    ctx.metrics({"grad_norm": out.norm, "val_loss": out.val_loss, "rows.validation": out.n_validation})
    return out


GRADIENT = StageSpec("val-gradient", GradientOut, _gradient, reads=(*LOSS_FIELDS, *compute.READS))


class ShardOut(StageOutput):
    scores: FileRef
    pairs: int
    truncated: int


def shard_stage_name(index: int) -> str:
    return f"score-shard-{index:05d}"


def _shard(ctx: StageContext, rows: tuple[int, int], ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut,
           val: ModelOut, gradient: GradientOut | None) -> ShardOut:
    training, scoring = ctx.config.training, ctx.config.scoring
    pairs = read_pairs(ingest.train.uri).select(range(*rows))
    models = load_scoring_models(warmup.model.uri, val.model.uri, ctx.config.compute)
    grad = load_gradient(gradient.gradient.uri, models.policy_fingerprint) if gradient is not None else None
    with compute.autocast(ctx.config.compute):
        frame = score_shard(pairs, models=models, ref_logps=io.read_parquet(ref.ref_logps.uri), gradient=grad,
                            training=training, scoring=scoring)
    index = int(ctx.stage.rsplit("-", 1)[-1])
    uri = io.write_parquet(ctx.path("scores", "shards", f"shard-{index:05d}.parquet"), frame)
    return ShardOut(scores=FileRef.of(uri), pairs=len(frame), truncated=int(frame["truncated"].sum()))


SHARD = StageSpec("score-shard", ShardOut, _shard, tracked=False,
                  reads=(*LOSS_FIELDS, "scoring.batch_size", "scoring.max_tokens_per_batch", "scoring.cosine",
                         "scoring.compute_if", *compute.READS))


class ScoreOut(StageOutput):
    scores: FileRef
    pairs: int
    shards: int
    truncated: int
    summary: dict[str, float]


def summarize(frame: pd.DataFrame) -> dict[str, float]:
    """Mean, spread and median of every score, and TIF's kept share."""
    out: dict[str, float] = {}
    for column in ("if", "lossdiff", "irm"):
        values = frame[column].astype(float)
        if values.notna().any():
            out.update({f"{column}.mean": values.mean(), f"{column}.std": values.std(), f"{column}.p50": values.median()})
    if frame["tif"].notna().any():
        out["tif.kept_fraction"] = float(frame["tif"].astype(float).mean())
    return out


def _merge(ctx: StageContext, shards: list[ShardOut]) -> ScoreOut:
    frames = [io.read_parquet(s.scores.uri) for s in sorted(shards, key=lambda s: s.scores.uri)]
    scores = finalize_scores(frames, ctx.config.scoring.tif_band)
    uri = io.write_parquet(ctx.path("scores", "scores.parquet"), scores)
    summary = summarize(scores)
    ctx.artifact(uri, "scores/scores.parquet")
    ctx.metrics({**summary, "rows.pairs": len(scores), "rows.shards": len(shards)})
    if ctx.parent is not None:  # shards run on any worker, untracked: their durations go on the flow's run here
        log_metrics(ctx.parent, {f"stage_seconds.{s.meta.stage}": s.meta.seconds for s in shards
                                 if s.meta is not None and s.meta.seconds is not None})
    ctx.params({"scoring.shards": len(shards)})
    return ScoreOut(scores=FileRef.of(uri), pairs=len(scores), shards=len(shards),
                    truncated=int(scores["truncated"].sum()), summary=summary)


SCORE = StageSpec("score", ScoreOut, _merge, reads=("scoring",))


class RewardOut(StageOutput):
    """An external reward model's scores of the pool: `pair_id, reward_chosen, reward_rejected, reward_margin, truncated`."""

    rewards: FileRef
    pairs: int
    n_scored: int = Field(description="Pairs the reward model scored in this run; the rest came from the store (`store_uri`).")
    reward_model: str
    fingerprint: str
    agreement: float  # share of pairs whose chosen answer the reward model prefers
    truncated: int


def reward_store(config: Any, fingerprint: str) -> ScoreStore:
    """Reward rows kept across runs in the score store, keyed by the reward model's content (not where it
    is) and what else changes a reward."""
    reads = tuple(field for field in REWARD.reads if field != "selection.reward_model")
    identity = io.sha256_json({"reward_model": fingerprint, "config": read_config(config, reads),
                               "code": REWARD.code_version})
    return ScoreStore(config.store_uri, "r-" + identity[:16])


def _rewards(ctx: StageContext, ingest: IngestOut) -> RewardOut:
    """Every pool pair's rewards; with `store_uri` only the pairs the store lacks are scored (a nightly pool
    that grew by a few pairs costs those pairs), and they are added to it."""
    config = ctx.config
    source = config.selection.reward_model
    cache = io.join(config.cache_dir, "checkpoints")
    pairs = read_pairs(ingest.train.uri)
    ids = list(pairs["pair_id"])
    # without a store every pair is scored, and loading the model fingerprints it: no separate hash of its files
    fingerprint = source_fingerprint(source, cache) if config.store_uri else None
    known = reward_store(config, fingerprint).read() if fingerprint else pd.DataFrame(columns=["pair_id"])
    known = known[known["pair_id"].isin(set(ids))]
    seen = set(known["pair_id"])
    missing = [row for row, pair_id in enumerate(ids) if pair_id not in seen]
    if missing:
        model = RewardModel.load(source, cache_dir=cache, batch_size=config.scoring.batch_size, compute_config=config.compute)
        fingerprint = model.fingerprint
        fresh = pair_rewards(model, pairs.select(missing))
        if config.store_uri:  # under the identity of the model that scored them
            reward_store(config, fingerprint).append(io.sha256_json(sorted(fresh["pair_id"]))[:16], fresh)
        known = pd.concat([known, fresh], ignore_index=True) if len(known) else fresh
    frame = known.set_index("pair_id").loc[ids].reset_index()[REWARD_COLUMNS]
    uri = io.write_parquet(ctx.path("scores", "reward_scores.parquet"), frame)
    agreement = float((frame["reward_margin"] > 0).mean())
    out = RewardOut(rewards=FileRef.of(uri), pairs=len(frame), n_scored=len(missing), reward_model=source.uri,
                    fingerprint=fingerprint, agreement=agreement, truncated=int(frame["truncated"].sum()))
    ctx.metrics({"reward.agreement": agreement, "reward_margin.mean": float(frame["reward_margin"].mean()),
                 "rows.pairs": len(frame), "rows.reward_scored": len(missing), "rows.truncated": out.truncated})
    ctx.params({"reward_model.fingerprint": fingerprint})
    ctx.artifact(uri, "scores/reward_scores.parquet")
    return out


def _identify_reward_model(config: Any, inputs: Mapping[str, Any]) -> str:
    return source_fingerprint(config.selection.reward_model, io.join(config.cache_dir, "checkpoints"))


REWARD = StageSpec("reward-scores", RewardOut, _rewards, identify=_identify_reward_model,
                   reads=("selection.reward_model", "scoring.batch_size", *compute.READS))
