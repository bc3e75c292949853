"""Validation-gradient stage: ∇L_val(θ) at the warm-up model, saved as safetensors.

Tied to the warm-up model's fingerprint (scoring refuses a gradient taken at another θ).
Skipped when scoring does not compute IF.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from prefcurate import io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.config import ScoringConfig, TrainingConfig
from prefcurate.data import read_pairs
from prefcurate.influence import save_gradient, validation_gradient, with_lora
from prefcurate.manifest import StageManifest
from prefcurate.tracking import RunHandle
from tasks.common import IO_RETRIES, StageOutput, run_stage

MODULES = ("prefcurate.influence", "prefcurate.logps", "prefcurate.checkpoint")


@task(name="validation-gradient", cache_policy=NONE, **IO_RETRIES)
def gradient_stage(
    ingest: StageManifest,
    ref: StageManifest,
    warmup: StageManifest,
    training: TrainingConfig,
    scoring: ScoringConfig,
    run: str,
    tracking: RunHandle | None = None,
) -> StageManifest:
    """gradients/val_grad.safetensors over θ's trainable parameters (all, or fresh LoRA adapters)."""

    def compute(_: RunHandle | None) -> StageOutput:
        ckpt = load_checkpoint(warmup.outputs["model"])
        model = with_lora(ckpt.model, training) if training.lora is not None else ckpt.model
        gradient = validation_gradient(
            model, ckpt.tokenizer, read_pairs(ingest.outputs["validation"]), io.read_parquet(ref.outputs["ref_logps"]),
            beta=training.beta, batch_size=scoring.batch_size, max_length=training.max_length,
            truncation_mode=training.truncation_mode, model_fingerprint=ckpt.fingerprint,
        )  # fmt: skip
        uri = save_gradient(gradient, io.join(run, "gradients", "val_grad.safetensors"))
        val_loss = float(gradient.metadata["val_loss"])
        return StageOutput(
            outputs={"gradient": uri},
            rows={"validation": int(gradient.metadata["n_pairs"]), "parameters": sum(t.numel() for t in gradient.tensors.values())},
            extra={"norm": gradient.norm(), "val_loss": val_loss, "model_fingerprint": ckpt.fingerprint},
            metrics={"grad_norm": gradient.norm(), "val_loss": val_loss},
        )

    config = {
        "beta": training.beta, "max_length": training.max_length, "truncation_mode": training.truncation_mode,
        "lora": training.lora.model_dump(mode="json") if training.lora else None, "seed": training.seed,
    }  # fmt: skip
    return run_stage("val-gradient", run, inputs=(ingest, ref, warmup), config=config, modules=MODULES,
                     tracking=tracking, compute=compute)
