"""The DPO training stages: warm-up θ, validation model θ_val, and the final models.

Each wraps `train_dpo` with π_ref's stored log-probs (the reference stage), so no stage
recomputes them, and logs TRL's loss curves into the stage's MLflow run. A kill
mid-training leaves no manifest, so the stage simply trains again on resume. With
`training.num_processes > 1` the training runs under `accelerate launch` (`training.launch`)
and this process writes the manifest once the launcher has exited 0.
"""

from __future__ import annotations

from typing import Any

from prefcurate import io
from prefcurate.config import ModelSource, TrainingConfig
from prefcurate.data.pairs import read_pairs
from prefcurate.data.stage import IngestOut
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.scoring.reference import ReferenceOut
from prefcurate.selection.selection import read_selection
from prefcurate.stage import StageContext, StageSpec
from prefcurate.tracking import MlflowMetricsCallback
from prefcurate.training.launch import train
from prefcurate.training.progress import EtaLogCallback, ProgressCallback

EPOCH_FIELDS = ("warmup_epochs", "val_epochs", "final_epochs")


class ModelOut(StageOutput):
    """A trained checkpoint and what happened while training it."""

    VOLATILE = frozenset({"seconds"})

    model: FileRef
    fingerprint: str
    rule: str = "full"
    n_pairs: int
    n_trained: int
    steps: int
    train_loss: float
    seconds: float


# Fields that say how training is spread, not what it computes: the global batch, the seed and the data
# order are the same for any process count (tests/prefcurate/training/test_launch.py), so a model trained
# in one process is reused by a rerun with four.
LAYOUT_FIELDS = ("num_processes", "accelerate_config")


def training_reads(epochs: str) -> tuple[str, ...]:
    """Every training field except the other stages' epochs and the process layout, and the device type
    (cpu/cuda: the same recipe does not give the same weights on both)."""
    fields = [f for f in TrainingConfig.model_fields
              if (f not in EPOCH_FIELDS or f == epochs) and f not in LAYOUT_FIELDS]
    return (*(f"training.{f}" for f in fields), "compute.device")


def _train(ctx: StageContext, *, start: str | ModelSource, pairs: Any, ref: ReferenceOut, reference: ModelSource | None,
           epochs: float, out: str, rule: str = "full") -> ModelOut:
    training = ctx.config.training
    callbacks: list[Any] = [ProgressCallback(ctx.hooks.progress(f"train-{ctx.stage}", f"DPO {ctx.stage}")),
                            EtaLogCallback(f"DPO {ctx.stage}")]
    if ctx.tracking is not None:
        callbacks.append(MlflowMetricsCallback(ctx.tracking))
    result = train(
        start, pairs, out, training, epochs=epochs, ref_logps=io.read_parquet(ref.ref_logps.uri),
        reference_dir=reference, stage=ctx.stage, callbacks=callbacks, metadata={"selection_rule": rule},
        device=ctx.config.compute.device, tracking=ctx.tracking,
    )  # fmt: skip
    ctx.metrics({"train_loss": result.train_loss, "seconds": result.seconds, "rows.pairs": result.n_pairs,
                 "rows.trained": result.n_trained, "rows.steps": result.global_step})
    ctx.params({"epochs": epochs, "selection.rule": rule, "parent_fingerprint": result.metadata.get("parent_fingerprint", ""),
                "reference_fingerprint": result.metadata.get("reference_fingerprint", "")})
    return ModelOut(model=FileRef.of(result.uri), fingerprint=result.fingerprint, rule=rule, n_pairs=result.n_pairs,
                    n_trained=result.n_trained, steps=result.global_step, train_loss=result.train_loss,
                    seconds=round(result.seconds, 2))


def _warmup(ctx: StageContext, ingest: IngestOut, ref: ReferenceOut) -> ModelOut:
    """θ: `warmup_epochs` of DPO from the SFT model on the whole pool (π_ref = SFT)."""
    return _train(ctx, start=ingest.sft, pairs=read_pairs(ingest.train.uri), ref=ref, reference=None,
                  epochs=ctx.config.training.warmup_epochs, out=ctx.path("models", "warmup"))


def _validation_model(ctx: StageContext, ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut) -> ModelOut:
    """θ_val: `val_epochs` of DPO from θ on the validation set (π_ref = SFT)."""
    return _train(ctx, start=warmup.model.uri, pairs=read_pairs(ingest.validation.uri), ref=ref, reference=ingest.sft,
                  epochs=ctx.config.training.val_epochs, out=ctx.path("models", "val"))


def _final(ctx: StageContext, name: str, ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut,
           selection: FileRef | None, epochs: float | None = None) -> ModelOut:
    """A final model: `final_epochs` of DPO from θ on the pairs of `selection`, or on the whole
    pool when it is None (π_ref = SFT) — one recipe for the selection and every baseline.
    `epochs` overrides the epoch count (`full-steps`: the whole pool for the selection's steps)."""
    pool = read_pairs(ingest.train.uri)
    rule, pairs = "full", pool
    if selection is not None:
        chosen = read_selection(selection.uri)
        keep = set(chosen.kept_ids)
        rule, pairs = chosen.rule, pool.select([i for i, pid in enumerate(pool["pair_id"]) if pid in keep])
    return _train(ctx, start=warmup.model.uri, pairs=pairs, ref=ref, reference=ingest.sft,
                  epochs=epochs or ctx.config.training.final_epochs, out=ctx.path("models", "final", name), rule=rule)


WARMUP = StageSpec("warmup", ModelOut, _warmup, reads=training_reads("warmup_epochs"))
VALIDATION_MODEL = StageSpec("val", ModelOut, _validation_model, reads=training_reads("val_epochs"))
FINAL = StageSpec("final", ModelOut, _final, reads=training_reads("final_epochs"))
