"""The validation curve: prefcurate's own L_val and IRM, measured every k steps of an equal-step DPO run."""

from __future__ import annotations

import pandas as pd
import pytest

from prefcurate.config import LoraSettings, TrainingConfig
from prefcurate.scoring.logps import compute_logps
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.curves import ValidationCurve
from prefcurate.training.dpo import fit_dpo
from tests.prefcurate.scoring.test_logps import toy_pairs
from tests.prefcurate.training.test_dpo import dpo_stats

pytestmark = pytest.mark.slow

FULL = TrainingConfig(batch_size=8, learning_rate=1e-3, seed=3)
LORA = FULL.model_copy(update={"learning_rate": 1e-2, "lora": LoraSettings(r=4, alpha=8)})


@pytest.mark.parametrize("training", [FULL, LORA], ids=["full", "lora"])
def test_sets_of_different_sizes_train_the_same_steps_and_the_curve_is_the_scoring_definition(training):
    tok = build_tokenizer()
    pool, val = toy_pairs(40, seed=5), toy_pairs(12, seed=9)
    sft = build_model(tok, size="small", seed=0)
    # one reference frame for pool and validation pairs, like the reference stage's
    val_ref = compute_logps(sft, tok, val, desc=None)
    ref = pd.concat([compute_logps(sft, tok, pool, desc=None), val_ref], ignore_index=True)
    start = dpo_stats(sft, tok, val, val_ref, training.beta)
    steps = []
    for size in (8, 40):  # one batch, five batches: both trained for 7 steps
        model = build_model(tok, size="small", seed=0)
        curve = ValidationCurve(tok, val, ref, training, every=3, batch_size=16)
        fit = fit_dpo(model, tok, pool.select(range(size)), training, epochs=1.0, max_steps=7, ref_logps=ref,
                      callbacks=[curve])
        frame = curve.frame()
        steps.append(fit.global_step)
        assert frame["step"].tolist() == [0, 3, 6, 7]
        assert (frame.loc[0, "val_loss"], frame.loc[0, "val_margin"]) == pytest.approx(start, abs=1e-6)
        assert frame.loc[3, ["val_loss", "val_margin"]].tolist() == pytest.approx(
            dpo_stats(fit.model, tok, val, val_ref, training.beta), abs=1e-6)
        assert frame["val_loss"].iloc[-1] != pytest.approx(frame["val_loss"].iloc[0])  # it trained
    assert steps == [7, 7]
