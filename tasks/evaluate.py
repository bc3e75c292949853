"""Evaluation stages: answers per model (each cached on its own), then one judging stage.

Generation is the expensive part and runs once per model; judging reads the answer files,
so `evaluate` can also judge output files a user brings (AlpacaEval `model_outputs.json`).
The judge keeps its own verdict cache, so a re-judged run costs nothing.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from prefcurate import io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.config import EvaluationConfig, GenerationConfig, ModelSource
from prefcurate.evaluation import evaluate_output_files
from prefcurate.generation import generate, write_model_outputs
from prefcurate.judges import make_judge
from prefcurate.manifest import StageManifest, content_hash
from prefcurate.tracking import RunHandle, log_artifact
from tasks.artifacts import PrefectProgress, publish_table
from tasks.common import IO_RETRIES, StageOutput, run_stage

GEN_MODULES = ("prefcurate.generation", "prefcurate.checkpoint")
JUDGE_MODULES = ("prefcurate.evaluation", "prefcurate.judges", "prefcurate.metrics")


def read_instructions(uri: str) -> list[str]:
    """The evaluation instructions of an ingest's eval_prompts.parquet (or any file read_eval_prompts reads)."""
    from prefcurate.data import read_eval_prompts

    frame = io.read_parquet(uri) if uri.endswith(".parquet") else read_eval_prompts(uri)
    return [str(x) for x in frame["instruction"].tolist()]


@task(name="generate", cache_policy=NONE, **IO_RETRIES)
def generate_stage(
    name: str,
    model_uri: str | ModelSource,
    model: StageManifest | None,
    prompts_uri: str,
    generation: GenerationConfig,
    run: str,
    tracking: RunHandle | None = None,
) -> StageManifest:
    """eval/<name>/model_outputs.json: the model's answers to every evaluation instruction.

    `model` is the manifest of the stage that trained it (None for the SFT model or a
    given checkpoint, which are then identified by their content).
    """
    stage = f"generate-{name}"

    def compute(_: RunHandle | None) -> StageOutput:
        instructions = read_instructions(prompts_uri)
        ckpt = load_checkpoint(model_uri)
        progress = PrefectProgress(f"generate-{name}", description=f"Answers of {name}")
        rows = generate(ckpt.model, ckpt.tokenizer, instructions, generation, name, progress=progress)
        uri = write_model_outputs(rows, io.join(run, "eval", name, "model_outputs.json"))
        lengths = [len(r["output"]) for r in rows]
        return StageOutput(outputs={"model_outputs": uri}, rows={"outputs": len(rows)},
                           extra={"model_uri": model_uri.uri if isinstance(model_uri, ModelSource) else model_uri, "fingerprint": ckpt.fingerprint},
                           metrics={"avg_length": sum(lengths) / max(1, len(lengths))})

    identity = {"name": name, "generation": generation.model_dump(mode="json"), "prompts": content_hash(prompts_uri),
                "model": model.digest if model is not None else _model_identity(model_uri)}
    return run_stage(stage, run, inputs=(model,) if model is not None else (), config=identity, modules=GEN_MODULES,
                     tracking=tracking, compute=compute)


def _model_identity(uri: str | ModelSource) -> str:
    from prefcurate.checkpoint import inspect_checkpoint

    return inspect_checkpoint(uri).fingerprint


def leaderboard_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The leaderboard as rows with the model name first (artifacts, manifests, CLI)."""
    return [{"model": str(name), **{k: (None if pd.isna(v) else v) for k, v in row.items()}} for name, row in frame.iterrows()]


@task(name="judge", cache_policy=NONE, **IO_RETRIES)
def judge_stage(
    outputs: Mapping[str, str],
    evaluation: EvaluationConfig,
    run: str,
    cache_dir: str,
    inputs: list[StageManifest] | None = None,
    tracking: RunHandle | None = None,
) -> StageManifest:
    """eval/{<model>/annotations.json, <model>/leaderboard.csv, leaderboard.csv, judge.json}.

    `outputs` maps model name → model_outputs.json; every model is judged against
    `evaluation.reference`. The files' content is part of the cache key; `inputs` (the
    generation manifests, if any) are recorded as the stage's inputs.
    """
    out_uri = io.join(run, "eval")

    def compute(child: RunHandle | None) -> StageOutput:
        judge = make_judge(evaluation.judge, io.join(cache_dir, "judgments"))
        bars: dict[str, PrefectProgress] = {}

        def progress(step: str, done: int, total: int) -> None:
            bars.setdefault(step, PrefectProgress(step.replace(" ", "-"), description=step))(done, total)

        board = evaluate_output_files(dict(outputs), evaluation.reference, judge, out_uri, progress=progress)
        records = leaderboard_records(board)
        publish_table("leaderboard", records, description=f"Win rate against `{evaluation.reference}` ({judge.name} judge).")
        metrics: dict[str, Any] = {}
        for row in records:
            for column in ("win_rate", "standard_error", "length_controlled_winrate", "single_score", "discrete_win_rate"):
                metrics[f"{column}.{row['model']}"] = row.get(column)
        if child is not None:
            log_artifact(child, io.join(out_uri, "leaderboard.csv"), "eval/leaderboard.csv")
            for name in outputs:
                log_artifact(child, io.join(out_uri, name, "annotations.json"), f"eval/{name}/annotations.json")
        return StageOutput(
            outputs={"leaderboard": io.join(out_uri, "leaderboard.csv"), "judge": io.join(out_uri, "judge.json"),
                     **{f"annotations.{n}": io.join(out_uri, n, "annotations.json") for n in outputs}},
            rows={"models": len(records), "judged": int(judge.stats.judged), "failed": int(judge.stats.failed)},
            extra={"leaderboard": records, "reference": evaluation.reference, "judge": judge.name},
            metrics=metrics,
        )

    config = {"judge": evaluation.judge.model_dump(mode="json"), "reference": evaluation.reference,
              "files": {n: content_hash(u) for n, u in sorted(outputs.items())}}
    return run_stage("judge", run, inputs=inputs or (), config=config, modules=JUDGE_MODULES, tracking=tracking,
                     compute=compute)
