"""The `curate` flow: ingest → reference log-probs → warm-up θ → θ_val + ∇L_val → scores
(sharded) → selection → final DPO (selected + baselines) → evaluation → report.

Every stage is a task that returns a manifest and skips itself when its manifest (same
cache key) is already under the run root, so rerunning a killed or failed run finishes it
without redoing finished work. Scoring shards map over the task runner of
`config.scaleout` (in-process, or Dask through prefect-dask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow
from prefect.futures import as_completed
from pydantic import BaseModel, Field

from flows.runs import parent_run, task_runner, use_torch_threads
from prefcurate.config import RunConfig, ScoringConfig, TrainingConfig, _Pipeline
from prefcurate.manifest import StageManifest, run_uri
from prefcurate.tracking import RunHandle, log_metrics, run_url, ui_command
from tasks.artifacts import PrefectProgress
from tasks.common import sft_source
from tasks.evaluate import generate_stage, judge_stage
from tasks.gradient import gradient_stage
from tasks.ingest import ingest_stage
from tasks.report import register_stage, report_stage
from tasks.score import merge_scores_stage, reference_stage, score_shard_stage, shard_ranges
from tasks.select import select_stage
from tasks.train import final_stage, validation_model_stage, warmup_stage


class SelectionResult(BaseModel):
    """What every flow that selects hands back: where the run is, and what was kept."""

    run_uri: str
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    rule: str
    n_pool: int
    n_kept: int
    kept_fraction: float
    agreement_text: str = ""
    manifests: dict[str, StageManifest] = Field(default_factory=dict)

    @staticmethod
    def fields(run: str, parent: RunHandle, select: StageManifest) -> dict[str, Any]:
        """The shared fields, read from the select stage's manifest and the MLflow parent run."""
        return {"run_uri": run, "mlflow_run_id": parent.run_id, "mlflow_url": run_url(parent),
                "rule": select.extra["rule"], "n_pool": select.rows["pool"], "n_kept": select.rows["kept"],
                "kept_fraction": select.extra["kept_fraction"], "agreement_text": select.extra["agreement_text"]}


class CurateResult(SelectionResult):
    """What a finished `curate` run hands back (also what `prefcurate demo` prints)."""

    reference: str = ""
    judge: str = ""
    leaderboard: list[dict[str, Any]] = Field(default_factory=list)
    report_uri: str | None = None


@dataclass
class Curated:
    """The manifests of the stages that `curate` and `nightly` share."""

    ingest: StageManifest
    ref: StageManifest
    warmup: StageManifest
    val: StageManifest
    gradient: StageManifest | None
    score: StageManifest
    select: StageManifest

    def as_dict(self) -> dict[str, StageManifest]:
        return {k: v for k, v in vars(self).items() if v is not None}


@flow(name="score-pool")
def score_pool(
    ingest: StageManifest,
    ref: StageManifest,
    warmup: StageManifest,
    val: StageManifest,
    gradient: StageManifest | None,
    training: TrainingConfig,
    scoring: ScoringConfig,
    run: str,
    tracking: RunHandle | None = None,
) -> StageManifest:
    """Score the pool shard by shard on this flow's task runner, then join the shards."""
    ranges = shard_ranges(ingest.rows["train"], scoring.shard_size)
    futures = [
        score_shard_stage.submit(i, rows, ingest, ref, warmup, val, gradient, training, scoring, run)
        for i, rows in enumerate(ranges)
    ]
    progress = PrefectProgress("scoring", description=f"{len(ranges)} scoring shards")
    shards = []
    for future in as_completed(futures):
        shards.append(future.result())
        progress(len(shards), len(futures))
    return merge_scores_stage(shards, scoring, run, tracking)


def score_and_select(config: _Pipeline, run: str, parent: RunHandle | None) -> Curated:
    """The stages up to and including the selection (shared by `curate` and `nightly`)."""
    ingest = ingest_stage(config.model, config.data, run, config.cache_dir, parent)
    ref = reference_stage(ingest, config.training, config.scoring, run, parent)
    warmup = warmup_stage(ingest, ref, config.training, run, parent)
    val = validation_model_stage(ingest, ref, warmup, config.training, run, parent)
    gradient = (
        gradient_stage(ingest, ref, warmup, config.training, config.scoring, run, parent) if config.scoring.compute_if else None
    )
    scorer = score_pool.with_options(task_runner=task_runner(config.scaleout))
    score = scorer(ingest, ref, warmup, val, gradient, config.training, config.scoring, run, parent)
    select = select_stage(score, ingest, config.selection, run, config.defects_uri, config.data.pool_uri, parent)
    return Curated(ingest, ref, warmup, val, gradient, score, select)


@flow(name="curate")
def curate(config: RunConfig) -> CurateResult:
    """Score a preference pool for an SFT model, keep the valuable pairs, train DPO on them and
    on the baselines, and measure every model's win rate against the reference."""
    run = run_uri(config.root, config.run_name)
    use_torch_threads(config.scaleout)
    with parent_run("curate", config, config.tracking, run) as parent:
        done = score_and_select(config, run, parent)
        manifests = done.as_dict()
        sel = done.select
        selections = {"selected": sel.extra["selection_dir"], "full": None, "random": sel.extra["random_dir"]}
        finals: dict[str, StageManifest] = {}
        for name in ["selected", *[b for b in config.evaluation.baselines if b in ("full", "random")]]:
            finals[name] = final_stage(name, selections[name], done.ingest, done.ref, done.warmup, sel,
                                       config.training, run, parent)  # fmt: skip
            manifests[f"final-{name}"] = finals[name]
        models = {name: (m.outputs["model"], m) for name, m in finals.items()}
        if "sft" in config.evaluation.baselines:
            models["sft"] = (sft_source(done.ingest), done.ingest)
        prompts = done.ingest.outputs["eval_prompts"]
        generated = {
            name: generate_stage(name, uri, manifest, prompts, config.evaluation.generation, run, parent)
            for name, (uri, manifest) in models.items()
        }
        manifests.update({f"generate-{n}": m for n, m in generated.items()})
        judged = judge_stage({n: m.outputs["model_outputs"] for n, m in generated.items()}, config.evaluation, run,
                             config.cache_dir, list(generated.values()), parent)  # fmt: skip
        manifests["judge"] = judged
        # the headline numbers on the parent too, so MLflow's runs table can show and compare them
        log_metrics(parent, {f"{key}.{row['model']}": row[key] for row in judged.extra["leaderboard"]
                             for key in ("win_rate", "standard_error") if row.get(key) is not None})
        if config.tracking.register_model:
            manifests["register"] = register_stage(finals["selected"], config.tracking, run, config.cache_dir, parent)
        report = report_stage(manifests, config, run, parent)
        manifests["report"] = report
    return CurateResult(
        **SelectionResult.fields(run, parent, sel),
        reference=judged.extra["reference"],
        judge=judged.extra["judge"],
        leaderboard=judged.extra["leaderboard"],
        report_uri=report.outputs.get("report"),
        manifests=manifests,
    )


def _fmt(value: object, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _registered(register: StageManifest | None) -> list[str]:
    if register is None:
        return []
    name, version, alias = (register.extra.get(k) for k in ("name", "version", "alias"))
    return [f"Model:      models:/{name}@{alias} (version {version}, the selected model)"]


def render(result: CurateResult, tracking_uri: str) -> str:
    """What `prefcurate demo` and `prefcurate curate` print: leaderboard, kept fraction, agreement, where to look."""
    lines = [f"Leaderboard (win rate % against {result.reference}, {result.judge} judge; ± standard error)"]
    lines.append(f"  {'model':<10} {'win rate':>14} {'LC win rate':>14} {'score 1-10':>12} {'n':>5}")
    for row in result.leaderboard:
        lines.append(
            f"  {row['model']:<10} {_fmt(row.get('win_rate')):>7} ± {_fmt(row.get('standard_error')):<5}"
            f"{_fmt(row.get('length_controlled_winrate')):>8} ± {_fmt(row.get('lc_standard_error')):<5}"
            f"{_fmt(row.get('single_score'), 2):>8}   {int(row.get('n_total') or 0):>5}"
        )
    ingest = result.manifests.get("ingest")
    if ingest is not None:
        rows, reasons = ingest.rows, ingest.extra.get("rejects_by_reason") or {}
        why = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        lines += ["", f"Data: read {rows['read']} rows; train {rows['train']}, validation {rows['validation']}, "
                      f"eval prompts {rows['eval_prompts']}; rejected {rows['rejected']}" + (f" ({why})" if why else "")]
    lines += [
        "",
        f"Selection ({result.rule}): kept {result.n_kept} of {result.n_pool} pairs ({result.kept_fraction:.1%})",
        "",
        "Agreement of the cheap proxies with exact influence",
        result.agreement_text.rstrip(),
        "",
        f"Run root:   {result.run_uri}",
        f"Report:     {result.report_uri or '-'}",
        *_registered(result.manifests.get("register")),
        f"MLflow run: {result.mlflow_url or '-'}",
        f"MLflow UI:  {ui_command(tracking_uri)}",
    ]
    return "\n".join(lines)
