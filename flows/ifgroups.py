"""The `if-groups` flow: the paper's training-dynamics evidence for TIF, on the user's model and pool.

After a curate run's scoring (its stages rerun through the stage runner, so the same root, run
name and config find θ and the scores finished), the pool is split into low / medium / high IF
groups by percentile, DPO trains from θ on each group for the same number of optimiser steps,
and the validation loss and margin are measured along the way. One nested MLflow run per group
holds its curves (`val/loss`, `val/margin` per step); the flow's run holds the figure and the
final numbers. Files: `<run>/if-groups/{groups.parquet,curves.parquet,table.csv,report.md}`,
`<run>/figures/if_groups.png`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow
from pydantic import BaseModel

from prefcurate import io
from prefcurate.config import IFGroupsConfig
from prefcurate.errors import ConfigError
from prefcurate.evaluation.metrics import table_records
from prefcurate.flows.curate import score_and_select
from prefcurate.flows.runs import lease_owner, parent_run, resolve_run, use_torch_threads
from prefcurate.lease import run_lease
from prefcurate.manifest import FileRef, run_uri
from prefcurate.preflight import preflight
from prefcurate.reporting import ifgroups as report
from prefcurate.selection.groups import GROUPS, if_groups
from prefcurate.tasks.artifacts import publish_markdown, publish_table
from prefcurate.tasks.common import wire_core_logging
from prefcurate.tasks.ifgroups import if_group_stage
from prefcurate.tracking import log_artifact, log_metrics, run_url
from prefcurate.training.groups import default_steps


class IFGroupsResult(BaseModel):
    run_uri: str
    steps: int
    table: list[dict[str, Any]]
    report_uri: str
    figure_uri: str
    mlflow_url: str | None = None


@flow(name="if-groups")
def if_groups_flow(config: IFGroupsConfig) -> IFGroupsResult:
    """Score the pool as `curate` does (finished stages are reused), split it into IF groups and
    train DPO from θ on each for the same number of steps, measuring validation loss and margin."""
    wire_core_logging()
    config = resolve_run(config, "default")
    preflight(config)
    if not config.scoring.compute_if:
        raise ConfigError("the IF-group study needs exact IF: set scoring.compute_if=true")
    run = run_uri(config.root, config.run_name)
    use_torch_threads(config.scaleout)
    settings, training = config.if_groups, config.training
    with run_lease(run, owner=lease_owner("if-groups")), parent_run("if-groups", config, config.tracking, run) as parent:
        done = score_and_select(config, run, parent)
        split = if_groups(io.read_parquet(done.score.scores.uri), settings.cuts)
        groups = FileRef.of(io.write_parquet(io.join(run, "if-groups", "groups.parquet"), split))
        sizes = {g: int((split["group"] == g).sum()) for g in GROUPS}
        steps = settings.steps or default_steps(list(sizes.values()), training.final_epochs, training.batch_size,
                                                training.gradient_accumulation_steps)
        outs = {g: if_group_stage(g, groups, done.ingest, done.ref, done.warmup, steps, config, run, parent) for g in GROUPS}
        curves = pd.concat([io.read_parquet(o.curve.uri).assign(group=g) for g, o in outs.items()], ignore_index=True)
        table = report.final_table(curves, sizes)
        figure = io.write_bytes(io.join(run, "figures", "if_groups.png"), report.curves_figure(curves))
        text = report.markdown(table, settings.cuts, "../figures/if_groups.png")
        report_uri = io.write_text(io.join(run, "if-groups", "report.md"), text)
        io.write_parquet(io.join(run, "if-groups", "curves.parquet"), curves)
        io.write_text(io.join(run, "if-groups", "table.csv"), table.to_csv())
        log_metrics(parent, {f"{k}.{g}": row[k] for g, row in table.iterrows() for k in ("val_loss_final", "val_margin_final")})
        log_artifact(parent, figure, "figures/if_groups.png")
        log_artifact(parent, report_uri, "if-groups/report.md")
        publish_table("if-groups", table.reset_index(), description=f"IF groups, {steps} DPO steps from θ each")
        publish_markdown("if-groups-report", text)
    return IFGroupsResult(run_uri=run, steps=steps, table=table_records(table), report_uri=report_uri, figure_uri=figure,
                          mlflow_url=run_url(parent))
