"""Incremental scoring: score only the pool's pairs the store lacks, then read the pool's table from it.

    score-new   the pairs of the current pool with no row in the store for this identity:
                π_ref's log-probs and every score at the bundle's models, appended as one part
    score       the current pool's rows from the store (pairs no longer in the pool drop out),
                in pool order, with TIF from the IF percentiles of the whole current pool

Both read the store, so the store's content for the identity is part of their cache key: a
rerun after a kill scores what is still missing and nothing twice.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import pandas as pd
from pydantic import BaseModel, Field

from prefcurate import io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.data.pairs import read_pairs
from prefcurate.data.stage import IngestOut
from prefcurate.errors import ScoringError
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.scoring.bundle import BundleOut, latest_bundle, refresh_reason
from prefcurate.scoring.influence import load_gradient
from prefcurate.scoring.logps import compute_logps, tokenize_pairs
from prefcurate.scoring.scores import finalize_scores, load_scoring_models, score_shard, shard_ranges
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


class NewScoresOut(StageOutput):
    """What one night added to the store."""

    identity: str
    n_pool: int
    n_new: int = Field(description="Pairs scored by this stage.")
    n_known: int = Field(description="Pairs of the pool the store already held.")
    part: FileRef | None = Field(default=None, description="The store part written (None: nothing was new).")


def new_pair_count(config: Any, bundle: BundleOut, ingest: IngestOut) -> int:
    """How many pool pairs the store has no score for at this bundle (the refresh policy's input)."""
    known = store_for(config, bundle).pair_ids()
    return sum(pid not in known for pid in read_pairs(ingest.train.uri)["pair_id"])


def _score_new(ctx: StageContext, ingest: IngestOut, bundle: BundleOut) -> NewScoresOut:
    config, training, scoring = ctx.config, ctx.config.training, ctx.config.scoring
    store = store_for(config, bundle)
    pool = read_pairs(ingest.train.uri)
    known = store.pair_ids()
    new = pool.select([i for i, pid in enumerate(pool["pair_id"]) if pid not in known])
    out = NewScoresOut(identity=store.identity, n_pool=len(pool), n_new=len(new), n_known=len(pool) - len(new))
    ctx.metrics({"rows.pool": out.n_pool, "rows.new": out.n_new, "rows.known": out.n_known})
    if not len(new):
        log.info("every pair of the pool is in the score store for bundle %s; nothing to score", bundle.id)
        return out
    log.info("scoring %d new pairs of %d at bundle %s (%d already in the store)", out.n_new, out.n_pool, bundle.id, out.n_known)
    sft = load_checkpoint(ingest.sft)
    new = tokenize_pairs(new, sft.tokenizer)  # once, for π_ref and for the bundle's models (one tokenizer)
    shape = dict(batch_size=scoring.batch_size, max_length=training.max_length, truncation_mode=training.truncation_mode)
    ref_logps = compute_logps(sft.model, sft.tokenizer, new, desc="π_ref log-probs (new pairs)", **shape)
    del sft
    models = load_scoring_models(bundle.warmup.model.uri, bundle.val.model.uri, training)
    gradient = None
    if scoring.compute_if:
        if bundle.gradient is None:
            raise ScoringError(f"bundle {bundle.id} has no validation gradient but scoring.compute_if is on; "
                               "refresh the bundle or set scoring.compute_if=false")
        gradient = load_gradient(bundle.gradient.gradient.uri, models.policy_fingerprint)
    progress = ctx.hooks.progress("score-new", f"scoring {out.n_new} new pairs")
    ranges = shard_ranges(len(new), scoring.shard_size)
    frames = []
    for i, rows in enumerate(ranges):
        frames.append(score_shard(new.select(range(*rows)), models=models, ref_logps=ref_logps, gradient=gradient,
                                  training=training, scoring=scoring))
        progress(i + 1, len(ranges))
    name = f"{ctx.run.rstrip('/').rsplit('/', 1)[-1]}-{io.sha256_json(sorted(new['pair_id']))[:12]}"
    part = store.append(name, pd.concat(frames, ignore_index=True))
    return out.model_copy(update={"part": FileRef.of(part.uri)})


SCORE_NEW = StageSpec("score-new", NewScoresOut, _score_new, reads=("store_uri", *SHARD.reads, "scoring.shard_size"),
                      identify=_store_state)


def _pool_scores(ctx: StageContext, ingest: IngestOut, bundle: BundleOut, new: NewScoresOut) -> ScoreOut:
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
    return ScoreOut(scores=FileRef.of(uri), pairs=len(scores), shards=math.ceil(new.n_new / config.scoring.shard_size),
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
