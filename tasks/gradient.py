"""Validation-gradient task: ∇L_val(θ) at the warm-up model (`prefcurate.scoring.stage.GRADIENT`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.data.stage import IngestOut
from prefcurate.scoring.reference import ReferenceOut
from prefcurate.scoring.stage import GRADIENT, GradientOut
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle
from prefcurate.training.stage import ModelOut


@task(name="validation-gradient", cache_policy=NONE, **IO_RETRIES)
def gradient_stage(ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut, config: Any, run: str,
                   tracking: RunHandle | None = None) -> GradientOut:
    """gradients/val_grad.safetensors over θ's trainable parameters (all, or fresh LoRA adapters)."""
    return run_spec(GRADIENT, run, config, inputs={"ingest": ingest, "ref": ref, "warmup": warmup}, tracking=tracking)
