"""The `nightly` flow: scheduled curation of a growing pool — ingest → bundle → score the new pairs →
select over the whole pool → publish.

Scores live in the score store (`store_uri`, default `<root>/store`), keyed by the scoring
bundle (θ, θ_val, ∇L_val) that produced them. A night reuses the latest bundle of its SFT
model and scores only the pairs the store has not seen for it; the refresh policy
(`refresh.policy`) decides when the bundle is trained again, and the run records which
bundle it used and why. No final models are trained. What a downstream training job reads
is `<publish_uri>/latest` → `<publish_uri>/<version>/`: the kept pairs as a dataset
`datasets.load_dataset` and TRL's DPOTrainer take as they are, with its dataset card.
"""

from __future__ import annotations

from prefect import flow

from prefcurate import io
from prefcurate.config import NightlyConfig
from prefcurate.data.stage import IngestOut
from prefcurate.flows.curate import SelectionResult
from prefcurate.flows.runs import (
    announce_estimate,
    lease_owner,
    parent_run,
    resolve_run,
    results_in_order,
    task_runner,
    use_torch_threads,
)
from prefcurate.lease import run_lease
from prefcurate.manifest import run_uri
from prefcurate.preflight import preflight
from prefcurate.scoring.bundle import BundleOut
from prefcurate.scoring.incremental import NewPairsOut, NewShardOut
from prefcurate.scoring.scores import shard_ranges
from prefcurate.tasks.artifacts import PrefectProgress
from prefcurate.tasks.common import wire_core_logging
from prefcurate.tasks.gradient import gradient_stage
from prefcurate.tasks.incremental import (
    choose_bundle_task,
    new_pairs_stage,
    pool_scores_stage,
    save_bundle_stage,
    score_new_shard_stage,
)
from prefcurate.tasks.ingest import ingest_stage
from prefcurate.tasks.score import reference_stage, reward_stage
from prefcurate.tasks.select import publish_stage, select_stage
from prefcurate.tasks.train import validation_model_stage, warmup_stage
from prefcurate.tracking import run_url, set_tags


class NightlyResult(SelectionResult):
    """What a finished `nightly` run hands back: the selection, the bundle it was scored at, where it was published."""

    publish_uri: str
    dataset_uri: str
    bundle_id: str
    bundle_refreshed: bool
    refresh_reason: str | None = None
    n_new: int


@flow(name="score-new-shards")
def score_new_shards(new: NewPairsOut, ingest: IngestOut, bundle: BundleOut, config: NightlyConfig, run: str) -> list[NewShardOut]:
    """Score the new pairs shard by shard on this flow's task runner (each shard one store part)."""
    ranges = shard_ranges(new.n_new, config.scoring.shard_size)
    futures = [score_new_shard_stage.submit(i, rows, ingest, new, bundle, config, run) for i, rows in enumerate(ranges)]
    return results_in_order(futures, PrefectProgress("scoring-new", description=f"{len(ranges)} shards of new pairs"))


@flow(name="nightly-curation")
def nightly(config: NightlyConfig) -> NightlyResult:
    """Score the pairs new to the store, select over the whole pool for an SFT model, publish the selection."""
    config = resolve_run(config, "nightly")
    run = run_uri(config.root, config.run_name)
    config = config.model_copy(update={"publish_uri": config.publish_uri or io.join(run, "published"),
                                       "store_uri": config.store_uri or io.join(config.root, "store")})
    wire_core_logging()  # one-line errors in the run log, for runs a worker starts too
    preflight(config)
    use_torch_threads(config.scaleout)
    with run_lease(run, owner=lease_owner("nightly")), parent_run("nightly", config, config.tracking, run) as parent:
        ingest = ingest_stage(config, run, parent)
        choice = choose_bundle_task(ingest, config)
        stages = {"ingest": ingest}
        bundle: BundleOut
        if choice.reason is not None:  # the bundle is (re)trained from this run's stages
            ref = reference_stage(ingest, config, run, parent)
            announce_estimate(ref, ingest, config, parent, n_final_models=0)
            warmup = warmup_stage(ingest, ref, config, run, parent)
            val = validation_model_stage(ingest, ref, warmup, config, run, parent)
            gradient = gradient_stage(ingest, ref, warmup, config, run, parent) if config.scoring.compute_if else None
            bundle = save_bundle_stage(ingest, warmup, val, gradient, choice.reason, config, run, parent)
            stages.update({"reference": ref, "warmup": warmup, "val": val, **({"val-gradient": gradient} if gradient else {})})
        else:
            bundle = choice.bundle
        set_tags(parent, {"bundle.id": bundle.id, "bundle.refreshed": choice.reason is not None,
                            "bundle.reason": choice.reason or "reused", "bundle.source_run": bundle.source_run})
        new = new_pairs_stage(ingest, bundle, config, run, parent)
        scorer = score_new_shards.with_options(task_runner=task_runner(config.scaleout))
        shards = scorer(new, ingest, bundle, config, run) if new.n_new else []
        score = pool_scores_stage(ingest, bundle, new, shards, config, run, parent)
        rewards = reward_stage(ingest, config, run, parent)
        select = select_stage(score, config, run, parent, rewards)
        if rewards is not None:
            stages["reward-scores"] = rewards
        done = {"select": select, "score": score, "ingest": ingest, "warmup": bundle.warmup, "val": bundle.val,
                "gradient": bundle.gradient}
        published = publish_stage(done, config, run, parent)
        stages.update({"bundle": bundle, "new-pairs": new, "score": score, "select": select, "publish": published})
    return NightlyResult(
        run_uri=run, mlflow_run_id=parent.run_id, mlflow_url=run_url(parent), tracking_uri=parent.tracking_uri,
        rule=select.rule, n_pool=select.n_pool,
        n_kept=select.n_kept, kept_fraction=select.kept_fraction, agreement_text=select.agreement_report().render(),
        ingest=ingest, publish_uri=published.publish_uri, dataset_uri=published.dataset_uri, bundle_id=bundle.id,
        bundle_refreshed=choice.reason is not None, refresh_reason=choice.reason, n_new=new.n_new, stages=stages,
    )  # fmt: skip
