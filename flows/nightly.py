"""The `nightly` flow: scheduled curation of new data — ingest → score → select → publish.

No final models are trained. Scoring still needs θ (warm-up) and θ_val (validation model):
they are trained as part of scoring, from the SFT model given in the config, exactly as in
`curate`; their manifests make a rerun on unchanged data skip them. What a downstream
training job reads is `<publish_uri>/latest` → `<publish_uri>/<version>/`: the kept pairs as a
dataset `datasets.load_dataset` and TRL's DPOTrainer take as they are, with its dataset card.
"""

from __future__ import annotations

from prefect import flow

from prefcurate import io
from prefcurate.config import NightlyConfig
from prefcurate.flows.curate import SelectionResult, score_and_select
from prefcurate.flows.runs import lease_owner, parent_run, use_torch_threads
from prefcurate.lease import run_lease
from prefcurate.manifest import run_uri
from prefcurate.preflight import preflight
from prefcurate.tasks.common import wire_core_logging
from prefcurate.tasks.select import publish_stage


class NightlyResult(SelectionResult):
    """What a finished `nightly` run hands back: the selection and where it was published."""

    publish_uri: str
    dataset_uri: str


@flow(name="nightly-curation")
def nightly(config: NightlyConfig) -> NightlyResult:
    """Score and select a (new) preference pool for an SFT model and publish the selection."""
    run = run_uri(config.root, config.run_name)
    config = config.model_copy(update={"publish_uri": config.publish_uri or io.join(run, "published")})
    wire_core_logging()  # one-line errors in the run log, for runs a worker starts too
    preflight(config)
    use_torch_threads(config.scaleout)
    with run_lease(run, owner=lease_owner("nightly")), parent_run("nightly", config, config.tracking, run) as parent:
        done = score_and_select(config, run, parent)
        published = publish_stage(vars(done), config, run, parent)
    return NightlyResult(
        **SelectionResult.fields(run, parent, done),
        publish_uri=published.publish_uri,
        dataset_uri=published.dataset_uri,
        stages={**done.as_dict(), "publish": published},
    )
