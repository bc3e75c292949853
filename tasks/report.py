"""Report tasks: figures + report.md, and registering the selected model (`prefcurate.reporting.stage`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.data.stage import IngestOut
from prefcurate.evaluation.stage import JudgeOut, ReplicatesOut
from prefcurate.reporting.stage import REGISTER, REPORT, RegisterOut, ReportOut
from prefcurate.scoring.stage import ScoreOut
from prefcurate.selection.stage import SelectOut
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle
from prefcurate.training.stage import ModelOut


@task(name="report", cache_policy=NONE, **IO_RETRIES)
def report_stage(ingest: IngestOut, score: ScoreOut, select: SelectOut, judge: JudgeOut | None, others: dict[str, Any],
                 config: Any, run: str, tracking: RunHandle | None = None,
                 replicates: ReplicatesOut | None = None) -> ReportOut:
    """figures/*.png and report.md, logged to the parent MLflow run and shown as a Prefect markdown artifact."""
    inputs = {"ingest": ingest, "score": score, "select": select, "judge": judge, "others": others}
    if replicates is not None:
        inputs["replicates"] = replicates
    return run_spec(REPORT, run, config, inputs=inputs, tracking=tracking)


@task(name="register-model", cache_policy=NONE, **IO_RETRIES)
def register_stage(final: ModelOut, select: SelectOut, ingest: IngestOut, judged: JudgeOut, config: Any, run: str,
                   tracking: RunHandle | None = None) -> RegisterOut:
    """The selected final model as a new version of `tracking.register_model` with alias `model_alias`,
    described and tagged with its rule, kept share, win rates and digests."""
    inputs = {"final": final, "selection": select.selection, "ingest": ingest, "judged": judged}
    return run_spec(REGISTER, run, config, inputs=inputs, tracking=tracking)
