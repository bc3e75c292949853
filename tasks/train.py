"""DPO training stages: warm-up θ, validation model θ_val, and the final models.

Each wraps `prefcurate.dpo.train_dpo`, with π_ref's stored log-probs (the reference stage)
so no stage recomputes them, the TRL loss curves logged into the stage's MLflow run, and a
Prefect progress artifact fed by the trainer's steps. A kill mid-training leaves no
manifest, so the stage simply trains again on resume.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate import io
from prefcurate.config import ModelSource, TrainingConfig
from prefcurate.data import read_pairs
from prefcurate.dpo import train_dpo
from prefcurate.manifest import StageManifest
from prefcurate.selection import read_selection
from prefcurate.tracking import MlflowMetricsCallback, RunHandle
from tasks.artifacts import PrefectProgress, TrainerProgress
from tasks.common import IO_RETRIES, StageOutput, run_stage, sft_source

MODULES = ("prefcurate.dpo", "prefcurate.logps", "prefcurate.checkpoint")
_EPOCH_FIELDS = {"warmup": "warmup_epochs", "val": "val_epochs", "final": "final_epochs"}


def _section(training: TrainingConfig, kind: str) -> dict[str, Any]:
    """The training config that matters for one kind of stage (other stages' epochs left out)."""
    others = {f for k, f in _EPOCH_FIELDS.items() if k != kind}
    return training.model_dump(mode="json", exclude=others)


def _train(
    stage: str,
    *,
    start_uri: str | ModelSource,
    pairs: Any,
    ref: StageManifest,
    reference_dir: str | ModelSource | None,
    training: TrainingConfig,
    epochs: float,
    out_uri: str,
    metadata: dict[str, Any],
    child: RunHandle | None,
) -> StageOutput:
    callbacks = [TrainerProgress(PrefectProgress(f"train-{stage}", description=f"DPO {stage}"))]
    if child is not None:
        callbacks.append(MlflowMetricsCallback(child))
    result = train_dpo(
        start_uri, pairs, out_uri, training, epochs=epochs,
        ref_logps=io.read_parquet(ref.outputs["ref_logps"]), reference_dir=reference_dir,
        stage=stage, callbacks=callbacks, metadata=metadata,
    )  # fmt: skip
    return StageOutput(
        outputs={"model": result.uri},
        rows={"pairs": result.n_pairs, "trained": result.n_trained, "steps": result.global_step},
        extra={"fingerprint": result.fingerprint, "train_loss": result.train_loss, "seconds": round(result.seconds, 2)},
        metrics={"train_loss": result.train_loss, "seconds": result.seconds},
        params={"epochs": epochs, "parent_fingerprint": result.metadata.get("parent_fingerprint", ""),
                "reference_fingerprint": result.metadata.get("reference_fingerprint", "")},
    )


@task(name="warmup", cache_policy=NONE, **IO_RETRIES)
def warmup_stage(
    ingest: StageManifest, ref: StageManifest, training: TrainingConfig, run: str, tracking: RunHandle | None = None
) -> StageManifest:
    """θ: `warmup_epochs` of DPO from the SFT model on the whole pool (π_ref = SFT)."""

    def compute(child: RunHandle | None) -> StageOutput:
        return _train(
            "warmup", start_uri=sft_source(ingest), pairs=read_pairs(ingest.outputs["train"]), ref=ref,
            reference_dir=None, training=training, epochs=training.warmup_epochs,
            out_uri=io.join(run, "models", "warmup"), metadata={}, child=child,
        )  # fmt: skip

    return run_stage("warmup", run, inputs=(ingest, ref), config=_section(training, "warmup"), modules=MODULES,
                     tracking=tracking, compute=compute)


@task(name="validation-model", cache_policy=NONE, **IO_RETRIES)
def validation_model_stage(
    ingest: StageManifest,
    ref: StageManifest,
    warmup: StageManifest,
    training: TrainingConfig,
    run: str,
    tracking: RunHandle | None = None,
) -> StageManifest:
    """θ_val: `val_epochs` of DPO from θ on the validation set (π_ref = SFT)."""

    def compute(child: RunHandle | None) -> StageOutput:
        return _train(
            "val", start_uri=warmup.outputs["model"], pairs=read_pairs(ingest.outputs["validation"]), ref=ref,
            reference_dir=sft_source(ingest), training=training, epochs=training.val_epochs,
            out_uri=io.join(run, "models", "val"), metadata={}, child=child,
        )  # fmt: skip

    return run_stage("val", run, inputs=(ingest, ref, warmup), config=_section(training, "val"), modules=MODULES,
                     tracking=tracking, compute=compute)


@task(name="final-model", cache_policy=NONE, **IO_RETRIES)
def final_stage(
    name: str,
    selection_dir: str | None,
    ingest: StageManifest,
    ref: StageManifest,
    warmup: StageManifest,
    select: StageManifest,
    training: TrainingConfig,
    run: str,
    tracking: RunHandle | None = None,
) -> StageManifest:
    """A final model: `final_epochs` of DPO from θ on the pairs kept in `selection_dir`, or on
    the whole pool when it is None (π_ref = SFT).

    `name` is `selected` or a baseline (`full`, `random`); the same recipe for all, so the
    comparison is fair.
    """
    stage = f"final-{name}"

    def compute(child: RunHandle | None) -> StageOutput:
        pool = read_pairs(ingest.outputs["train"])
        rule, pairs = "full", pool
        if selection_dir is not None:
            chosen = read_selection(selection_dir)
            keep = set(chosen.kept_ids)
            rule, pairs = chosen.rule, pool.select([i for i, pid in enumerate(pool["pair_id"]) if pid in keep])
        out = _train(
            stage, start_uri=warmup.outputs["model"], pairs=pairs, ref=ref,
            reference_dir=sft_source(ingest), training=training, epochs=training.final_epochs,
            out_uri=io.join(run, "models", "final", name),
            metadata={"selection_rule": rule}, child=child,
        )  # fmt: skip
        out.params["selection.rule"] = rule
        return out

    return run_stage(stage, run, inputs=(ingest, ref, warmup, select),
                     config={**_section(training, "final"), "selection": selection_dir}, modules=MODULES,
                     tracking=tracking, compute=compute)
