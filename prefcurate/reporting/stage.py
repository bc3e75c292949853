"""The report stage (figures + report.md) and the register stage (the selected final model
as a new version in the MLflow model registry)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefcurate import io
from prefcurate.checkpoint import METADATA_FILE, is_adapter, load_checkpoint, save_checkpoint
from prefcurate.data.stage import IngestOut
from prefcurate.evaluation.metrics import read_leaderboard
from prefcurate.evaluation.stage import JudgeOut, ReplicatesOut
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.reporting import plots
from prefcurate.reporting.report import inline_figures, render_report, write_report
from prefcurate.scoring.stage import ScoreOut
from prefcurate.selection.selection import Selection, read_selection
from prefcurate.selection.stage import SelectOut
from prefcurate.stage import StageContext, StageSpec
from prefcurate.tracking import TrackingError, log_artifact, register_model
from prefcurate.training.stage import ModelOut


class ReportOut(StageOutput):
    report: FileRef
    figures: dict[str, FileRef]


def _report(ctx: StageContext, ingest: IngestOut, score: ScoreOut, select: SelectOut, judge: JudgeOut | None = None,
            others: dict[str, Any] | None = None, replicates: ReplicatesOut | None = None) -> ReportOut:
    """figures/*.png and report.md from the finished stages' outputs; logged to the parent MLflow run.

    `others` are the remaining finished stages: inputs of the report (it is rebuilt when any of them changes).
    With `replicates` (several seeds) the report shows their means and intervals instead of one seed's
    leaderboard, and draws their figure (figures/replicates.png) instead of one seed's win rates.
    """
    scores = io.read_parquet(score.scores.uri)
    selection = read_selection(select.selection.uri)
    board = read_leaderboard(judge.leaderboard.uri) if judge is not None and replicates is None else None
    reference = replicates.reference if replicates is not None else judge.reference if judge is not None else None
    seeds = (replicates.table_frame(), replicates.per_seed_frame()) if replicates is not None else None
    figures = plots.write_figures(ctx.path("figures"), scores, selection, board, reference, seeds)
    counts = {"read": ingest.rows_read, "train": ingest.n_train, "validation": ingest.n_validation,
              "eval_prompts": ingest.n_eval_prompts, "rejected": ingest.n_rejected}
    markdown = render_report(
        run_name=ctx.config.run_name, run_root=ctx.run, model_uri=ingest.sft.uri, model_fingerprint=ingest.sft_fingerprint,
        counts=counts, rejects_by_reason=ingest.rejects_by_reason, selection=selection,
        agreement=select.agreement_report(), leaderboard=board, reference=reference, figures=figures,
        tracking=ctx.parent, head_to_head=judge.head_to_head_frame() if judge is not None and replicates is None else None,
        replicates=replicates.text() if replicates is not None else None,
    )  # fmt: skip
    uri = write_report(markdown, ctx.run)
    ctx.hooks.markdown("run-report", inline_figures(markdown, figures, ctx.run), description=f"Report of {ctx.run}")
    if ctx.parent is not None:
        log_artifact(ctx.parent, uri, "report.md")
        for fig in figures.values():
            log_artifact(ctx.parent, fig, f"figures/{fig.rsplit('/', 1)[-1]}")
    return ReportOut(report=FileRef.of(uri), figures={k: FileRef.of(v) for k, v in figures.items()})


REPORT = StageSpec("report", ReportOut, _report, reads=("run_name",), tracked=False)


class RegisterOut(StageOutput):
    name: str
    version: str
    alias: str


def version_tags(final: ModelOut, select: Selection, ingest: IngestOut, judged: JudgeOut) -> dict[str, str]:
    """What a model-registry reader compares versions by: the rule, how much it kept, how it did, on what."""
    tags = {"prefcurate.rule": select.rule, "prefcurate.kept_fraction": f"{select.kept_fraction:.4f}",
            "prefcurate.n_kept": str(select.n_kept), "prefcurate.n_pool": str(select.n_pool),
            "prefcurate.data_sha256": ingest.train.sha256, "prefcurate.model_sha256": final.model.sha256,
            "prefcurate.sft_fingerprint": ingest.sft_fingerprint, "prefcurate.judge": judged.judge,
            "prefcurate.reference": judged.reference}
    for row in judged.leaderboard_records():
        if row.get("win_rate") is not None:
            tags[f"prefcurate.win_rate.{row['model']}"] = f"{float(row['win_rate']):.2f}"
    return tags


def _register(ctx: StageContext, final: ModelOut, selection: FileRef, ingest: IngestOut, judged: JudgeOut) -> RegisterOut:
    """Register the selected final model as a new version of `tracking.register_model`, alias `model_alias`,
    with a description and tags naming its rule, kept share, win rates and data and model digests.

    A stage like every other: a resumed run does not register the same model twice. It reads the
    selection itself (not the select stage's whole output), so a change to the agreement report
    alone (new defect labels) registers nothing new.
    """
    tracking = ctx.config.tracking
    if ctx.tracking is None:
        raise TrackingError("registering a model needs an MLflow run; set tracking.tracking_uri")
    select = read_selection(selection.uri)
    tags = version_tags(final, select, ingest, judged)
    win = tags.get("prefcurate.win_rate.selected", "-")
    description = (f"DPO from the warm-up model on the {select.n_kept} of {select.n_pool} pairs ({select.kept_fraction:.1%}) "
                   f"that `{select.rule}` kept, for SFT model {ingest.sft.uri}. Win rate {win} % against "
                   f"{judged.reference} ({judged.judge} judge). Run: {ctx.run}")
    cache = io.join(ctx.config.cache_dir, "checkpoints")
    with io.local_copy_dir(final.model.uri, cache) as local:
        meta = json.loads((Path(local) / METADATA_FILE).read_text()) if is_adapter(Path(local)) else {}
        base = meta.get("base")
        if base is not None:
            tags.update({"prefcurate.base_model": base["uri"], "prefcurate.base_fingerprint": meta["base_fingerprint"]})
            description += (f" A LoRA adapter on base model {base['uri']} (fingerprint {meta['base_fingerprint'][:12]}…); "
                            "prefcurate's load_checkpoint loads base + adapter.")
            if tracking.register_merged:
                tags["prefcurate.merged_artifact"] = "model-merged"
        version = register_model(ctx.tracking, local, tracking.register_model, tracking.model_alias,
                                 description=description, tags=tags)
        if base is not None and tracking.register_merged:
            _log_merged(ctx, local, cache)
    return RegisterOut(name=tracking.register_model, version=str(version), alias=tracking.model_alias)


def _log_merged(ctx: StageContext, adapter_dir: str, cache: str) -> None:
    """model-merged/: base + adapter merged into one full checkpoint, for tools that do not load adapters."""
    ckpt = load_checkpoint(adapter_dir, cache_dir=cache)
    with tempfile.TemporaryDirectory(prefix="prefcurate-merged-") as tmp:
        save_checkpoint(ckpt.model.merge_and_unload(), ckpt.tokenizer, str(Path(tmp) / "model"),
                        metadata={"merged_from": ckpt.fingerprint, "base_fingerprint": ckpt.base_fingerprint,
                                  "stage": ckpt.metadata.get("stage")})
        log_artifact(ctx.tracking, Path(tmp) / "model", "model-merged")


REGISTER = StageSpec("register", RegisterOut, _register,
                     reads=("tracking.register_model", "tracking.model_alias", "tracking.tracking_uri",
                            "tracking.register_merged"))
