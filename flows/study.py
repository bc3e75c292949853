"""The `study` flow: one `curate` run per seed, then what holds across them.

Each replicate is a full `curate` run in its own run directory with every seed of the run set
to the replicate's (training, selection, data carve, sampling, judge order; for the toy world
the world itself), so a rerun resumes each replicate like any curate run. The study writes
`<root>/study-<name>/{study.md,study.csv,per_seed.csv,study.png}` (`prefcurate.evaluation.replicates`):
per model the mean win rate with a 95 % interval across seeds, and for the selection against
every baseline the paired per-seed difference, its interval and a paired t-test. Then, so that one
command gives the whole evidence, the IF-group study on the first replicate (`flows.ifgroups`, its θ
and scores reused) and `prefcurate verify` on every replicate, both in study.md.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from prefect import flow
from pydantic import BaseModel

from prefcurate import io
from prefcurate.config import IFGroupsConfig, RunConfig
from prefcurate.errors import ConfigError
from prefcurate.evaluation import replicates
from prefcurate.evaluation.metrics import read_leaderboard
from prefcurate.flows.curate import curate
from prefcurate.flows.ifgroups import IFGroupsResult, if_groups_flow
from prefcurate.flows.runs import parent_run, resolve_run
from prefcurate.reporting import plots
from prefcurate.reporting.report import markdown_table
from prefcurate.tasks.artifacts import publish_markdown
from prefcurate.tracking import log_artifact, log_metrics, run_url
from prefcurate.verify import VerifyReport, verify_run


class StudyResult(BaseModel):
    study_uri: str
    runs: dict[int, str]
    table: list[dict[str, Any]]
    markdown: str
    figure_uri: str | None = None
    if_groups: IFGroupsResult | None = None
    verify: dict[int, VerifyReport] = {}
    mlflow_url: str | None = None

    def verify_failures(self) -> dict[int, list[str]]:
        """Replicate seed → the checks beyond tolerance (empty when every replicate verified)."""
        return {seed: report.failed() for seed, report in self.verify.items() if not report.passed}


def seeded(config: RunConfig, seed: int, name: str) -> RunConfig:
    """Replicate `seed` of a run: every seed it has set to `seed`, in a run directory of its own."""
    evaluation = config.evaluation
    return config.model_copy(update={
        "run_name": f"{name}-seed{seed}",
        "training": config.training.model_copy(update={"seed": seed}),
        "selection": config.selection.model_copy(update={"seed": seed}),
        "data": config.data.model_copy(update={"seed": seed}),
        "evaluation": evaluation.model_copy(update={
            "generation": evaluation.generation.model_copy(update={"seed": seed}),
            "judge": evaluation.judge.model_copy(update={"seed": seed})}),
    })  # fmt: skip


def _figure(out: str, table: pd.DataFrame, by_seed: pd.DataFrame, reference: str) -> str | None:
    """study.png (`plots.replicate_intervals`); None with one seed, which has no interval to draw."""
    if len(by_seed) < 2:
        return None
    return io.write_bytes(io.join(out, "study.png"), plots.replicate_intervals(table, by_seed, reference))


def _if_groups(config: RunConfig) -> tuple[IFGroupsResult | None, str]:
    """The IF-group study on one replicate's run, and its section of study.md."""
    if not config.scoring.compute_if:
        return None, "## IF groups\n\nSkipped: scoring.compute_if is false, and the groups are cut by exact IF.\n"
    result = if_groups_flow(IFGroupsConfig.model_validate(config.model_dump()))
    table = pd.DataFrame(result.table).set_index("group")
    return result, (f"## IF groups (replicate seed {config.training.seed})\n\nDPO from θ for {result.steps} steps on each "
                    f"IF group (low / medium / high by percentile); validation loss and margin before and after.\n\n"
                    f"{markdown_table(table, digits=4)}\n\n![IF-group curves](../{config.run_name}/figures/if_groups.png)\n")


def _verify(runs: dict[int, str]) -> tuple[dict[int, VerifyReport], str]:
    """`prefcurate verify` on every replicate, and its section of study.md: each check's max relative error."""
    reports = {seed: verify_run(uri) for seed, uri in runs.items()}
    names = list(dict.fromkeys(c.name for r in reports.values() for c in r.checks))
    rows = {seed: {**{c.name: f"{c.max_rel_error:.2g}" for c in r.checks},
                   "result": "ok" if r.passed else "FAILED: " + ", ".join(r.failed())} for seed, r in reports.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")[[*names, "result"]].rename_axis("seed")
    limits = ", ".join(dict.fromkeys(f"{c.name} {c.tolerance:g}" for r in reports.values() for c in r.checks))
    skipped = "".join(dict.fromkeys(f"\n- {name}: skipped, {why}" for r in reports.values() for name, why in r.skipped.items()))
    return reports, ("## Verify\n\nEach replicate recomputed independently (`prefcurate verify`): max relative error "
                     f"per check (tolerances: {limits}).\n\n{markdown_table(frame)}\n" + (f"{skipped}\n" if skipped else ""))


@flow(name="study")
def study(configs: list[RunConfig], name: str = "study", if_groups: bool = True, verify: bool = True) -> StudyResult:
    """Run `curate` for every replicate config (see `seeded`; the seed is `training.seed`), aggregate
    their leaderboards, then run the IF-group study on the first replicate and verify every one."""
    first = resolve_run(configs[0], "default")
    if len(first.evaluation.seeds or []) > 1:
        raise ConfigError("a study runs one curate per seed already; leave evaluation.seeds empty (or one seed)")
    out = io.join(first.root, f"study-{name}")
    boards, runs = {}, {}
    for config in configs:
        seed = config.training.seed
        result = curate(config)
        runs[seed] = result.run_uri
        boards[seed] = read_leaderboard(io.join(result.run_uri, "eval", "leaderboard.csv"))
    by_seed = replicates.win_rates_by_seed(boards)
    table = replicates.summarize(by_seed)
    text = replicates.markdown(table, by_seed, first.evaluation.reference)
    groups, groups_text = _if_groups(configs[0]) if if_groups else (None, "")
    reports, verify_text = _verify(runs) if verify else ({}, "")
    text = "\n".join(part for part in (text, groups_text, verify_text) if part)
    io.write_text(io.join(out, "study.md"), text)
    io.write_bytes(io.join(out, "study.csv"), table.to_csv().encode())
    io.write_bytes(io.join(out, "per_seed.csv"), by_seed.to_csv().encode())
    figure = _figure(out, table, by_seed, first.evaluation.reference)
    publish_markdown("study", text, description=f"{len(runs)} replicates of {name}")
    with parent_run("study", first.model_copy(update={"run_name": f"study-{name}"}), first.tracking, out) as parent:
        for model, row in table.iterrows():
            values = {"mean_win_rate": row["mean"], "diff_vs_selected": row.get("diff_vs_selected"),
                      "paired_p": row.get("paired_p")}
            log_metrics(parent, {f"{k}.{model}": v for k, v in values.items() if v is not None and math.isfinite(v)})
        log_metrics(parent, {f"verify_passed.seed{seed}": float(r.passed) for seed, r in reports.items()})
        log_artifact(parent, io.join(out, "study.md"), "study.md")
        if figure is not None:
            log_artifact(parent, figure, "study.png")
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in table.reset_index().to_dict(orient="records")]
    return StudyResult(study_uri=out, runs=runs, table=records, markdown=text, figure_uri=figure, if_groups=groups,
                       verify=reports, mlflow_url=run_url(parent))
