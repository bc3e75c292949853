"""The `nightly` flow: scheduled curation of new data — ingest → score → select → publish.

No final models are trained. Scoring still needs θ (warm-up) and θ_val (validation model):
they are trained as part of scoring, from the SFT model given in the config, exactly as in
`curate`; their manifests make a rerun on unchanged data skip them. The published
selection (selection.parquet/json, agreement.json, scores.parquet) is what a downstream
training job reads.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from flows.curate import score_and_select
from flows.runs import parent_run, use_torch_threads
from prefcurate import io
from prefcurate.config import NightlyConfig
from prefcurate.manifest import StageManifest, run_uri
from prefcurate.tracking import run_url
from tasks.select import publish_stage


class NightlyResult(BaseModel):
    run_uri: str
    publish_uri: str
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    rule: str
    n_pool: int
    n_kept: int
    kept_fraction: float
    agreement_text: str = ""
    manifests: dict[str, StageManifest]


@flow(name="nightly-curation")
def nightly(config: NightlyConfig) -> NightlyResult:
    """Score and select a (new) preference pool for an SFT model and publish the selection."""
    run = run_uri(config.root, config.run_name)
    target = config.publish_uri or io.join(run, "published")
    use_torch_threads(config.scaleout)
    with parent_run("nightly", config, config.tracking, run) as parent:
        done = score_and_select(config, run, parent)
        published = publish_stage(done.select, done.score, target, parent)
    sel = done.select
    return NightlyResult(
        run_uri=run,
        publish_uri=target,
        mlflow_run_id=parent.run_id,
        mlflow_url=run_url(parent),
        rule=sel.extra["rule"],
        n_pool=sel.rows["pool"],
        n_kept=sel.rows["kept"],
        kept_fraction=sel.extra["kept_fraction"],
        agreement_text=sel.extra["agreement_text"],
        manifests={**done.as_dict(), "publish": published},
    )
