"""The `compare-models` flow: one pool scored for two SFT models, and how far they agree on it.

Each model gets the scoring pipeline of `curate` up to the selection in its own run directory
(a finished run of the same config is reused stage by stage), under its own MLflow run nested
in the comparison's. The comparison (`prefcurate.selection.crossmodel`) is written to
`<root>/compare-<first>-vs-<second>/{compare.json,compare.md}` and logged as metrics.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from prefcurate import io
from prefcurate.config import CompareModelsConfig, RunConfig
from prefcurate.errors import ConfigError
from prefcurate.flows.curate import score_and_select
from prefcurate.flows.runs import lease_owner, parent_run, resolve_run, use_torch_threads
from prefcurate.lease import run_lease
from prefcurate.manifest import run_uri
from prefcurate.preflight import preflight
from prefcurate.scoring.stage import ScoreOut
from prefcurate.selection.crossmodel import ModelComparison, compare_scores
from prefcurate.selection.selection import read_selection
from prefcurate.selection.stage import SelectOut
from prefcurate.tasks.artifacts import publish_markdown
from prefcurate.tasks.common import wire_core_logging
from prefcurate.tracking import log_artifact, log_metrics, run_url, set_tags

PARENT_TAG = "mlflow.parentRunId"


class CompareResult(BaseModel):
    comparison: ModelComparison
    runs: tuple[str, str]
    report_uri: str
    mlflow_url: str | None = None


class Scored(BaseModel):
    """One model's pool scores and selection."""

    score: ScoreOut
    select: SelectOut


def kept(select: SelectOut) -> list[str]:
    return read_selection(select.selection.uri).kept_ids


@flow(name="compare-models-scoring")
def score_model(config: RunConfig, parent_run_id: str) -> Scored:
    """`curate`'s stages up to the selection for one model, in its run directory; its MLflow run (a
    subflow has a flow-run id of its own, so a run of its own) is nested under the comparison's."""
    run = run_uri(config.root, config.run_name)
    with run_lease(run, owner=lease_owner("compare-models")), \
            parent_run("compare-models-scoring", config, config.tracking, run) as parent:
        set_tags(parent, {PARENT_TAG: parent_run_id})
        done = score_and_select(config, run, parent)
    return Scored(score=done.score, select=done.select)


@flow(name="compare-models")
def compare_models(config: CompareModelsConfig) -> CompareResult:
    """Score the pool for `model` and for `compare.model` (each in its run directory) and compare the scores."""
    wire_core_logging()
    config = resolve_run(config, "default")
    if not config.scoring.compute_if:
        raise ConfigError("comparing models needs exact IF: set scoring.compute_if=true")
    pipelines = config.pipelines()
    for pipeline in pipelines:
        preflight(pipeline)
    use_torch_threads(config.scaleout)
    names = (pipelines[0].run_name, pipelines[1].run_name)
    out = io.join(config.root, f"compare-{names[0]}-vs-{names[1]}")
    with parent_run("compare-models", config, config.tracking, out) as parent:
        first, second = (score_model(pipeline, parent.run_id) for pipeline in pipelines)
        comparison = compare_scores(io.read_parquet(first.score.scores.uri), io.read_parquet(second.score.scores.uri),
                                    kept(first.select), kept(second.select), names=names,
                                    rules=(first.select.rule, second.select.rule))
        io.write_text(io.join(out, "compare.json"), comparison.model_dump_json(indent=2))
        report_uri = io.write_text(io.join(out, "compare.md"), comparison.markdown())
        log_metrics(parent, comparison.metrics())
        log_artifact(parent, report_uri, "compare.md")
        publish_markdown("compare-models", comparison.markdown())
    runs = (run_uri(pipelines[0].root, names[0]), run_uri(pipelines[1].root, names[1]))
    return CompareResult(comparison=comparison, runs=runs, report_uri=report_uri, mlflow_url=run_url(parent))
