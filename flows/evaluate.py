"""The `evaluate` flow: judge given models or answer files against each other.

A model given as a checkpoint answers the evaluation instructions first (one cached stage
per model); a model given as an AlpacaEval `model_outputs.json` is judged as it is.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel

from flows.runs import parent_run
from prefcurate.config import EvaluateConfig
from prefcurate.manifest import StageManifest, run_uri
from prefcurate.tracking import run_url
from tasks.evaluate import generate_stage, judge_stage


class EvaluateResult(BaseModel):
    run_uri: str
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    reference: str
    judge: str
    leaderboard: list[dict[str, Any]]
    manifests: dict[str, StageManifest]


@flow(name="evaluate")
def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Win rates (and single scores) of every model against `evaluation.reference`."""
    run = run_uri(config.root, config.run_name)
    with parent_run("evaluate", config, config.tracking, run) as parent:
        generated: dict[str, StageManifest] = {}
        files: dict[str, str] = {}
        for name, uri in config.models.items():
            if uri.endswith(".json"):
                files[name] = uri
            else:
                generated[name] = generate_stage(name, uri, None, config.eval_prompts_uri, config.evaluation.generation,
                                                 run, parent)  # fmt: skip
                files[name] = generated[name].outputs["model_outputs"]
        judged = judge_stage(files, config.evaluation, run, config.cache_dir, list(generated.values()), parent)
    return EvaluateResult(
        run_uri=run,
        mlflow_run_id=parent.run_id,
        mlflow_url=run_url(parent),
        reference=config.evaluation.reference,
        judge=judged.extra["judge"],
        leaderboard=judged.extra["leaderboard"],
        manifests={**{f"generate-{n}": m for n, m in generated.items()}, "judge": judged},
    )
