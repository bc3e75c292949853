"""Incremental scoring: score only the pool's pairs the store lacks, then read the pool's table from it.

    new-pairs         the pairs of the current pool with no row in the store for this identity
    score-new-00000…  π_ref's log-probs and every score of a shard of them at the bundle's
                      models, each shard one store part (mappable over any task runner, as
                      curate's scoring shards are)
    score             the current pool's rows from the store (pairs no longer in the pool drop
                      out), in pool order, with TIF from the IF percentiles of the whole pool

`new-pairs` and `score` read the store, so its content for the identity is part of their
cache keys: a rerun after a kill scores what is still missing, and nothing twice.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from pydantic import BaseModel, Field

from prefcurate import compute, io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.data.pairs import read_pairs, write_pairs
from prefcurate.data.stage import IngestOut
from prefcurate.errors import ScoringError
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.scoring.bundle import BundleOut, latest_bundle, refresh_reason
from prefcurate.scoring.influence import load_gradient
from prefcurate.scoring.logps import compute_logps, tokenize_pairs
from prefcurate.scoring.scores import finalize_scores, load_scoring_models, score_shard
from prefcurate.scoring.stage import SHARD, ScoreOut, summarize
from prefcurate.scoring.store import ScoreStore
from prefcurate.stage import StageContext, StageSpec, read_config

log = logging.getLogger("prefcurate.scoring.incremental")


def score_identity(config: Any, bundle: BundleOut) -> str:
    """What a stored score depends on: the bundle, the config fields a shard reads and the shard's code."""
    return "s-" + io.sha256_json({"bundle": bundle.id, "config": read_config(config, SHARD.reads),
                                  "code": SHARD.code_version})[:16]


def store_for(config: Any, bundle: BundleOut) -> ScoreStore:
    return ScoreStore(config.store_uri, score_identity(config, bundle))


def _store_state(config: Any, inputs: Mapping[str, Any]) -> str:
    return store_for(config, inputs["bundle"]).state()


class NewPairsOut(StageOutput):
    """The pool's pairs the store has no score for at this bundle, to be scored tonight."""

    identity: str
    pairs: FileRef | None = Field(default=None, description="scores/new_pairs.parquet (None: nothing is new).")
    n_pool: int
    n_new: int
    n_known: int = Field(description="Pairs of the pool the store already held.")


def new_pair_count(config: Any, bundle: BundleOut, ingest: IngestOut) -> int:
    """How many pool pairs the store has no score for at this bundle (the refresh policy's input)."""
    known = store_for(config, bundle).pair_ids()
    return sum(pid not in known for pid in read_pairs(ingest.train.uri)["pair_id"])


def _new_pairs(ctx: StageContext, ingest: IngestOut, bundle: BundleOut) -> NewPairsOut:
    store = store_for(ctx.config, bundle)
    pool = read_pairs(ingest.train.uri)
    known = store.pair_ids()
    new = pool.select([i for i, pid in enumerate(pool["pair_id"]) if pid not in known])
    out = NewPairsOut(identity=store.identity, n_pool=len(pool), n_new=len(new), n_known=len(pool) - len(new))
    ctx.metrics({"rows.pool": out.n_pool, "rows.new": out.n_new, "rows.known": out.n_known})
    if not len(new):
        log.info("every pair of the pool is in the score store for bundle %s; nothing to score", bundle.id)
        return out
    log.info("%d of %d pairs are new to bundle %s (%d already in the store)", out.n_new, out.n_pool, bundle.id, out.n_known)
    return out.model_copy(update={"pairs": FileRef.of(write_pairs(new, ctx.path("scores", "new_pairs.parquet")))})


NEW_PAIRS = StageSpec("new-pairs", NewPairsOut, _new_pairs, reads=("store_uri", *SHARD.reads), identify=_store_state)


class NewShardOut(StageOutput):
    """One shard of the new pairs, scored and appended to the store."""

    part: FileRef
    pairs: int


def new_shard_stage_name(index: int) -> str:
    return f"score-new-{index:05d}"


def _score_new_shard(ctx: StageContext, rows: tuple[int, int], ingest: IngestOut, new: NewPairsOut,
                     bundle: BundleOut) -> NewShardOut:
    """π_ref's log-probs and every score of new pairs `rows` at the bundle's models, as one store part."""
    config, training, scoring = ctx.config, ctx.config.training, ctx.config.scoring
    sft = load_checkpoint(ingest.sft)
    pairs = tokenize_pairs(read_pairs(new.pairs.uri).select(range(*rows)), sft.tokenizer)  # once: one tokenizer
    shape = dict(batch_size=scoring.batch_size, max_length=training.max_length, truncation_mode=training.truncation_mode)
    with compute.autocast(config.compute):
        ref_logps = compute_logps(compute.place(sft.model, config.compute), sft.tokenizer, pairs,
                                  desc="π_ref log-probs (new pairs)", **shape)
    del sft
    models = load_scoring_models(bundle.warmup.model.uri, bundle.val.model.uri, config.compute)
    gradient = None
    if scoring.compute_if:
        if bundle.gradient is None:
            raise ScoringError(f"bundle {bundle.id} has no validation gradient but scoring.compute_if is on; "
                               "refresh the bundle or set scoring.compute_if=false")
        gradient = load_gradient(bundle.gradient.gradient.uri, models.policy_fingerprint)
    with compute.autocast(config.compute):
        frame = score_shard(pairs, models=models, ref_logps=ref_logps, gradient=gradient, training=training,
                            scoring=scoring)
    name = f"{ctx.run.rstrip('/').rsplit('/', 1)[-1]}-{new.pairs.sha256[:12]}-{ctx.stage.rsplit('-', 1)[-1]}"
    part = store_for(config, bundle).append(name, frame)
    return NewShardOut(part=FileRef.of(part.uri), pairs=len(frame))


SCORE_NEW_SHARD = StageSpec("score-new-shard", NewShardOut, _score_new_shard, tracked=False,
                            reads=("store_uri", *SHARD.reads))


def _pool_scores(ctx: StageContext, ingest: IngestOut, bundle: BundleOut, new: NewPairsOut,
                 shards: list[NewShardOut]) -> ScoreOut:
    config = ctx.config
    stored = store_for(config, bundle).read()
    pool_ids = list(read_pairs(ingest.train.uri)["pair_id"])
    rows = stored.set_index("pair_id")
    missing = [pid for pid in pool_ids if pid not in rows.index]
    if missing:
        raise ScoringError(f"{len(missing)} pairs of the pool have no score in the store for bundle {bundle.id} "
                           f"(e.g. {missing[:3]}); a store part failed its check — run again to score them")
    dropped = len(rows) - len(pool_ids)
    frame = rows.loc[pool_ids].reset_index().drop(columns=["tif"], errors="ignore")
    scores = finalize_scores([frame], config.scoring.tif_band)
    uri = io.write_parquet(ctx.path("scores", "scores.parquet"), scores)
    summary = summarize(scores)
    ctx.artifact(uri, "scores/scores.parquet")
    ctx.metrics({**summary, "rows.pairs": len(scores), "rows.new": new.n_new, "rows.dropped_from_store": dropped})
    ctx.params({"scoring.identity": new.identity, "bundle.id": bundle.id})
    if dropped:
        log.info("%d stored pairs are no longer in the pool and are left out of the selection", dropped)
    return ScoreOut(scores=FileRef.of(uri), pairs=len(scores), shards=len(shards),
                    truncated=int(scores["truncated"].sum()), summary=summary)


POOL_SCORES = StageSpec("score", ScoreOut, _pool_scores, reads=("store_uri", "scoring.tif_band"), identify=_store_state)


class BundleChoice(BaseModel):
    """Tonight's scoring bundle: the latest one to reuse, or why it must be trained again."""

    bundle: BundleOut | None = Field(default=None, description="The bundle to reuse; None when it is refreshed.")
    reason: str | None = Field(default=None, description="Why the bundle is refreshed; None when it is reused.")
    n_new: int = Field(description="Pool pairs the store has no score for at the latest bundle.")


def choose_bundle(config: Any, ingest: IngestOut) -> BundleChoice:
    """Reuse the latest bundle of the SFT model unless the refresh policy (or its state) says otherwise."""
    bundle, problem = latest_bundle(config.store_uri, ingest.sft_fingerprint)
    usable = bundle is not None and problem is None
    n_new = new_pair_count(config, bundle, ingest) if usable else ingest.n_train
    reason = refresh_reason(bundle, problem, ingest, config, n_new)
    if reason is not None:
        log.info("refreshing the scoring bundle: %s", reason)
        return BundleChoice(reason=reason, n_new=n_new)
    log.info("reusing scoring bundle %s (from %s); %d of %d pairs are new to it", bundle.id, bundle.source_run, n_new,
             ingest.n_train)
    return BundleChoice(bundle=bundle, n_new=n_new)
