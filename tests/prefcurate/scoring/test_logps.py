"""Log-probs must be the numbers TRL's DPOTrainer computes for the same model and batch."""

from __future__ import annotations

import copy
import random

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from prefcurate.data.pairs import pair_id, pairs_from_rows
from prefcurate.errors import DataError, ScoringError
from prefcurate.scoring.logps import compute_logps, make_collator, reference_tensors, tokenize_pairs
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.task import all_instructions, imperfect_answer
from prefcurate.toyworld.tokenizer import build_tokenizer


def toy_pairs(n: int, seed: int = 0, chosen_skill: float = 0.95, rejected_skill: float = 0.2) -> Dataset:
    """`n` pairs in the pair schema from the toy task; chosen and rejected always differ."""
    rng = random.Random(seed)
    instructions = all_instructions()
    rng.shuffle(instructions)
    rows = []
    for inst in instructions[:n]:
        prompt = [{"role": "user", "content": inst.text}]
        chosen = imperfect_answer(inst, rng, chosen_skill)
        rejected = imperfect_answer(inst, rng, rejected_skill)
        while rejected == chosen:
            rejected = imperfect_answer(inst, rng, rejected_skill)
        c, r = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        rows.append({"pair_id": pair_id(prompt, c, r), "prompt": prompt, "chosen": c, "rejected": r,
                     "score_chosen": 8.0, "score_rejected": 3.0, "source": "toy", "prompt_id": None})  # fmt: skip
    return pairs_from_rows(rows)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok, size="small", seed=0)


@pytest.mark.parametrize("truncation_mode", ["keep_start", "keep_end"])
def test_logps_equal_trl_dpo_trainer(tok, model, tmp_path, truncation_mode):
    pairs = toy_pairs(24)
    max_length = 14  # the toy prompts are 6 tokens: long answers get cut, no prompt fills it
    ours = compute_logps(model, tok, pairs, batch_size=5, max_length=max_length, truncation_mode=truncation_mode, desc=None)

    args = DPOConfig(output_dir=str(tmp_path), max_length=max_length, truncation_mode=truncation_mode, report_to="none",
                     bf16=False, gradient_checkpointing=False, per_device_train_batch_size=8, save_strategy="no")  # fmt: skip
    trainer = DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=args,
                         train_dataset=pairs, processing_class=tok)  # fmt: skip
    assert len(trainer.train_dataset) == len(pairs)
    chosen, rejected = [], []
    for start in range(0, len(pairs), 8):
        rows = [trainer.train_dataset[i] for i in range(start, min(start + 8, len(pairs)))]
        c, r = trainer.compute_ref_log_probs(trainer.model, trainer.data_collator(rows))
        chosen += c.tolist()
        rejected += r.tolist()
    np.testing.assert_allclose(ours["chosen_logps"], chosen, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours["rejected_logps"], rejected, rtol=1e-5, atol=1e-4)
    assert list(ours["pair_id"]) == list(pairs["pair_id"])

    # truncation is counted: exactly the pairs whose untruncated sequence exceeds max_length
    full = make_collator(tok, None, truncation_mode)
    tokenized = tokenize_pairs(pairs, tok)
    lengths = full([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in tokenized])["attention_mask"].sum(-1)
    n = len(pairs)
    expected = ((lengths[:n] > max_length) | (lengths[n:] > max_length)).tolist()
    assert ours["truncated"].tolist() == expected
    assert 0 < sum(expected) < n


def test_logps_do_not_depend_on_batching_or_padding(tok, model):
    pairs = toy_pairs(12, seed=1)
    one = compute_logps(model, tok, pairs, batch_size=1, desc=None)
    many = compute_logps(model, tok, pairs, batch_size=12, desc=None)
    np.testing.assert_allclose(one["chosen_logps"], many["chosen_logps"], atol=1e-5)
    np.testing.assert_allclose(one["rejected_logps"], many["rejected_logps"], atol=1e-5)
    assert (one["chosen_logps"] < 0).all() and (one["chosen_len"] > 0).all()


def test_logps_are_summed_completion_token_logprobs(tok, model):
    pairs = toy_pairs(1, seed=2)
    row = tokenize_pairs(pairs, tok)[0]
    ids = torch.tensor([row["prompt_ids"] + row["chosen_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(row["prompt_ids"])
    expected = sum(float(logprobs[i - 1, ids[0, i]]) for i in range(n, ids.shape[1]))
    got = compute_logps(model, tok, pairs, desc=None)
    assert got["chosen_logps"][0] == pytest.approx(expected, abs=1e-4)
    assert got["chosen_len"][0] == len(row["chosen_ids"])


def test_non_conversational_pairs_and_missing_template_are_clear_errors(tok, model):
    plain = Dataset.from_list([{"pair_id": "x", "prompt": "repeat apple one", "chosen": "apple done", "rejected": "um"}])
    with pytest.raises(DataError, match="not conversational"):
        compute_logps(model, tok, plain, desc=None)
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        compute_logps(model, bare, toy_pairs(2), desc=None)


def test_missing_reference_rows_name_the_pairs():
    frame = pd.DataFrame({"pair_id": ["a"], "chosen_logps": [-1.0], "rejected_logps": [-2.0]})
    with pytest.raises(ScoringError, match="missing for 1 pairs.*'b'"):
        reference_tensors(frame, ["a", "b"])


def test_reference_frame_may_repeat_a_pair_only_with_the_same_values():
    frame = pd.DataFrame({"pair_id": ["a", "b", "a"], "chosen_logps": [-1.0, -3.0, -1.0], "rejected_logps": [-2.0, -4.0, -2.0]})
    chosen, rejected = reference_tensors(frame, ["b", "a"])
    assert chosen.tolist() == [-3.0, -1.0] and rejected.tolist() == [-4.0, -2.0]
    frame.loc[2, "chosen_logps"] = -9.0
    with pytest.raises(ScoringError, match="disagree for 1 pair ids.*'a'"):
        reference_tensors(frame, ["a"])
