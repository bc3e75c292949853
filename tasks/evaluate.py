"""Evaluation tasks: a model's answers (one cached stage per model) and the judging stage."""

from __future__ import annotations

from typing import Any, Mapping

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.config import ModelSource
from prefcurate.evaluation.stage import GENERATE, JUDGE, GenerateOut, JudgeOut
from prefcurate.manifest import FileRef
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle
from prefcurate.training.stage import ModelOut


@task(name="generate", cache_policy=NONE, **IO_RETRIES)
def generate_stage(name: str, model: ModelOut | ModelSource | str, prompts: FileRef, config: Any, run: str,
                   tracking: RunHandle | None = None) -> GenerateOut:
    """eval/<name>/model_outputs.json: the answers of a model this run trained, or of a given checkpoint."""
    inputs = {"name": name, "model": model, "prompts": prompts}
    return run_spec(GENERATE, run, config, inputs=inputs, stage=f"generate-{name}", tracking=tracking)


@task(name="judge", cache_policy=NONE, **IO_RETRIES)
def judge_stage(outputs: Mapping[str, FileRef], config: Any, run: str, tracking: RunHandle | None = None) -> JudgeOut:
    """Every model's answers (name → model_outputs.json) judged against `evaluation.reference`."""
    return run_spec(JUDGE, run, config, inputs={"outputs": dict(outputs)}, tracking=tracking)
