"""`training.bf16` and `training.gradient_checkpointing` reach TRL, and gradient checkpointing only
trades compute for memory: the loss curve stays the same."""

from __future__ import annotations

import pytest

from prefcurate.config import TrainingConfig
from prefcurate.scoring.logps import compute_logps
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.dpo import dpo_args, fit_dpo
from tests.prefcurate.scoring.test_logps import toy_pairs

pytestmark = pytest.mark.slow


def test_the_fields_reach_trls_config(tmp_path):
    args = dpo_args(TrainingConfig(bf16=True, gradient_checkpointing=True, batch_size=8, num_processes=2), 1.0,
                    str(tmp_path), device="cpu")
    assert args.bf16 and args.gradient_checkpointing and args.use_cpu
    assert args.per_device_train_batch_size == 4  # batch_size is the global batch
    auto = dpo_args(TrainingConfig(), 1.0, str(tmp_path), device="cpu")
    assert not auto.bf16 and not auto.gradient_checkpointing


def test_gradient_checkpointing_leaves_the_loss_curve_unchanged():
    tok = build_tokenizer()
    pairs = toy_pairs(32, seed=5)
    ref = compute_logps(build_model(tok, size="small", seed=0), tok, pairs, desc=None)
    curves, models = [], []
    for checkpointing in (False, True):
        training = TrainingConfig(batch_size=8, learning_rate=1e-3, seed=3, logging_steps=1,
                                  gradient_checkpointing=checkpointing)
        fit = fit_dpo(build_model(tok, size="small", seed=0), tok, pairs, training, epochs=1, ref_logps=ref, device="cpu")
        curves.append([h["loss"] for h in fit.log_history if "loss" in h])
        models.append(fit.model)
    assert models[1].is_gradient_checkpointing and not models[0].is_gradient_checkpointing  # it really was on
    assert len(curves[0]) == 4 and curves[0][-1] < curves[0][0]
    # measured: equal to fp32 rounding (recomputed activations are the same numbers)
    assert max(abs(a - b) for a, b in zip(*curves)) < 1e-6
