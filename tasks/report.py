"""Report stages: figures + report.md (also a Prefect markdown artifact and MLflow artifacts),
and registering the selected final model in the MLflow model registry.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from prefcurate import io, plots
from prefcurate.agreement import AgreementReport
from prefcurate.config import TrackingConfig
from prefcurate.manifest import StageManifest
from prefcurate.report import render_report, write_report
from prefcurate.selection import read_selection
from prefcurate.tracking import RunHandle, TrackingError, log_artifact, register_model
from tasks.artifacts import publish_markdown
from tasks.common import IO_RETRIES, StageOutput, run_stage

MODULES = ("prefcurate.report", "prefcurate.plots")


@task(name="report", cache_policy=NONE, **IO_RETRIES)
def report_stage(
    manifests: Mapping[str, StageManifest], config: Any, run: str, tracking: RunHandle | None = None
) -> StageManifest:
    """figures/*.png and report.md from the finished stages' outputs; logged to the parent MLflow run."""
    ingest, select, score = manifests["ingest"], manifests["select"], manifests["score"]
    judge = manifests.get("judge")

    def compute(_: RunHandle | None) -> StageOutput:
        scores = io.read_parquet(score.outputs["scores"])
        selection = read_selection(select.extra["selection_dir"])
        board = pd.DataFrame(judge.extra["leaderboard"]).set_index("model") if judge is not None else None
        reference = judge.extra["reference"] if judge is not None else None
        figures = plots.write_figures(io.join(run, "figures"), scores, selection, board, reference)
        markdown = render_report(
            run_name=config.run_name, run_root=run, model_uri=ingest.extra["sft_uri"],
            model_fingerprint=ingest.extra["sft_fingerprint"],
            counts={k: v for k, v in ingest.rows.items()}, rejects_by_reason=ingest.extra.get("rejects_by_reason"),
            selection=selection, agreement=AgreementReport.from_json(select.extra["agreement"]),
            leaderboard=board, reference=reference, figures=figures, tracking=tracking,
        )  # fmt: skip
        uri = write_report(markdown, run)
        publish_markdown("run-report", markdown, description=f"Report of {run}")
        if tracking is not None:
            log_artifact(tracking, uri, "report.md")
            for name, fig in figures.items():
                log_artifact(tracking, fig, f"figures/{fig.rsplit('/', 1)[-1]}")
        return StageOutput(outputs={"report": uri, **{f"figure.{k}": v for k, v in figures.items()}},
                           rows={"figures": len(figures)})

    return run_stage("report", run, inputs=tuple(manifests.values()), config={"run_name": config.run_name},
                     modules=MODULES, tracking=None, compute=compute)


@task(name="register-model", cache_policy=NONE, **IO_RETRIES)
def register_stage(final: StageManifest, tracking_config: TrackingConfig, run: str, cache_dir: str,
                   tracking: RunHandle | None = None) -> StageManifest:
    """Register the selected final model as a new version of `tracking.register_model`, alias `model_alias`.

    A manifest like every stage: a resumed run does not register the same model twice.
    """

    def compute(child: RunHandle | None) -> StageOutput:
        if child is None:
            raise TrackingError("registering a model needs an MLflow run; set tracking.tracking_uri")
        with io.local_copy_dir(final.outputs["model"], io.join(cache_dir, "checkpoints")) as local:
            version = register_model(child, local, tracking_config.register_model, tracking_config.model_alias)
        return StageOutput(outputs={}, extra={"name": tracking_config.register_model, "version": version,
                                              "alias": tracking_config.model_alias})

    key = {"name": tracking_config.register_model, "alias": tracking_config.model_alias,
           "tracking_uri": tracking_config.tracking_uri}
    return run_stage("register", run, inputs=(final,), config=key, modules=("prefcurate.tracking",),
                     tracking=tracking, compute=compute)
