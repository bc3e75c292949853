"""Validation loss and margin while DPO trains: the training-dynamics evidence of the paper.

Measured with prefcurate's own log-prob code (`scoring.logps`), so the numbers are the scoring
stages' definitions: the loss is L_val, the mean DPO loss over the validation set that ∇L_val
differentiates, and the margin is the mean IRM, β·m over the validation pairs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerCallback

from prefcurate.config import TrainingConfig
from prefcurate.scoring.logps import compute_logps, dpo_loss, frame_lengths, reference_tensors, tokenize_pairs
from prefcurate.tracking import RunHandle, log_metrics

CURVE_COLUMNS = ["step", "val_loss", "val_margin"]


class ValidationCurve(TrainerCallback):
    """Validation loss and mean implicit reward margin before the first step, every `every`
    optimiser steps and after the last; rows in `rows`, and step metrics `val/loss`, `val/margin`
    of `run` when given."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pairs: Dataset, ref_logps: pd.DataFrame,
                 training: TrainingConfig, *, every: int, batch_size: int, max_tokens_per_batch: int | None = None,
                 run: RunHandle | None = None):
        self.tokenizer, self.training, self.every, self.run = tokenizer, training, every, run
        self.pairs = tokenize_pairs(pairs, tokenizer)
        self.ref = reference_tensors(ref_logps, list(self.pairs["pair_id"]))
        self.shape = {"batch_size": batch_size, "max_tokens_per_batch": max_tokens_per_batch}
        self.rows: list[dict[str, float]] = []

    def measure(self, model: Any, step: int) -> dict[str, float]:
        logps = compute_logps(model, self.tokenizer, self.pairs, max_length=self.training.max_length,
                              truncation_mode=self.training.truncation_mode, desc=None, **self.shape)
        chosen, rejected = (torch.tensor(logps[c].to_numpy()) for c in ("chosen_logps", "rejected_logps"))
        loss, margin = dpo_loss(chosen, rejected, self.ref[0].double(), self.ref[1].double(), self.training.beta,
                                loss_type=self.training.loss_type, lengths=frame_lengths(logps))
        row = {"step": step, "val_loss": float(loss.mean()), "val_margin": float(margin.mean())}
        self.rows.append(row)
        if self.run is not None:
            log_metrics(self.run, {"val/loss": row["val_loss"], "val/margin": row["val_margin"]}, step=step)
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=CURVE_COLUMNS)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.measure(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step >= state.max_steps:
            self.measure(model, state.global_step)
