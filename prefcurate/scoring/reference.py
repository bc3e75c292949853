"""The reference stage: π_ref's log-probs of every train and validation pair, computed once.

Every DPO run, IRM and LossDiff reuse them, so no later stage recomputes π_ref.
"""

from __future__ import annotations

import pandas as pd

from prefcurate import compute, io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.data.pairs import read_pairs
from prefcurate.data.stage import IngestOut
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.scoring.logps import compute_logps
from prefcurate.stage import StageContext, StageSpec


class ReferenceOut(StageOutput):
    ref_logps: FileRef
    pairs: int
    truncated: int


def _reference(ctx: StageContext, ingest: IngestOut) -> ReferenceOut:
    training, scoring = ctx.config.training, ctx.config.scoring
    ckpt = load_checkpoint(ingest.sft)
    model = compute.place(ckpt.model, ctx.config.compute)
    with compute.autocast(ctx.config.compute):
        frames = [
            compute_logps(model, ckpt.tokenizer, read_pairs(getattr(ingest, split).uri), batch_size=scoring.batch_size,
                          max_length=training.max_length, truncation_mode=training.truncation_mode,
                          desc=f"π_ref log-probs ({split})")
            for split in ("train", "validation")
        ]  # fmt: skip
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True)
    uri = io.write_parquet(ctx.path("scores", "ref_logps.parquet"), frame)
    out = ReferenceOut(ref_logps=FileRef.of(uri), pairs=len(frame), truncated=int(frame["truncated"].sum()))
    ctx.metrics({"rows.pairs": out.pairs, "rows.truncated": out.truncated})
    return out


REFERENCE = StageSpec("reference", ReferenceOut, _reference, reads=("training.max_length", "training.truncation_mode", *compute.READS))
