"""The `study` flow: one `curate` run per seed, then what holds across them.

Each replicate is a full `curate` run in its own run directory with every seed of the run set
to the replicate's (training, selection, data carve, sampling, judge order; for the toy world
the world itself), so a rerun resumes each replicate like any curate run. The study writes
`<root>/study-<name>/{study.md,study.csv,per_seed.csv}` (`prefcurate.evaluation.replicates`):
per model the mean win rate with a 95 % interval across seeds, and for the selection against
every baseline the paired per-seed difference, its interval and a paired t-test.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow
from pydantic import BaseModel

from prefcurate import io
from prefcurate.config import RunConfig
from prefcurate.errors import ConfigError
from prefcurate.evaluation import replicates
from prefcurate.evaluation.metrics import read_leaderboard
from prefcurate.flows.curate import curate
from prefcurate.flows.runs import parent_run, resolve_run
from prefcurate.tasks.artifacts import publish_markdown
from prefcurate.tracking import log_artifact, log_metrics, run_url


class StudyResult(BaseModel):
    study_uri: str
    runs: dict[int, str]
    table: list[dict[str, Any]]
    markdown: str
    mlflow_url: str | None = None


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


@flow(name="study")
def study(configs: list[RunConfig], name: str = "study") -> StudyResult:
    """Run `curate` for every replicate config (see `seeded`; the seed is `training.seed`) and aggregate
    their leaderboards."""
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
    io.write_text(io.join(out, "study.md"), text)
    io.write_bytes(io.join(out, "study.csv"), table.to_csv().encode())
    io.write_bytes(io.join(out, "per_seed.csv"), by_seed.to_csv().encode())
    publish_markdown("study", text, description=f"{len(runs)} replicates of {name}")
    with parent_run("study", first.model_copy(update={"run_name": f"study-{name}"}), first.tracking, out) as parent:
        for model, row in table.iterrows():
            values = {"mean_win_rate": row["mean"], "diff_vs_selected": row.get("diff_vs_selected"),
                      "paired_p": row.get("paired_p")}
            log_metrics(parent, {f"{k}.{model}": v for k, v in values.items() if v is not None and math.isfinite(v)})
        log_artifact(parent, io.join(out, "study.md"), "study.md")
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in table.reset_index().to_dict(orient="records")]
    return StudyResult(study_uri=out, runs=runs, table=records, markdown=text, mlflow_url=run_url(parent))
