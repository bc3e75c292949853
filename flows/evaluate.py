"""The `evaluate` flow: judge given models or answer files against each other.

A model given as a checkpoint answers the evaluation instructions first (one cached stage
per model); a model given as an AlpacaEval `model_outputs.json` is judged as it is.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel

from prefcurate.config import EvaluateConfig
from prefcurate.evaluation.stage import GenerateOut, JudgeOut
from prefcurate.flows.runs import lease_owner, parent_run, resolve_run
from prefcurate.lease import run_lease
from prefcurate.manifest import FileRef, run_uri
from prefcurate.preflight import preflight
from prefcurate.tasks.common import wire_core_logging
from prefcurate.tasks.evaluate import generate_stage, judge_stage
from prefcurate.tracking import run_url


class EvaluateResult(BaseModel):
    run_uri: str
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    reference: str
    judge: str
    leaderboard: list[dict[str, Any]]
    generated: dict[str, GenerateOut]
    judged: JudgeOut


@flow(name="evaluate")
def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Win rates (and single scores) of every model against `evaluation.reference`."""
    wire_core_logging()  # one-line errors in the run log, for runs a worker starts too
    config = resolve_run(config, "evaluate")
    preflight(config)
    run = run_uri(config.root, config.run_name)
    with run_lease(run, owner=lease_owner("evaluate")), parent_run("evaluate", config, config.tracking, run) as parent:
        generated: dict[str, GenerateOut] = {}
        files: dict[str, FileRef] = {}
        prompts = FileRef.of(config.eval_prompts_uri) if config.eval_prompts_uri else None
        for name, uri in config.model_map().items():
            if uri.endswith(".json"):
                files[name] = FileRef.of(uri)
            else:
                generated[name] = generate_stage(name, uri, prompts, config, run, parent)
                files[name] = generated[name].model_outputs
        judged = judge_stage(files, config, run, parent)
    return EvaluateResult(
        run_uri=run,
        mlflow_run_id=parent.run_id,
        mlflow_url=run_url(parent),
        reference=config.evaluation.reference,
        judge=judged.judge,
        leaderboard=judged.leaderboard_records(),
        generated=generated,
        judged=judged,
    )
