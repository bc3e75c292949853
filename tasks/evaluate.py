"""Evaluation tasks: a model's answers (one cached stage per model), the judging stage, and the summary
of several replicates. A replicate's stages are named `<stage>-seed<seed>`, so each is cached on its own."""

from __future__ import annotations

from typing import Any, Mapping

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.config import ModelSource
from prefcurate.evaluation.stage import GENERATE, JUDGE, REPLICATES, GenerateOut, JudgeOut, ReplicatesOut
from prefcurate.manifest import FileRef
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle
from prefcurate.training.stage import ModelOut


@task(name="generate", cache_policy=NONE, **IO_RETRIES)
def generate_stage(name: str, model: ModelOut | ModelSource | str, prompts: FileRef, config: Any, run: str,
                   tracking: RunHandle | None = None, replicate: int | None = None) -> GenerateOut:
    """eval[/seed<replicate>]/<name>/model_outputs.json: the answers of a model this run trained, or of a given checkpoint."""
    inputs: dict[str, Any] = {"name": name, "model": model, "prompts": prompts}
    if replicate is not None:
        inputs["replicate"] = replicate
    return run_spec(GENERATE, run, config, inputs=inputs, stage=f"generate-{name}{seed_suffix(replicate)}", tracking=tracking)


@task(name="judge", cache_policy=NONE, **IO_RETRIES)
def judge_stage(outputs: Mapping[str, FileRef], config: Any, run: str, tracking: RunHandle | None = None,
                replicate: int | None = None) -> JudgeOut:
    """Every model's answers (name → model_outputs.json) judged against `evaluation.reference`."""
    inputs: dict[str, Any] = {"outputs": dict(outputs)}
    if replicate is not None:
        inputs["replicate"] = replicate
    return run_spec(JUDGE, run, config, inputs=inputs, stage=f"judge{seed_suffix(replicate)}", tracking=tracking)


@task(name="replicates", cache_policy=NONE, **IO_RETRIES)
def replicates_stage(judged: Mapping[int, JudgeOut], config: Any, run: str, tracking: RunHandle | None = None) -> ReplicatesOut:
    """Every replicate's judgments (seed → judge output) aggregated across seeds."""
    return run_spec(REPLICATES, run, config, inputs={"judged": dict(judged)}, tracking=tracking)


def seed_suffix(replicate: int | None) -> str:
    """What a replicate's stage names end with ("" for the run's only one)."""
    return "" if replicate is None else f"-seed{replicate}"
