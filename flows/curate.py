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
from prefcurate.evaluation.metrics import table_records
from prefcurate.evaluation.stage import GenerateOut, JudgeOut
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
from prefcurate.scoring.stage import GradientOut, RewardOut, ScoreOut
from prefcurate.selection.stage import SelectOut
from prefcurate.tasks.artifacts import PrefectProgress
from prefcurate.tasks.common import wire_core_logging
from prefcurate.tasks.evaluate import generate_stage, judge_stage, replicates_stage, seed_suffix
from prefcurate.tasks.gradient import gradient_stage
from prefcurate.tasks.incremental import save_bundle_stage
from prefcurate.tasks.ingest import ingest_stage
from prefcurate.tasks.report import register_stage, report_stage
from prefcurate.tasks.score import merge_scores_stage, reference_stage, reward_stage, score_shard_stage
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
    leaderboard: list[dict[str, Any]] = Field(
        default_factory=list, description="Win rates against the reference (of the first seed with evaluation.seeds).")
    head_to_head: list[dict[str, Any]] = Field(
        default_factory=list, description="`selected` judged directly against each model (across seeds with several).")
    replicates: list[dict[str, Any]] = Field(
        default_factory=list, description="With several evaluation.seeds: per model the mean, 95 % interval and the "
        "paired difference to the selection.")
    replicates_text: str = Field("", description="The replicates as markdown (eval/replicates.md).")
    report_uri: str | None = None
    registered: RegisterOut | None = None

    def judgments(self) -> list[JudgeOut]:
        """Every judging stage's output (one per seed)."""
        return [out for out in self.stages.values() if isinstance(out, JudgeOut)]


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
    rewards: RewardOut | None = None

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
    finals = (1 + sum(b != "sft" for b in config.evaluation.baselines)) * len(config.evaluation.seeds or [None])
    announce_estimate(ref, ingest, config, parent, finals)
    warmup = warmup_stage(ingest, ref, config, run, parent)
    val = validation_model_stage(ingest, ref, warmup, config, run, parent)
    gradient = gradient_stage(ingest, ref, warmup, config, run, parent) if config.scoring.compute_if else None
    scorer = score_shards.with_options(task_runner=task_runner(config.scaleout))
    done = {"ingest": ingest, "ref": ref, "warmup": warmup, "val": val, "gradient": gradient}
    score = scorer(done, config, run, parent)
    rewards = reward_stage(ingest, config, run, parent)
    select = select_stage(score, config, run, parent, rewards)
    return Curated(ingest, ref, warmup, val, gradient, score, select, rewards)


@dataclass
class Replicate:
    """One seed's final models, answers and judgments."""

    finals: dict[str, ModelOut]
    judged: JudgeOut
    stages: dict[str, StageOutput]


def replicates(config: RunConfig) -> list[tuple[int | None, RunConfig]]:
    """(replicate, config) per seed of `evaluation.seeds`: training, sampling and judge seeds set to it. One seed
    (or none) is the run's only replicate (None): today's stage names and paths."""
    seeds = config.evaluation.seeds
    if not seeds:
        return [(None, config)]

    def seeded(seed: int) -> RunConfig:
        evaluation = config.evaluation
        return config.model_copy(update={
            "training": config.training.model_copy(update={"seed": seed}),
            "evaluation": evaluation.model_copy(update={
                "generation": evaluation.generation.model_copy(update={"seed": seed}),
                "judge": evaluation.judge.model_copy(update={"seed": seed})}),
        })  # fmt: skip

    return [(None if len(seeds) == 1 else seed, seeded(seed)) for seed in seeds]


def evaluate_replicate(done: Curated, trained: list[str], config: RunConfig, run: str, parent: RunHandle | None,
                       replicate: int | None) -> Replicate:
    """Final DPO of the selection and every trained baseline, their answers and the judging, for one replicate."""
    sel, suffix = done.select, seed_suffix(replicate)
    stages: dict[str, StageOutput] = {}
    finals: dict[str, ModelOut] = {}
    for name in trained:
        selection = sel.selection if name == "selected" else None if name in FULL else sel.rules[name]
        # full-steps: the whole pool for as many optimiser steps as the selection gets
        epochs = config.training.final_epochs * sel.kept_fraction if name == "full-steps" else None
        finals[name] = final_stage(f"{name}{suffix}", selection, done.ingest, done.ref, done.warmup, config, run, parent,
                                   epochs=epochs)
        stages[f"final-{name}{suffix}"] = finals[name]
    models: dict[str, Any] = dict(finals)
    if "sft" in config.evaluation.baselines:
        models["sft"] = done.ingest.sft
    generated: dict[str, GenerateOut] = {
        name: generate_stage(name, model, done.ingest.eval_prompts, config, run, parent, replicate=replicate)
        for name, model in models.items()
    }
    stages.update({f"generate-{n}{suffix}": g for n, g in generated.items()})
    judged = judge_stage({n: g.model_outputs for n, g in generated.items()}, config, run, parent, replicate=replicate)
    stages[f"judge{suffix}"] = judged
    return Replicate(finals, judged, stages)


def _headline(leaderboard: list[dict[str, Any]]) -> dict[str, Any]:
    return {f"{key}.{row['model']}": row[key] for row in leaderboard for key in ("win_rate", "standard_error")
            if row.get(key) is not None}


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
        missing = [name for name in trained if name not in ("selected", "full", "full-steps", *sel.rules)]
        if missing:
            raise SelectionError(f"baselines {missing} could not be selected on these scores (see the select stage's log); "
                                 "remove them from evaluation.baselines")
        evaluated = {seed: evaluate_replicate(done, trained, cfg, run, parent, seed) for seed, cfg in replicates(config)}
        for one in evaluated.values():
            stages.update(one.stages)
        first = next(iter(evaluated.values()))
        judged, leaderboard = first.judged, first.judged.leaderboard_records()
        summary = None
        if len(evaluated) > 1:
            summary = stages["replicates"] = replicates_stage({s: e.judged for s, e in evaluated.items()}, config, run, parent)
            for seed, one in evaluated.items():  # each replicate's numbers on the parent, one step per seed
                log_metrics(parent, _headline(one.judged.leaderboard_records()), step=seed)
            log_metrics(parent, {f"{key}.{row['model']}": row[column] for row in table_records(summary.table_frame())
                                 for key, column in (("mean_win_rate", "mean"), ("diff_vs_selected", "diff_vs_selected"),
                                                     ("paired_p", "paired_p")) if row.get(column) is not None})
        else:  # the headline numbers on the parent too, so MLflow's runs table can show and compare them
            log_metrics(parent, _headline(leaderboard))
        registered = None
        if config.tracking.register_model:  # the first replicate's selected model
            registered = stages["register"] = register_stage(first.finals["selected"], sel, done.ingest, judged, config,
                                                             run, parent)
        others = {k: v for k, v in stages.items() if k not in ("ingest", "score", "select", "judge", "replicates")}
        report = report_stage(done.ingest, done.score, sel, judged, others, config, run, parent, replicates=summary)
        stages["report"] = report
    return CurateResult(
        **SelectionResult.fields(run, parent, done),
        reference=judged.reference,
        judge=judged.judge,
        leaderboard=leaderboard,
        head_to_head=table_records(judged.head_to_head_frame() if summary is None else summary.head_to_head_frame()),
        replicates=table_records(summary.table_frame() if summary is not None else None),
        replicates_text=summary.text() if summary is not None else "",
        report_uri=report.report.uri,
        registered=registered,
        stages=stages,
    )


def _render_replicates(result: CurateResult) -> list[str]:
    """Several seeds: per model the mean win rate and its 95 % interval, the paired difference to the selection."""
    rows = result.replicates
    lines = [f"Replicates ({rows[0]['seeds']} seeds; win rate % against {result.reference}, {result.judge} judge; "
             "mean and 95 % t-interval across seeds)",
             f"  {'model':<10} {'mean':>6} {'95 % CI':>15} {'selected − model':>17} {'95 % CI':>15} {'paired p':>9}"]
    for row in rows:
        paired = row.get("diff_vs_selected") is not None
        lines.append(
            f"  {row['model']:<10} {_fmt(row['mean']):>6} {_fmt(row.get('ci_low')):>7} – {_fmt(row.get('ci_high')):<5}"
            + (f"{_fmt(row['diff_vs_selected']):>17} {_fmt(row.get('diff_ci_low')):>7} – {_fmt(row.get('diff_ci_high')):<5}"
               f"{_fmt(row.get('paired_p'), 3):>9}" if paired else ""))
    if result.head_to_head:
        lines += ["", "Head to head (win rate % of selected judged directly; mean and 95 % t-interval across seeds)"]
        lines += [f"  selected vs {row['opponent']:<10} {_fmt(row['mean']):>6} {_fmt(row.get('ci_low')):>7} – "
                  f"{_fmt(row.get('ci_high')):<5} p vs 50 % {_fmt(row.get('p_vs_tie'), 3)}" for row in result.head_to_head]
    return lines


def _fmt(value: object, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _registered(register: RegisterOut | None) -> list[str]:
    if register is None:
        return []
    return [f"Model:      models:/{register.name}@{register.alias} (version {register.version}, the selected model)"]


def render(result: CurateResult) -> str:
    """What `prefcurate demo` and `prefcurate curate` print: leaderboard (or, with several seeds, the means and
    intervals across them), head to head, kept fraction, agreement, where to look."""
    if result.replicates:
        lines = _render_replicates(result)
    else:
        lines = [f"Leaderboard (win rate % against {result.reference}, {result.judge} judge; ± standard error)"]
        lines.append(f"  {'model':<10} {'win rate':>14} {'LC win rate':>14} {'score 1-10':>12} {'n':>5}")
        for row in result.leaderboard:
            lines.append(
                f"  {row['model']:<10} {_fmt(row.get('win_rate')):>7} ± {_fmt(row.get('standard_error')):<5}"
                f"{_fmt(row.get('length_controlled_winrate')):>8} ± {_fmt(row.get('lc_standard_error')):<5}"
                f"{_fmt(row.get('single_score'), 2):>8}   {int(row.get('n_total') or 0):>5}"
            )
        if result.head_to_head:
            lines += ["", "Head to head (win rate % of selected judged directly against each model; ± standard error)"]
            lines += [f"  selected vs {row['opponent']:<10} {_fmt(row.get('win_rate')):>7} ± {_fmt(row.get('standard_error')):<5}"
                      f"{int(row.get('n_total') or 0):>5}" for row in result.head_to_head]
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
