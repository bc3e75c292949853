"""The answer-only, chunked head must give the numbers of the full-logits computation it replaced.

The reference here is the previous implementation, kept verbatim in this file: the model's
full [batch × length × vocabulary] logits, a log-softmax at every position, the completion
positions masked in afterwards. Pinned on the toy model and on a Qwen2-shaped model with a
151,936-word vocabulary and long prompts, for log-probs, DPO loss, jvp IF and the
validation gradient, with a head chunk small enough that every batch spans several chunks.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from torch.func import functional_call, jvp

from prefcurate.scoring import logps as logps_module
from prefcurate.scoring.influence import influence_scores, trainable_parameters, validation_gradient
from prefcurate.scoring.logps import (
    AnswerLogps,
    batch_plan,
    completion_logps,
    compute_logps,
    dpo_loss,
    iter_batches,
    make_collator,
    reference_tensors,
    sequence_logps,
    tokenize_pairs,
)
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from tests.prefcurate.scoring.test_logps import toy_pairs

BETA = 0.5
VOCAB = 151936


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def qwen2_shaped(tok, seed: int = 0):
    """Qwen2's vocabulary, tied embeddings and head layout, at a width a CPU test can afford."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=VOCAB, tie_word_embeddings=True, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # a wider spread of logits than the default init, so the log-softmax is not flat
        model.model.embed_tokens.weight.mul_(20.0)
    return model.eval()


def long_prompt_pairs(n: int, seed: int, prompt_len=(150, 220), answer_len=(3, 30)) -> Dataset:
    """Token-id pairs over the whole large vocabulary: long prompts, short answers of unequal lengths."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(*prompt_len))]
        chosen = [rng.randrange(3, VOCAB) for _ in range(rng.randint(*answer_len))]
        rejected = [rng.randrange(3, VOCAB) for _ in range(rng.randint(*answer_len))]
        rows.append({"pair_id": f"p{seed}-{i}", "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    return Dataset.from_list(rows)


# --- the previous implementation, the reference ------------------------------------------


def full_logits_logps(model, input_ids, completion_mask):
    return completion_logps(model(input_ids=input_ids, use_cache=False).logits, input_ids, completion_mask)


def full_logits_losses(model, params, input_ids, completion_mask, ref_c, ref_r):
    logits = functional_call(model, params, (), {"input_ids": input_ids, "use_cache": False}).logits
    chosen, rejected = completion_logps(logits, input_ids, completion_mask).chunk(2, dim=0)
    loss, margin = dpo_loss(chosen, rejected, ref_c, ref_r, BETA)
    return loss, (chosen, rejected, margin)


def reference_scores(model, tok, tokenized, ref_logps, tangent, batch_size):
    params = {k: v.detach() for k, v in trainable_parameters(model).items()}
    out = []
    for ids, batch, _ in iter_batches(tokenized, batch_size, make_collator(tok, None, "keep_start")):
        ref_c, ref_r = reference_tensors(ref_logps, ids)
        with torch.no_grad():
            loss, influence, (chosen, rejected, _) = jvp(
                lambda p: full_logits_losses(model, p, batch["input_ids"], batch["completion_mask"], ref_c, ref_r),
                (params,), (tangent,), has_aux=True,
            )  # fmt: skip
        out.append(pd.DataFrame({"if": influence.double(), "loss": loss.double(),
                                 "chosen_logps": chosen.double(), "rejected_logps": rejected.double()}))  # fmt: skip
    return pd.concat(out, ignore_index=True)


def reference_gradient(model, tok, tokenized, ref_logps):
    params = trainable_parameters(model)
    batch = next(iter_batches(tokenized, len(tokenized), make_collator(tok, None, "keep_start")))[1]
    ref_c, ref_r = reference_tensors(ref_logps, list(tokenized["pair_id"]))
    loss, _ = full_logits_losses(model, {}, batch["input_ids"], batch["completion_mask"], ref_c, ref_r)
    return dict(zip(params, torch.autograd.grad(loss.mean(), list(params.values()))))


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --- the cases ------------------------------------------------------------------------------


def toy_case(tok):
    pairs = tokenize_pairs(toy_pairs(24, seed=5), tok)
    return build_model(tok, size="small", seed=0).eval(), build_model(tok, size="small", seed=1).eval(), pairs


def qwen_case(tok):
    return qwen2_shaped(tok, 0), qwen2_shaped(tok, 1), long_prompt_pairs(4, seed=0, prompt_len=(120, 180))


@pytest.fixture(params=["toy", "qwen2-shaped"])
def case(request, tok, monkeypatch):
    reference, policy, pairs = (toy_case if request.param == "toy" else qwen_case)(tok)
    # a head chunk small enough that every batch (4 pairs: 8 rows) spans several chunks: 2 (toy)
    # or 8 answer columns per chunk
    columns = 2 if request.param == "toy" else 8
    monkeypatch.setattr(logps_module, "HEAD_CHUNK_LOGITS", columns * 8 * policy.config.vocab_size)
    return request.param, reference, policy, pairs


def test_answer_only_logps_equal_full_logits(tok, case):
    _, _, model, pairs = case
    batch = next(iter_batches(pairs, 4, make_collator(tok, None, "keep_start")))[1]
    with torch.no_grad():
        expected = full_logits_logps(model, batch["input_ids"], batch["completion_mask"])
        got = sequence_logps(model, batch["input_ids"], batch["completion_mask"])
    assert rel(got, expected) < 2e-6
    frame = compute_logps(model, tok, pairs, batch_size=4, max_length=None, desc=None)
    n = min(4, len(pairs))
    assert len(frame) == len(pairs)
    assert rel(frame["chosen_logps"][:n], expected[:n]) < 2e-6
    assert rel(frame["rejected_logps"][:n], expected[n:]) < 2e-6


def test_answer_only_jvp_influence_and_loss_equal_full_logits(tok, case):
    name, reference, model, pairs = case
    ref_logps = compute_logps(reference, tok, pairs, batch_size=4, max_length=None, desc=None)
    val = pairs.select(range(len(pairs) // 2))
    gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, batch_size=3, max_length=None, desc=None)
    got = influence_scores(model, tok, pairs, ref_logps, gradient, beta=BETA, batch_size=4, max_length=None, desc=None)
    expected = reference_scores(model, tok, pairs, ref_logps, gradient.tensors, 4)
    assert np.abs(expected["if"]).max() > 1e-6
    for column in ("if", "loss", "chosen_logps", "rejected_logps"):
        assert rel(got[column], expected[column]) < 2e-5, column


def test_answer_only_validation_gradient_equals_full_logits(tok, case):
    _, reference, model, pairs = case
    ref_logps = compute_logps(reference, tok, pairs, batch_size=4, max_length=None, desc=None)
    got = validation_gradient(model, tok, pairs, ref_logps, beta=BETA, batch_size=len(pairs), max_length=None, desc=None)
    expected = reference_gradient(model, tok, pairs, ref_logps)
    flat = lambda g: torch.cat([g[k].flatten().double() for k in expected])  # noqa: E731
    a, b = flat(got.tensors), flat(expected)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-5
    assert float(torch.dot(a, b) / (a.norm() * b.norm())) > 1 - 1e-9


def test_answer_positions_are_the_completion_positions_in_order():
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 0, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    positions, labels, valid = AnswerLogps.answer_positions(input_ids, mask)
    assert positions[0].tolist() == [1, 2, 3] and labels[0].tolist() == [7, 8, 9]
    assert positions[1, :2].tolist() == [0, 1] and labels[1, :2].tolist() == [6, 7]
    assert valid.tolist() == [[True, True, True], [True, True, False]]


def test_answer_tokens_are_the_completion_positions_packed_in_row_order():
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 0, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    positions, labels, rows = AnswerLogps.answer_tokens(input_ids, mask)
    assert positions.tolist() == [1, 2, 3, 6, 7] and labels.tolist() == [7, 8, 9, 6, 7] and rows.tolist() == [0, 0, 0, 1, 1]


def test_packed_and_padded_answer_forms_agree(tok, case):
    """The packed form (log-probs, jvp, ∇L_val) and the per-row padded one (cosine IF's vmap) give one result."""
    _, _, model, pairs = case
    batch = next(iter_batches(pairs, 4, make_collator(tok, None, "keep_start")))[1]
    ids, mask = batch["input_ids"], batch["completion_mask"]
    head = AnswerLogps(model)
    with torch.no_grad():
        packed = head(ids, *AnswerLogps.answer_tokens(ids, mask))
        padded = head(ids, *AnswerLogps.answer_positions(ids, mask))
    assert rel(packed, padded) < 2e-6


# --- batching by token budget ---------------------------------------------------------------


def test_batch_plan_respects_pairs_and_tokens():
    widths = [10, 10, 50, 10, 200, 10, 10, 10]
    plan = batch_plan(widths, batch_size=3, max_tokens_per_batch=120)
    assert [i for r in plan for i in range(*r)] == list(range(len(widths)))  # every pair once, in order
    for start, stop in plan:
        assert stop - start <= 3
        assert 2 * (stop - start) * max(widths[start:stop]) <= 120 or stop - start == 1
    assert (4, 5) in plan  # a pair alone over the budget is scored alone
    assert batch_plan(widths, batch_size=3) == [(0, 3), (3, 6), (6, 8)]


def test_long_pairs_are_batched_under_the_budget_with_unchanged_scores(tok):
    model, reference = qwen2_shaped(tok, 1), qwen2_shaped(tok, 0)
    pairs = long_prompt_pairs(6, seed=1, prompt_len=(20, 160))
    budget = 800
    collator = make_collator(tok, None, "keep_start")
    sizes = [b["input_ids"].numel() for _, b, _ in iter_batches(pairs, 64, collator, max_tokens_per_batch=budget)]
    assert len(sizes) > 1 and max(sizes) <= budget
    ref_logps = compute_logps(reference, tok, pairs, batch_size=64, max_length=None, desc=None)
    gradient = validation_gradient(model, tok, pairs.select(range(3)), ref_logps, beta=BETA, max_length=None, desc=None)
    kwargs = dict(beta=BETA, batch_size=64, max_length=None, desc=None)
    budgeted = influence_scores(model, tok, pairs, ref_logps, gradient, max_tokens_per_batch=budget, **kwargs)
    whole = influence_scores(model, tok, pairs, ref_logps, gradient, **kwargs)
    assert list(budgeted["pair_id"]) == list(pairs["pair_id"])
    for column in ("if", "loss", "chosen_logps", "rejected_logps", "chosen_len", "rejected_len"):
        assert rel(budgeted[column], whole[column]) < 2e-5, column
    logps = compute_logps(model, tok, pairs, max_length=None, max_tokens_per_batch=budget, desc=None)
    assert rel(logps["chosen_logps"], whole["chosen_logps"]) < 2e-6


@pytest.mark.parametrize("truncation_mode", ["keep_start", "keep_end"])
@pytest.mark.parametrize("max_length", [None, 6, 11, 40])
def test_collator_equals_trls(truncation_mode, max_length):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    rng = random.Random(max_length or 0)
    ids = lambda k: [rng.randrange(3, 50) for _ in range(k)]  # noqa: E731
    examples = [{"prompt_ids": ids(rng.randint(1, 12)), "chosen_ids": ids(rng.randint(0, 9)),
                 "rejected_ids": ids(rng.randint(1, 9))} for _ in range(7)]  # fmt: skip
    kwargs = dict(pad_token_id=0, max_length=max_length, truncation_mode=truncation_mode)
    ours = logps_module.PreferenceCollator(**kwargs)(examples)
    trls = DataCollatorForPreference(**kwargs)(examples)
    assert set(ours) == set(trls)
    for key in trls:
        assert ours[key].dtype == trls[key].dtype and torch.equal(ours[key], trls[key]), key
