"""The IF-group stage: DPO from θ on one IF group for a fixed number of optimiser steps, with
the validation curve measured on the way (`training.curves`).

Every group starts from the same θ, with the same seed, recipe and step count, so the curves
differ only by the data: the paper's evidence that medium-IF pairs train best. No checkpoint is
kept: the curve is the result.
"""

from __future__ import annotations

import math

from prefcurate import io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.data.pairs import read_pairs
from prefcurate.data.stage import IngestOut
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.scoring.reference import ReferenceOut
from prefcurate.stage import StageContext, StageSpec
from prefcurate.tracking import MlflowMetricsCallback
from prefcurate.training.curves import ValidationCurve
from prefcurate.training.dpo import fit_dpo
from prefcurate.training.progress import EtaLogCallback, ProgressCallback
from prefcurate.training.stage import ModelOut, training_reads


class GroupOut(StageOutput):
    """One IF group's training: its size, steps, validation curve and final numbers."""

    group: str
    n_pairs: int
    steps: int
    curve: FileRef
    final_val_loss: float
    final_val_margin: float
    train_loss: float


def default_steps(group_sizes: list[int], epochs: float, batch_size: int, accumulation: int) -> int:
    """`epochs` epochs of the smallest group, in optimiser steps."""
    return max(1, math.ceil(epochs * math.ceil(min(group_sizes) / (batch_size * accumulation))))


def _train_group(ctx: StageContext, group: str, groups: FileRef, ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut,
                 steps: int) -> GroupOut:
    training, scoring = ctx.config.training, ctx.config.scoring
    split = io.read_parquet(groups.uri)
    members = set(split.loc[split["group"] == group, "pair_id"])
    pool = read_pairs(ingest.train.uri)
    pairs = pool.select([i for i, pid in enumerate(pool["pair_id"]) if pid in members])
    ckpt = load_checkpoint(warmup.model.uri)
    ref_logps = io.read_parquet(ref.ref_logps.uri)
    curve = ValidationCurve(ckpt.tokenizer, read_pairs(ingest.validation.uri), ref_logps, training,
                            every=ctx.config.if_groups.eval_every, batch_size=scoring.batch_size,
                            max_tokens_per_batch=scoring.max_tokens_per_batch, run=ctx.tracking)  # fmt: skip
    callbacks = [curve, ProgressCallback(ctx.hooks.progress(f"train-{ctx.stage}", f"DPO {ctx.stage}")),
                 EtaLogCallback(f"DPO {ctx.stage}")]
    if ctx.tracking is not None:
        callbacks.append(MlflowMetricsCallback(ctx.tracking))
    fit = fit_dpo(ckpt.model, ckpt.tokenizer, pairs, training, epochs=1.0, max_steps=steps, ref_logps=ref_logps,
                  callbacks=callbacks)
    frame = curve.frame()
    uri = io.write_parquet(ctx.path("if-groups", group, "curve.parquet"), frame)
    last = frame.iloc[-1]
    out = GroupOut(group=group, n_pairs=len(pairs), steps=fit.global_step, curve=FileRef.of(uri),
                   final_val_loss=float(last["val_loss"]), final_val_margin=float(last["val_margin"]),
                   train_loss=fit.train_loss)
    ctx.params({"if_group": group, "steps": steps, "rows.pairs": len(pairs)})
    ctx.metrics({"final_val_loss": out.final_val_loss, "final_val_margin": out.final_val_margin,
                 "train_loss": fit.train_loss, "rows.steps": fit.global_step})
    return out


# Every training field but the stages' epoch counts (the step count is an input), and how the curve is measured.
IF_GROUP = StageSpec("if-group", GroupOut, _train_group,
                     reads=(*training_reads(""), "if_groups.eval_every", "scoring.batch_size", "scoring.max_tokens_per_batch"))
