"""The evaluation stages: answers per model (each cached on its own), then one judging stage.

Generation is the expensive part and runs once per model; judging reads the answer files,
so `evaluate` also judges output files a user brings (AlpacaEval `model_outputs.json`).
The judge keeps its own verdict cache, so a re-judged run costs nothing.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import Field

from prefcurate import compute, io
from prefcurate.checkpoint import inspect_checkpoint, load_checkpoint
from prefcurate.config import ModelSource
from prefcurate.data.pairs import read_eval_prompts
from prefcurate.evaluation.evaluate import evaluate_output_files
from prefcurate.evaluation.generation import generate, write_model_outputs
from prefcurate.evaluation.judges import make_judge
from prefcurate.evaluation.metrics import leaderboard_records, read_leaderboard
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.stage import StageContext, StageSpec
from prefcurate.training.stage import ModelOut


def read_instructions(uri: str) -> list[str]:
    """The evaluation instructions of an ingest's eval_prompts.parquet (or any file read_eval_prompts reads)."""
    frame = io.read_parquet(uri) if uri.endswith(".parquet") else read_eval_prompts(uri)
    return [str(x) for x in frame["instruction"].tolist()]


class GenerateOut(StageOutput):
    model_outputs: FileRef
    outputs: int
    model_uri: str
    fingerprint: str
    avg_length: float


def _model(model: ModelOut | ModelSource | str) -> ModelSource | str:
    return model.model.uri if isinstance(model, ModelOut) else model


def _generate(ctx: StageContext, name: str, model: ModelOut | ModelSource | str, prompts: FileRef) -> GenerateOut:
    """eval/<name>/model_outputs.json: the model's answers to every evaluation instruction."""
    instructions = read_instructions(prompts.uri)
    source = _model(model)
    ckpt = load_checkpoint(source)
    progress = ctx.hooks.progress(f"generate-{name}", f"Answers of {name}")
    model = compute.place(ckpt.model, ctx.config.compute)
    with compute.autocast(ctx.config.compute):
        rows = generate(model, ckpt.tokenizer, instructions, ctx.config.evaluation.generation, name, progress=progress)
    uri = write_model_outputs(rows, ctx.path("eval", name, "model_outputs.json"))
    lengths = [len(r["output"]) for r in rows]
    avg = sum(lengths) / max(1, len(lengths))
    ctx.metrics({"avg_length": avg, "rows.outputs": len(rows)})
    return GenerateOut(model_outputs=FileRef.of(uri), outputs=len(rows),
                       model_uri=source.uri if isinstance(source, ModelSource) else source,
                       fingerprint=ckpt.fingerprint, avg_length=avg)


def _identify_model(config: Any, inputs: Mapping[str, Any]) -> str | None:
    """A model not trained by this run (the SFT model, a given checkpoint) is known by its fingerprint."""
    model = inputs["model"]
    return None if isinstance(model, ModelOut) else inspect_checkpoint(model).fingerprint


GENERATE = StageSpec("generate", GenerateOut, _generate, reads=("evaluation.generation", *compute.READS), identify=_identify_model)


class JudgeOut(StageOutput):
    leaderboard: FileRef
    judge_stats: FileRef
    annotations: dict[str, FileRef]
    reference: str
    judge: str
    models: int
    judged: int
    failed: int
    unparseable: int
    cached: int = 0
    failed_fraction: float = Field(0.0, description="Share of the judgments that gave no verdict (failed or unparseable).")
    reasons: dict[str, int] = Field(default_factory=dict, description="Judgments without a verdict by reason code.")

    def leaderboard_records(self) -> list[dict[str, Any]]:
        return leaderboard_records(read_leaderboard(self.leaderboard.uri))

    def incomplete(self) -> str | None:
        """A rerun asks the judge again for what gave no verdict (the verdicts it had are cached)."""
        missing = self.failed + self.unparseable
        return f"{missing} judgments gave no verdict" if missing else None


def _judge(ctx: StageContext, outputs: Mapping[str, FileRef]) -> JudgeOut:
    """eval/{<model>/annotations.json, <model>/leaderboard.csv, leaderboard.csv, judge.json}: every
    model judged against `evaluation.reference`."""
    evaluation = ctx.config.evaluation
    out_uri = ctx.path("eval")
    bars: dict[str, Any] = {}

    def progress(step: str, done: int, total: int) -> None:
        bars.setdefault(step, ctx.hooks.progress(step.replace(" ", "-"), step))(done, total)

    with make_judge(evaluation.judge, io.join(ctx.config.cache_dir, "judgments")) as judge:
        board = evaluate_output_files({n: f.uri for n, f in outputs.items()}, evaluation.reference, judge, out_uri,
                                      single_score=evaluation.single_score, progress=progress)
    records = leaderboard_records(board)
    ctx.hooks.table("leaderboard", records, description=f"Win rate against `{evaluation.reference}` ({judge.name} judge).")
    ctx.metrics({f"{column}.{row['model']}": row.get(column) for row in records
                 for column in ("win_rate", "standard_error", "length_controlled_winrate", "single_score", "discrete_win_rate")})
    stats = judge.stats
    ctx.metrics({"rows.models": len(records), "rows.judged": stats.judged, "rows.cached": stats.cached,
                 "rows.failed": stats.failed, "rows.unparseable": stats.unparseable, "failed_fraction": stats.failed_fraction})
    ctx.artifact(io.join(out_uri, "leaderboard.csv"), "eval/leaderboard.csv")
    for name in outputs:
        ctx.artifact(io.join(out_uri, name, "annotations.json"), f"eval/{name}/annotations.json")
    return JudgeOut(
        leaderboard=FileRef.of(io.join(out_uri, "leaderboard.csv")), judge_stats=FileRef.of(io.join(out_uri, "judge.json")),
        annotations={n: FileRef.of(io.join(out_uri, n, "annotations.json")) for n in outputs},
        reference=evaluation.reference, judge=judge.name, models=len(records), judged=stats.judged, cached=stats.cached,
        failed=stats.failed, unparseable=stats.unparseable, failed_fraction=stats.failed_fraction, reasons=stats.reasons,
    )


JUDGE = StageSpec("judge", JudgeOut, _judge, reads=("evaluation.judge", "evaluation.reference", "evaluation.single_score"))
