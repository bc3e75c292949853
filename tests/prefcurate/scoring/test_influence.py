"""Exact IF by jvp must equal the per-example gradient loop it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefcurate.config import LoraSettings, TrainingConfig
from prefcurate.errors import ScoringError
from prefcurate.scoring.influence import (
    influence_scores,
    load_gradient,
    save_gradient,
    trainable_parameters,
    validation_gradient,
)
from prefcurate.scoring.logps import (
    compute_logps,
    dpo_loss,
    make_collator,
    reference_tensors,
    sequence_logps,
    tokenize_pairs,
)
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.dpo import lora_config
from tests.prefcurate.scoring.test_logps import toy_pairs

BETA = 0.5


@pytest.fixture(scope="module")
def world():
    tok = build_tokenizer()
    reference = build_model(tok, size="small", seed=0)
    pairs = toy_pairs(40, seed=3)
    ref_logps = compute_logps(reference, tok, pairs, desc=None)
    return tok, pairs.select(range(10)), pairs.select(range(10, 40)), ref_logps


def per_pair_gradients(model, tok, pairs, ref_logps, beta=BETA):
    """Reference implementation: autograd, one pair at a time."""
    params = trainable_parameters(model)
    collator = make_collator(tok, 512, "keep_start")
    grads = []
    for row in tokenize_pairs(pairs, tok):
        batch = collator([{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        chosen, rejected = sequence_logps(model, batch["input_ids"], batch["completion_mask"]).chunk(2)
        ref_c, ref_r = reference_tensors(ref_logps, [row["pair_id"]])
        loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta)
        grads.append(dict(zip(params, torch.autograd.grad(loss.sum(), list(params.values())))))
    return grads


def dot(a: dict, b: dict) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def full_model(tok):
    return build_model(tok, size="small", seed=1)  # θ ≠ π_ref, so losses and gradients are not degenerate


def lora_model(tok):
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(build_model(tok, size="small", seed=1), lora_config(TrainingConfig(lora=LoraSettings(r=4, alpha=8))))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter, as θ's is: B ≠ 0, so A's gradient counts too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("make_model", [full_model, lora_model], ids=["full", "lora"])
def test_jvp_influence_equals_per_example_gradient_loop(world, make_model):
    tok, val, pool, ref_logps = world
    model = make_model(tok)
    gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, batch_size=4, desc=None)
    scores = influence_scores(model, tok, pool, ref_logps, gradient, beta=BETA, batch_size=8, desc=None)

    loop = np.array([dot(g, gradient.tensors) for g in per_pair_gradients(model, tok, pool, ref_logps)])
    assert np.abs(loop).max() > 1e-3
    rel = np.abs(scores["if"].to_numpy() - loop).max() / np.abs(loop).max()
    assert rel < 1e-4
    assert list(scores["pair_id"]) == list(pool["pair_id"])
    if make_model is lora_model:  # IF over the adapter: A and B, both with a gradient, and nothing of the base
        assert all("lora_" in name for name in gradient.tensors)
        for part in ("lora_A", "lora_B"):
            assert sum(float(t.abs().sum()) for k, t in gradient.tensors.items() if part in k) > 0


def test_jvp_influence_with_a_pad_token_inside_every_turn(world):
    """SmolLM2's pad token is its end-of-turn token: the embedding's padding row then gets no gradient
    from autograd, and jvp IF must leave that row's tangent out of the input path the same way."""
    tok, val, pool, ref_logps = world
    model = full_model(tok)
    model.model.embed_tokens.padding_idx = tok.eos_token_id  # `<|end|>` closes every turn of the toy template
    gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, batch_size=4, desc=None)
    scores = influence_scores(model, tok, pool, ref_logps, gradient, beta=BETA, batch_size=8, desc=None)
    loop = np.array([dot(g, gradient.tensors) for g in per_pair_gradients(model, tok, pool, ref_logps)])
    assert np.abs(scores["if"].to_numpy() - loop).max() / np.abs(loop).max() < 1e-4


def test_validation_gradient_is_gradient_of_mean_validation_loss(world):
    tok, val, _, ref_logps = world
    model = full_model(tok)
    gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, batch_size=3, desc=None)
    per_pair = per_pair_gradients(model, tok, val, ref_logps)
    for name, value in gradient.tensors.items():
        expected = torch.stack([g[name] for g in per_pair]).mean(0)
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)


def test_cosine_influence_equals_normalised_loop(world):
    tok, val, pool, ref_logps = world
    model = full_model(tok)
    gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, desc=None)
    scores = influence_scores(model, tok, pool, ref_logps, gradient, beta=BETA, batch_size=8, cosine=True, cosine_chunk=4, desc=None)
    grads = per_pair_gradients(model, tok, pool, ref_logps)
    norms = np.array([np.sqrt(dot(g, g)) for g in grads])
    expected = np.array([dot(g, gradient.tensors) for g in grads]) / (norms * gradient.norm())
    np.testing.assert_allclose(scores["grad_norm"], norms, rtol=1e-4)
    np.testing.assert_allclose(scores["if"], expected, atol=1e-4)
    assert (np.abs(scores["if"]) <= 1 + 1e-6).all()


def test_gradient_round_trip_keeps_values_and_fingerprint(world, tmp_path):
    tok, val, _, ref_logps = world
    gradient = validation_gradient(full_model(tok), tok, val, ref_logps, beta=BETA, model_fingerprint="abc123", desc=None)
    uri = str(tmp_path / "gradients" / "val_grad.safetensors")
    save_gradient(gradient, uri)
    loaded = load_gradient(uri, expected_fingerprint="abc123")
    assert loaded.model_fingerprint == "abc123"
    assert loaded.tensors.keys() == gradient.tensors.keys()
    for name in gradient.tensors:
        assert torch.equal(loaded.tensors[name], gradient.tensors[name])
    assert int(loaded.metadata["n_pairs"]) == len(val)
    with pytest.raises(ScoringError, match="not at other"):
        load_gradient(uri, expected_fingerprint="other")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ScoringError, match="not a validation gradient"):
        load_gradient(str(tmp_path / "junk.safetensors"))


def test_gradient_of_other_parameter_set_is_refused(world):
    tok, val, pool, ref_logps = world
    full_gradient = validation_gradient(full_model(tok), tok, val, ref_logps, beta=BETA, desc=None)
    with pytest.raises(ScoringError, match="does not match the model's trainable parameters"):
        influence_scores(lora_model(tok), tok, pool, ref_logps, full_gradient, beta=BETA, desc=None)
