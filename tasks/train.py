"""DPO training tasks: warm-up θ, validation model θ_val and the final models (`prefcurate.training.stage`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.data.stage import IngestOut
from prefcurate.manifest import FileRef
from prefcurate.scoring.reference import ReferenceOut
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle
from prefcurate.training.stage import FINAL, VALIDATION_MODEL, WARMUP, ModelOut


@task(name="warmup", cache_policy=NONE, **IO_RETRIES)
def warmup_stage(ingest: IngestOut, ref: ReferenceOut, config: Any, run: str, tracking: RunHandle | None = None) -> ModelOut:
    """θ: `warmup_epochs` of DPO from the SFT model on the whole pool (π_ref = SFT)."""
    return run_spec(WARMUP, run, config, inputs={"ingest": ingest, "ref": ref}, tracking=tracking)


@task(name="validation-model", cache_policy=NONE, **IO_RETRIES)
def validation_model_stage(ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut, config: Any, run: str,
                           tracking: RunHandle | None = None) -> ModelOut:
    """θ_val: `val_epochs` of DPO from θ on the validation set (π_ref = SFT)."""
    return run_spec(VALIDATION_MODEL, run, config, inputs={"ingest": ingest, "ref": ref, "warmup": warmup},
                    tracking=tracking)


@task(name="final-model", cache_policy=NONE, **IO_RETRIES)
def final_stage(name: str, selection: FileRef | None, ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut,
                config: Any, run: str, tracking: RunHandle | None = None, epochs: float | None = None) -> ModelOut:
    """A final model `name` (`selected` or a baseline): DPO from θ on `selection` (None: the whole pool),
    for `epochs` (None: training.final_epochs)."""
    inputs = {"name": name, "selection": selection, "ingest": ingest, "ref": ref, "warmup": warmup}
    if epochs is not None:
        inputs["epochs"] = epochs
    return run_spec(FINAL, run, config, inputs=inputs, stage=f"final-{name}", tracking=tracking)
