"""Exact IF by jvp against per-example autograd on a real 30-layer, 49k-vocabulary model.

In float64 the two must agree to rounding. In fp32 both drift from the float64 value by far
more than on the toy model (30 layers of accumulation, a 49k log-softmax): the tolerance
asserted here is the one measured, and README/NOTES quote it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefcurate.checkpoint import load_checkpoint
from prefcurate.data.pairs import load_pairs
from prefcurate.scoring.influence import influence_scores, trainable_parameters, validation_gradient
from prefcurate.scoring.logps import (
    compute_logps,
    dpo_loss,
    make_collator,
    reference_tensors,
    sequence_logps,
    tokenize_pairs,
)

pytestmark = pytest.mark.real_model

BETA = 0.5
FP32_RELATIVE = 2e-5  # measured 3.6e-6 (jvp) and 4.0e-6 (autograd) against float64, 4 pairs


def autograd_influence(model, tok, pairs, ref_logps, gradient) -> np.ndarray:
    """Reference: ⟨∇ℓ(θ; d), ∇L_val⟩ with one autograd backward per pair, accumulated in float64."""
    params = trainable_parameters(model)
    collator = make_collator(tok, 512, "keep_start")
    out = []
    for row in tokenize_pairs(pairs, tok):
        batch = collator([{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        chosen, rejected = sequence_logps(model, batch["input_ids"], batch["completion_mask"]).chunk(2)
        ref_c, ref_r = (t.to(chosen.dtype) for t in reference_tensors(ref_logps, [row["pair_id"]]))
        loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, BETA)
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        out.append(float(sum((g.double() * gradient.tensors[k].double()).sum() for k, g in zip(params, grads))))
    return np.array(out)


def jvp_influence(model, tok, val, pool, ref_logps):
    gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, batch_size=4, desc=None)
    return influence_scores(model, tok, pool, ref_logps, gradient, beta=BETA, batch_size=4, desc=None)["if"].to_numpy(), gradient


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_jvp_influence_equals_autograd_on_the_real_model(smollm2_dir, real_data):
    ckpt = load_checkpoint(str(smollm2_dir))
    pairs = load_pairs(str(real_data.pool)).pairs
    val, pool = pairs.select(range(2)), pairs.select(range(2, 5))
    # π_ref's log-probs shifted per pair so θ ≠ π_ref: margins and losses are not all log 2
    ref = compute_logps(ckpt.model, ckpt.tokenizer, pairs.select(range(5)), desc=None)
    ref["chosen_logps"] += np.linspace(-1.0, 1.5, len(ref))
    ref["rejected_logps"] -= np.linspace(0.5, -1.0, len(ref))

    jvp32, _ = jvp_influence(ckpt.model, ckpt.tokenizer, val, pool, ref)
    model64 = ckpt.model.double()
    jvp64, gradient64 = jvp_influence(model64, ckpt.tokenizer, val, pool, ref)
    loop64 = autograd_influence(model64, ckpt.tokenizer, pool, ref, gradient64)
    errors = {"jvp64-loop64": relative(jvp64, loop64), "jvp32-loop64": relative(jvp32, loop64)}
    print("relative IF errors:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert np.abs(loop64).max() > 1e-3
    assert errors["jvp64-loop64"] < 1e-6  # transformers' Llama runs RMSNorm and softmax in fp32 even in a float64 model
    assert errors["jvp32-loop64"] < FP32_RELATIVE
