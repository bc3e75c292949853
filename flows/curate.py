"""The `curate` flow: ingest → reference log-probs → warm-up θ → θ_val + ∇L_val → scores
(sharded) → selection → final DPO (selected + baselines) → evaluation → report.

Every stage is a task that returns its typed output and skips itself when its manifest
(same cache key, every output intact) is already under the run root, so rerunning a killed or failed run finishes it
without redoing finished work. Scoring shards map over the task runner of
`config.scaleout` (in-process, or Dask through prefect-dask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field, SerializeAsAny

from prefcurate.config import RunConfig, _Pipeline
from prefcurate.data.stage import IngestOut
from prefcurate.errors import SelectionError
from prefcurate.evaluation.stage import GenerateOut
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
from prefcurate.manifest import StageOutput, run_uri
from prefcurate.preflight import preflight
from prefcurate.reporting.stage import RegisterOut
from prefcurate.scoring.reference import ReferenceOut
from prefcurate.scoring.scores import shard_ranges
from prefcurate.scoring.stage import GradientOut, ScoreOut
from prefcurate.selection.stage import SelectOut
from prefcurate.tasks.artifacts import PrefectProgress
from prefcurate.tasks.common import wire_core_logging
from prefcurate.tasks.evaluate import generate_stage, judge_stage
from prefcurate.tasks.gradient import gradient_stage
from prefcurate.tasks.incremental import save_bundle_stage
from prefcurate.tasks.ingest import ingest_stage
from prefcurate.tasks.report import register_stage, report_stage
from prefcurate.tasks.score import merge_scores_stage, reference_stage, score_shard_stage
from prefcurate.tasks.select import select_stage
from prefcurate.tasks.train import final_stage, validation_model_stage, warmup_stage
from prefcurate.tracking import RunHandle, log_metrics, run_url, ui_command
from prefcurate.training.stage import ModelOut

FULL = ("full", "full-steps")  # baselines trained on the whole pool


class SelectionResult(BaseModel):
    """What every flow that selects hands back: where the run is, and what was kept."""

    run_uri: str
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    tracking_uri: str = Field(description="The MLflow store the run was recorded in (absolute).")
    rule: str
    n_pool: int
    n_kept: int
    kept_fraction: float
    agreement_text: str = ""
    ingest: IngestOut
    stages: dict[str, SerializeAsAny[StageOutput]] = Field(default_factory=dict, description="Every stage's typed output by stage name.")

    @staticmethod
    def fields(run: str, parent: RunHandle, done: "Curated") -> dict[str, Any]:
        """The shared fields, read from the select stage's output and the MLflow parent run."""
        sel = done.select
        return {"run_uri": run, "mlflow_run_id": parent.run_id, "mlflow_url": run_url(parent),
                "tracking_uri": parent.tracking_uri, "rule": sel.rule,
                "n_pool": sel.n_pool, "n_kept": sel.n_kept, "kept_fraction": sel.kept_fraction,
                "agreement_text": sel.agreement_report().render(), "ingest": done.ingest}


class CurateResult(SelectionResult):
    """What a finished `curate` run hands back (also what `prefcurate demo` prints)."""

    reference: str = ""
    judge: str = ""
    leaderboard: list[dict[str, Any]] = Field(default_factory=list)
    report_uri: str | None = None
    registered: RegisterOut | None = None


@dataclass
class Curated:
    """The outputs of `curate`'s stages up to and including the selection."""

    ingest: IngestOut
    ref: ReferenceOut
    warmup: ModelOut
    val: ModelOut
    gradient: GradientOut | None
    score: ScoreOut
    select: SelectOut

    def as_dict(self) -> dict[str, StageOutput]:
        return {k: v for k, v in vars(self).items() if v is not None}


@flow(name="score-shards")
def score_shards(done: dict[str, Any], config: _Pipeline, run: str, tracking: RunHandle | None = None) -> ScoreOut:
    """Score the pool shard by shard on this flow's task runner, then join the shards."""
    ingest = done["ingest"]
    ranges = shard_ranges(ingest.n_train, config.scoring.shard_size)
    futures = [
        score_shard_stage.submit(i, rows, ingest, done["ref"], done["warmup"], done["val"], done["gradient"], config, run)
        for i, rows in enumerate(ranges)
    ]
    shards = results_in_order(futures, PrefectProgress("scoring", description=f"{len(ranges)} scoring shards"))
    return merge_scores_stage(shards, config, run, tracking)


def score_and_select(config: _Pipeline, run: str, parent: RunHandle | None) -> Curated:
    """The stages of `curate` up to and including the selection."""
    ingest = ingest_stage(config, run, parent)
    ref = reference_stage(ingest, config, run, parent)
    announce_estimate(ref, ingest, config, parent, 1 + sum(b != "sft" for b in config.evaluation.baselines))
    warmup = warmup_stage(ingest, ref, config, run, parent)
    val = validation_model_stage(ingest, ref, warmup, config, run, parent)
    gradient = gradient_stage(ingest, ref, warmup, config, run, parent) if config.scoring.compute_if else None
    scorer = score_shards.with_options(task_runner=task_runner(config.scaleout))
    done = {"ingest": ingest, "ref": ref, "warmup": warmup, "val": val, "gradient": gradient}
    score = scorer(done, config, run, parent)
    select = select_stage(score, config, run, parent)
    return Curated(ingest, ref, warmup, val, gradient, score, select)


@flow(name="curate")
def curate(config: RunConfig) -> CurateResult:
    """Score a preference pool for an SFT model, keep the valuable pairs, train DPO on them and
    on the baselines, and measure every model's win rate against the reference."""
    wire_core_logging()  # one-line errors in the run log, for runs a worker starts too
    config = resolve_run(config, "default")
    preflight(config)
    run = run_uri(config.root, config.run_name)
    use_torch_threads(config.scaleout)
    with run_lease(run, owner=lease_owner("curate")), parent_run("curate", config, config.tracking, run) as parent:
        done = score_and_select(config, run, parent)
        stages: dict[str, StageOutput] = done.as_dict()
        if config.store_uri:  # later nightly runs reuse this run's models and score only new pairs
            stages["bundle"] = save_bundle_stage(done.ingest, done.warmup, done.val, done.gradient, "saved by curate",
                                                 config, run, parent)
        sel = done.select
        trained = ["selected", *[b for b in config.evaluation.baselines if b != "sft"]]
        finals: dict[str, ModelOut] = {}
        missing = [name for name in trained if name not in ("selected", "full", "full-steps", *sel.rules)]
        if missing:
            raise SelectionError(f"baselines {missing} could not be selected on these scores (see the select stage's log); "
                                 "remove them from evaluation.baselines")
        for name in trained:
            selection = sel.selection if name == "selected" else None if name in FULL else sel.rules[name]
            # full-steps: the whole pool for as many optimiser steps as the selection gets
            epochs = config.training.final_epochs * sel.kept_fraction if name == "full-steps" else None
            finals[name] = final_stage(name, selection, done.ingest, done.ref, done.warmup, config, run, parent, epochs=epochs)
            stages[f"final-{name}"] = finals[name]
        models: dict[str, Any] = dict(finals)
        if "sft" in config.evaluation.baselines:
            models["sft"] = done.ingest.sft
        generated: dict[str, GenerateOut] = {
            name: generate_stage(name, model, done.ingest.eval_prompts, config, run, parent) for name, model in models.items()
        }
        stages.update({f"generate-{n}": g for n, g in generated.items()})
        judged = judge_stage({n: g.model_outputs for n, g in generated.items()}, config, run, parent)
        stages["judge"] = judged
        leaderboard = judged.leaderboard_records()
        # the headline numbers on the parent too, so MLflow's runs table can show and compare them
        log_metrics(parent, {f"{key}.{row['model']}": row[key] for row in leaderboard
                             for key in ("win_rate", "standard_error") if row.get(key) is not None})
        registered = None
        if config.tracking.register_model:
            registered = stages["register"] = register_stage(finals["selected"], sel, done.ingest, judged, config, run,
                                                                     parent)
        others = {k: v for k, v in stages.items() if k not in ("ingest", "score", "select", "judge")}
        report = report_stage(done.ingest, done.score, sel, judged, others, config, run, parent)
        stages["report"] = report
    return CurateResult(
        **SelectionResult.fields(run, parent, done),
        reference=judged.reference,
        judge=judged.judge,
        leaderboard=leaderboard,
        report_uri=report.report.uri,
        registered=registered,
        stages=stages,
    )


def _fmt(value: object, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _registered(register: RegisterOut | None) -> list[str]:
    if register is None:
        return []
    return [f"Model:      models:/{register.name}@{register.alias} (version {register.version}, the selected model)"]


def render(result: CurateResult) -> str:
    """What `prefcurate demo` and `prefcurate curate` print: leaderboard, kept fraction, agreement, where to look."""
    lines = [f"Leaderboard (win rate % against {result.reference}, {result.judge} judge; ± standard error)"]
    lines.append(f"  {'model':<10} {'win rate':>14} {'LC win rate':>14} {'score 1-10':>12} {'n':>5}")
    for row in result.leaderboard:
        lines.append(
            f"  {row['model']:<10} {_fmt(row.get('win_rate')):>7} ± {_fmt(row.get('standard_error')):<5}"
            f"{_fmt(row.get('length_controlled_winrate')):>8} ± {_fmt(row.get('lc_standard_error')):<5}"
            f"{_fmt(row.get('single_score'), 2):>8}   {int(row.get('n_total') or 0):>5}"
        )
    ingest = result.ingest
    why = ", ".join(f"{reason} {n}" for reason, n in sorted(ingest.rejects_by_reason.items()))
    lines += ["", f"Data: read {ingest.rows_read} rows; train {ingest.n_train}, validation {ingest.n_validation}, "
                  f"eval prompts {ingest.n_eval_prompts}; rejected {ingest.n_rejected}" + (f" ({why})" if why else "")]
    lines += [
        "",
        f"Selection ({result.rule}): kept {result.n_kept} of {result.n_pool} pairs ({result.kept_fraction:.1%})",
        "",
        "Agreement of the cheap proxies with exact influence",
        result.agreement_text.rstrip(),
        "",
        f"Run root:   {result.run_uri}",
        f"Report:     {result.report_uri or '-'}",
        *_registered(result.registered),
        f"MLflow run: {result.mlflow_url or '-'}",
        f"MLflow UI:  {ui_command(result.tracking_uri)}",
    ]
    return "\n".join(lines)
