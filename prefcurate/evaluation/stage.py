"""The evaluation stages: answers per model (each cached on its own), then one judging stage,
and with several seeds (`evaluation.seeds`) the summary across them.

Generation is the expensive part and runs once per model; judging reads the answer files,
so `evaluate` also judges output files a user brings (AlpacaEval `model_outputs.json`).
The judge keeps its own verdict cache, so a re-judged run costs nothing. A replicate (one seed
of several) writes under `eval/seed<seed>/`; the summary stage writes `eval/replicates.*`.
"""

from __future__ import annotations

from io import StringIO
from typing import Any, Mapping

import pandas as pd
from pydantic import Field

from prefcurate import compute, io
from prefcurate.checkpoint import inspect_checkpoint, load_checkpoint
from prefcurate.config import ModelSource
from prefcurate.data.pairs import read_eval_prompts
from prefcurate.evaluation import replicates
from prefcurate.evaluation.evaluate import evaluate_output_files, head_to_head
from prefcurate.evaluation.generation import generate, read_model_outputs, write_model_outputs
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


def eval_dir(ctx: StageContext, replicate: int | None) -> str:
    """eval/ of the run, or eval/seed<replicate>/ for one replicate of several."""
    return ctx.path("eval") if replicate is None else ctx.path("eval", f"seed{replicate}")


def _generate(ctx: StageContext, name: str, model: ModelOut | ModelSource | str, prompts: FileRef,
              replicate: int | None = None) -> GenerateOut:
    """eval[/seed<replicate>]/<name>/model_outputs.json: the model's answers to every evaluation instruction."""
    instructions = read_instructions(prompts.uri)
    source = _model(model)
    ckpt = load_checkpoint(source)
    progress = ctx.hooks.progress(f"generate-{name}", f"Answers of {name}")
    model = compute.place(ckpt.model, ctx.config.compute)
    with compute.autocast(ctx.config.compute):
        rows = generate(model, ckpt.tokenizer, instructions, ctx.config.evaluation.generation, name, progress=progress)
    uri = write_model_outputs(rows, io.join(eval_dir(ctx, replicate), name, "model_outputs.json"))
    lengths = [len(r["output"]) for r in rows]
    avg = sum(lengths) / max(1, len(lengths))
    ctx.metrics({"avg_length": avg, "rows.outputs": len(rows)})
    return GenerateOut(model_outputs=FileRef.of(uri), outputs=len(rows),
                       model_uri=source.uri if isinstance(source, ModelSource) else source,
                       fingerprint=ckpt.fingerprint, avg_length=avg)


def _identify_model(config: Any, inputs: Mapping[str, Any]) -> str | None:
    """A model not trained by this run (the SFT model, a given checkpoint) is known by its fingerprint
    (an adapter's by its own and its base's)."""
    model = inputs["model"]
    if isinstance(model, ModelOut):
        return None
    info = inspect_checkpoint(model)
    return info.fingerprint if info.base_fingerprint is None else f"{info.fingerprint}+{info.base_fingerprint}"


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
    head_to_head: FileRef | None = Field(None, description="`selected` judged directly against every other model.")
    failed_fraction: float = Field(0.0, description="Share of the judgments that gave no verdict (failed or unparseable).")
    reasons: dict[str, int] = Field(default_factory=dict, description="Judgments without a verdict by reason code.")

    def leaderboard_records(self) -> list[dict[str, Any]]:
        return leaderboard_records(read_leaderboard(self.leaderboard.uri))

    def head_to_head_frame(self) -> pd.DataFrame | None:
        return None if self.head_to_head is None else pd.read_csv(StringIO(io.read_text(self.head_to_head.uri)))

    def incomplete(self) -> str | None:
        """A rerun asks the judge again for what gave no verdict (the verdicts it had are cached)."""
        missing = self.failed + self.unparseable
        return f"{missing} judgments gave no verdict" if missing else None


def _judge(ctx: StageContext, outputs: Mapping[str, FileRef], replicate: int | None = None) -> JudgeOut:
    """eval[/seed<replicate>]/{<model>/annotations.json, <model>/leaderboard.csv, leaderboard.csv, judge.json}:
    every model judged against `evaluation.reference`; with `evaluation.head_to_head`, `selected` also against
    every other model (head_to_head.csv)."""
    evaluation = ctx.config.evaluation
    out_uri = eval_dir(ctx, replicate)
    direct = evaluation.head_to_head and replicates.SELECTED in outputs and len(outputs) > 1
    bars: dict[str, Any] = {}

    def progress(step: str, done: int, total: int) -> None:
        bars.setdefault(step, ctx.hooks.progress(step.replace(" ", "-"), step))(done, total)

    with make_judge(evaluation.judge, io.join(ctx.config.cache_dir, "judgments")) as judge:
        board = evaluate_output_files({n: f.uri for n, f in outputs.items()}, evaluation.reference, judge, out_uri,
                                      single_score=evaluation.single_score, progress=progress)
        if direct:
            answers = {n: read_model_outputs(f.uri) for n, f in outputs.items()}
            pairs = head_to_head(answers, replicates.SELECTED, judge, out_uri, progress=progress)
            rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in pairs.to_dict(orient="records")]
            ctx.hooks.table("head-to-head", rows,
                            description=f"Win rate of `{replicates.SELECTED}` judged directly against each model.")
            ctx.metrics({f"head_to_head.win_rate.{r['opponent']}": r["win_rate"] for r in rows})
            io.write_json(io.join(out_uri, "judge.json"), {"judge": judge.name, "reference": evaluation.reference,
                                                           **judge.stats.to_dict()})  # the direct judgments counted too
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
        head_to_head=FileRef.of(io.join(out_uri, "head_to_head.csv")) if direct else None,
        reference=evaluation.reference, judge=judge.name, models=len(records), judged=stats.judged, cached=stats.cached,
        failed=stats.failed, unparseable=stats.unparseable, failed_fraction=stats.failed_fraction, reasons=stats.reasons,
    )


JUDGE = StageSpec("judge", JudgeOut, _judge, reads=("evaluation.judge", "evaluation.reference", "evaluation.single_score",
                                                    "evaluation.head_to_head"))


class ReplicatesOut(StageOutput):
    """What holds across the seeds of one run (`prefcurate.evaluation.replicates`)."""

    seeds: list[int]
    reference: str
    table: FileRef = Field(description="Per model: mean win rate, 95 % interval, paired difference to the selection, paired p.")
    per_seed: FileRef = Field(description="seed × model win rates.")
    head_to_head: FileRef | None = Field(None, description="Per opponent: the selection's direct win rate across seeds.")
    markdown: FileRef

    def table_frame(self) -> pd.DataFrame:
        return pd.read_csv(StringIO(io.read_text(self.table.uri)), index_col=0)

    def per_seed_frame(self) -> pd.DataFrame:
        return pd.read_csv(StringIO(io.read_text(self.per_seed.uri)), index_col=0)

    def head_to_head_frame(self) -> pd.DataFrame | None:
        return None if self.head_to_head is None else pd.read_csv(StringIO(io.read_text(self.head_to_head.uri)), index_col=0)

    def text(self) -> str:
        return io.read_text(self.markdown.uri)


def _replicates(ctx: StageContext, judged: Mapping[int, JudgeOut]) -> ReplicatesOut:
    """eval/{replicates.csv, per_seed.csv, head_to_head_seeds.csv, replicates.md}: every replicate's leaderboard (and
    head-to-head judgments) aggregated across seeds."""
    judged = {int(s): j for s, j in judged.items()}
    seeds = sorted(judged)
    by_seed = replicates.win_rates_by_seed({s: read_leaderboard(judged[s].leaderboard.uri) for s in seeds})
    table = replicates.summarize(by_seed)
    direct = {s: judged[s].head_to_head_frame() for s in seeds}
    pairs = replicates.head_to_head_summary(direct) if all(f is not None for f in direct.values()) else None
    reference = judged[seeds[0]].reference
    out = ctx.path("eval")
    uris = {"table": io.write_text(io.join(out, "replicates.csv"), table.to_csv()),
            "per_seed": io.write_text(io.join(out, "per_seed.csv"), by_seed.to_csv()),
            "markdown": io.write_text(io.join(out, "replicates.md"), replicates.markdown(table, by_seed, reference, pairs))}
    if pairs is not None:
        uris["head_to_head"] = io.write_text(io.join(out, "head_to_head_seeds.csv"), pairs.to_csv())
    ctx.metrics({f"{key}.{model}": row[column] for model, row in table.iterrows()
                 for key, column in (("mean_win_rate", "mean"), ("ci_low", "ci_low"), ("ci_high", "ci_high"),
                                     ("diff_vs_selected", "diff_vs_selected"), ("paired_p", "paired_p"))
                 if column in row and pd.notna(row[column])})
    ctx.hooks.markdown("replicates", io.read_text(uris["markdown"]), description=f"{len(seeds)} seeds")
    ctx.artifact(uris["markdown"], "eval/replicates.md")
    return ReplicatesOut(seeds=seeds, reference=reference, **{k: FileRef.of(v) for k, v in uris.items()})


REPLICATES = StageSpec("replicates", ReplicatesOut, _replicates, reads=())
