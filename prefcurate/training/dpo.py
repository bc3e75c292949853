"""DPO training through TRL's DPOTrainer, always against π_ref's stored log-probs.

Every DPO run of a curation (warm-up, validation model, final model, baselines) starts
from some checkpoint but is regularised towards the SFT model π_ref, never towards its
own starting point. TRL would otherwise reload the reference from the model's
`_name_or_path` (DESIGN §8), so the reference log-probs are computed once by
`prefcurate.scoring.logps` (or passed in from the stored pool frame) and fed to TRL as the
`ref_chosen_logps`/`ref_rejected_logps` columns with `precompute_ref_log_probs=True`;
no reference model is held in memory during training.

LoRA runs save the adapter only, with a reference to the base model (see
`prefcurate.checkpoint`). The warm-up puts a fresh adapter on π_ref (TRL seeds its
initialisation); θ_val and the final models load θ = base + warm-up adapter and train that
same adapter (A and B) further, so every model of a run is the base plus one adapter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl import __version__ as trl_version

from prefcurate import io
from prefcurate.checkpoint import inspect_checkpoint, load_checkpoint, save_checkpoint
from prefcurate.compute import resolve_device
from prefcurate.config import ModelSource, TrainingConfig
from prefcurate.errors import ConfigError, DataError
from prefcurate.progress import on_terminal
from prefcurate.scoring.logps import compute_logps, reference_tensors
from prefcurate.training.quiet import quiet_trainer

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class StoredReferenceDPOTrainer(DPOTrainer):
    """DPOTrainer that uses reference log-probs already present as dataset columns.

    TRL 1.16 reads `ref_chosen_logps`/`ref_rejected_logps` from the batch when
    `precompute_ref_log_probs=True`, but would recompute them with its own reference — the
    model being trained, when none is given. TRL has no public way to pass stored values, so
    this overrides the private `_precompute_ref_logps` (pyproject pins the TRL minor it was
    written for) and, in case a TRL release renames it, checks after construction that the
    training set still holds exactly the stored values: a rename fails loudly, never silently.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        stored = kwargs["train_dataset"]
        expected = {pid: (c, r) for pid, c, r in zip(stored["pair_id"], *(stored[col] for col in REF_COLUMNS))}
        super().__init__(*args, **kwargs)
        self._check_reference_kept(expected)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        if set(REF_COLUMNS) <= set(dataset.column_names):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _check_reference_kept(self, expected: dict[str, tuple[float, float]]) -> None:
        data = self.train_dataset
        if "pair_id" not in data.column_names or not set(REF_COLUMNS) <= set(data.column_names):
            raise ConfigError(
                f"TRL {trl_version} dropped the stored reference columns {REF_COLUMNS}; prefcurate supports the TRL range "
                "in its pyproject — install that TRL"
            )
        for pid, chosen, rejected in zip(data["pair_id"], *(data[col] for col in REF_COLUMNS)):
            if (chosen, rejected) != expected[pid]:
                raise ConfigError(
                    f"TRL {trl_version} recomputed the reference log-probs instead of using the stored π_ref values "
                    "(its private _precompute_ref_logps changed); install the TRL range in prefcurate's pyproject"
                )


@dataclass
class FitResult:
    """A model trained in memory (a PeftModel when LoRA) and what happened on the way."""

    model: Any
    n_pairs: int
    n_trained: int
    global_step: int
    train_loss: float
    log_history: list[dict] = field(default_factory=list)


@dataclass
class TrainResult:
    """A saved DPO checkpoint: where it is, its fingerprint and the run's numbers."""

    uri: str
    fingerprint: str
    n_pairs: int
    n_trained: int
    global_step: int
    train_loss: float
    seconds: float
    metadata: dict


def lora_config(training: TrainingConfig):
    """The peft LoraConfig for `training.lora` (None for full fine-tuning)."""
    if training.lora is None:
        return None
    from peft import LoraConfig

    lora = training.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def dpo_args(
    training: TrainingConfig, epochs: float, output_dir: str, report_to: list[str] | str | None = None,
    max_steps: int | None = None,
    device: str = "auto",
) -> DPOConfig:
    """TRL's DPOConfig from our TrainingConfig (its loss type, stored reference, no saving);
    `max_steps` (optimiser steps, cycling the data as needed) overrides `epochs`.

    `training.batch_size` is the global batch: each of `num_processes` processes takes an equal
    share, so one process and several see the same pairs per optimiser step. `device` is
    `compute.device`: cpu keeps TRL off a GPU, a cuda device is accelerate's own choice.
    """
    on_cpu = resolve_device(device).type == "cpu"
    bf16 = training.bf16
    if bf16 is None:
        bf16 = not on_cpu and torch.cuda.is_bf16_supported()
    return DPOConfig(
        output_dir=output_dir,
        beta=training.beta,
        loss_type=[training.loss_type],
        learning_rate=training.learning_rate,
        per_device_train_batch_size=training.batch_size // training.num_processes,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        num_train_epochs=epochs,
        max_steps=max_steps or -1,
        max_length=training.max_length,
        truncation_mode=training.truncation_mode,
        precompute_ref_log_probs=True,
        seed=training.seed,
        data_seed=training.seed,
        bf16=bool(bf16),
        gradient_checkpointing=training.gradient_checkpointing,
        logging_steps=training.logging_steps,
        disable_tqdm=not on_terminal(),  # off a terminal, EtaLogCallback's lines say where training is
        save_strategy="no",
        report_to=report_to or "none",
        dataloader_pin_memory=not on_cpu,
        use_cpu=on_cpu,
    )


def with_reference_columns(pairs: Dataset, ref_logps: pd.DataFrame) -> Dataset:
    """`pairs` plus TRL's reference columns, joined from the stored frame by pair_id."""
    chosen, rejected = reference_tensors(ref_logps, list(pairs["pair_id"]))
    pairs = pairs.remove_columns([c for c in REF_COLUMNS if c in pairs.column_names])
    pairs = pairs.add_column("ref_chosen_logps", chosen.tolist())
    return pairs.add_column("ref_rejected_logps", rejected.tolist())


def fit_dpo(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Dataset,
    training: TrainingConfig,
    *,
    epochs: float,
    ref_logps: pd.DataFrame | None = None,
    ref_model: PreTrainedModel | None = None,
    callbacks: list[TrainerCallback] | None = None,
    report_to: list[str] | str | None = None,
    max_steps: int | None = None,
    device: str = "auto",
) -> FitResult:
    """Train `model` in place with DPO on `pairs`; the reference is π_ref. `max_steps`, when
    given, is the number of optimiser steps instead of `epochs` (equal-step comparisons).

    A plain model gets a fresh adapter when `training.lora` is set; a PeftModel (a loaded
    adapter checkpoint) trains its own adapter further.
    π_ref's log-probs come from `ref_logps` (a frame from `logps.compute_logps`, keyed by
    pair_id) or are computed here from `ref_model`; with neither, `model` itself is π_ref
    (the warm-up case) and its log-probs are taken before any step. `device` is `compute.device`.
    """
    if len(pairs) == 0:
        raise DataError("no pairs to train on; check the selection or data stage")
    if epochs <= 0:
        raise ConfigError(f"epochs must be positive, got {epochs}")
    if ref_logps is None:
        ref_logps = compute_logps(
            ref_model if ref_model is not None else model,
            tokenizer,
            pairs,
            batch_size=training.batch_size,
            max_length=training.max_length,
            truncation_mode=training.truncation_mode,
            desc="reference log-probs",
        )
    train_set = with_reference_columns(pairs, ref_logps)
    peft_model = is_peft(model)
    if peft_model and training.lora is None:
        raise ConfigError("the model is a LoRA adapter checkpoint but training.lora is not set; set it, or start from a full checkpoint")
    output_dir = tempfile.mkdtemp(prefix="prefcurate-dpo-")
    try:
        trainer = StoredReferenceDPOTrainer(
            model=model,
            args=dpo_args(training, epochs, output_dir, report_to, max_steps, device),
            train_dataset=train_set,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=None if peft_model else lora_config(training),
        )
        quiet_trainer(trainer)
        n_trained = len(trainer.train_dataset)
        if n_trained == 0:
            raise DataError(
                f"every pair's prompt fills max_length={training.max_length}; raise training.max_length"
            )
        out = trainer.train()
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    trained = trainer.model
    if is_peft(trained) and "ref" in trained.peft_config:
        trained.delete_adapter("ref")  # TRL's copy of a loaded adapter, unused with stored reference log-probs
    trained.eval()
    return FitResult(
        model=trained,
        n_pairs=len(pairs),
        n_trained=n_trained,
        global_step=out.global_step,
        train_loss=float(out.training_loss),
        log_history=list(trainer.state.log_history),
    )


def is_peft(model: Any) -> bool:
    """Whether `model` is a peft-wrapped model (its trainable weights are an adapter)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def pairs_digest(pairs: Dataset) -> str:
    """Content id of a training set: the sorted pair ids it contains."""
    return io.sha256_json(sorted(pairs["pair_id"]))


def train_dpo(
    model_dir: str | ModelSource,
    pairs: Dataset,
    out_dir: str,
    training: TrainingConfig,
    *,
    epochs: float,
    ref_logps: pd.DataFrame | None = None,
    reference_dir: str | ModelSource | None = None,
    stage: str | None = None,
    callbacks: list[TrainerCallback] | None = None,
    report_to: list[str] | str | None = None,
    metadata: dict | None = None,
    device: str = "auto",
) -> TrainResult:
    """DPO from the checkpoint at `model_dir` on `pairs`, saved as a checkpoint at `out_dir`.

    π_ref is the checkpoint at `reference_dir` (default: `model_dir` itself, only right
    for the warm-up); its log-probs are `ref_logps` when given (the stored pool frame),
    else computed here.
    The saved prefcurate.json records the parent and reference fingerprints, the stage,
    the training config and which pairs were seen; a LoRA run saves the adapter with its base. Under a
    multi-process launch every process trains and only the main one (RANK 0) saves; the others return an
    empty fingerprint.
    """
    start = time.perf_counter()
    ckpt = load_checkpoint(model_dir)
    reference_fp, ref_model = ckpt.fingerprint, None
    if reference_dir is not None and ref_logps is not None:
        reference_fp = inspect_checkpoint(reference_dir).fingerprint
    elif reference_dir is not None:
        ref = load_checkpoint(reference_dir)
        reference_fp, ref_model = ref.fingerprint, ref.model
    fit = fit_dpo(
        ckpt.model,
        ckpt.tokenizer,
        pairs,
        training,
        epochs=epochs,
        ref_logps=ref_logps,
        ref_model=ref_model,
        callbacks=callbacks,
        report_to=report_to,
        device=device,
    )
    meta = {
        **(metadata or {}),
        "stage": stage,
        "parent_fingerprint": ckpt.fingerprint,
        "reference_fingerprint": reference_fp,
        "data": {"n_pairs": fit.n_pairs, "n_trained": fit.n_trained, "pairs_digest": pairs_digest(pairs)},
        "epochs": epochs,
        "training": training.model_dump(mode="json"),
        "train_loss": fit.train_loss,
        "global_step": fit.global_step,
    }
    base = base_fp = None
    if is_peft(fit.model):  # the warm-up's base is the model it started from; later stages inherit it
        base = ckpt.base or (model_dir if isinstance(model_dir, ModelSource) else ModelSource(uri=str(model_dir)))
        base_fp = ckpt.base_fingerprint or ckpt.fingerprint
    main = int(os.environ.get("RANK", "0")) == 0
    digest = save_checkpoint(fit.model, ckpt.tokenizer, out_dir, metadata=meta, base=base, base_fingerprint=base_fp) if main else ""
    return TrainResult(
        uri=out_dir,
        fingerprint=digest,
        n_pairs=fit.n_pairs,
        n_trained=fit.n_trained,
        global_step=fit.global_step,
        train_loss=fit.train_loss,
        seconds=time.perf_counter() - start,
        metadata=meta,
    )
