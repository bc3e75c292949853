"""An external reward model's pair margins: each reward is the unbatched forward of its own conversation."""

from __future__ import annotations

import pytest
import torch

from prefcurate.data.pairs import pair_id
from prefcurate.errors import CheckpointError
from prefcurate.scoring.reward_model import RewardModel, pair_rewards
from tests.prefcurate.evaluation.test_judges import _reward_model_dir


def _pairs():
    from datasets import Dataset

    rows = []
    for prompt, chosen, rejected in [("repeat apple two", "apple apple done", "um"),
                                     ("repeat stone one", "stone done", "stone stone stone stone done"),
                                     ("please repeat river three", "river river river done", "river done")]:
        p = [{"role": "user", "content": prompt}]
        c, r = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        rows.append({"pair_id": pair_id(p, c, r), "prompt": p, "chosen": c, "rejected": r})
    return Dataset.from_list(rows)


def _reward(model, tok, messages) -> float:
    ids = tok(tok.apply_chat_template(messages, tokenize=False), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return float(model(**ids).logits[0, 0])


def test_pair_margins_are_the_rewards_of_prompt_plus_answer(tmp_path):
    path, model, tok = _reward_model_dir(tmp_path)
    pairs = _pairs()
    frame = pair_rewards(RewardModel.load(str(path), batch_size=2), pairs)  # batches of two: padding in play
    assert frame["pair_id"].tolist() == pairs["pair_id"]
    for row, pair in zip(frame.itertuples(), pairs):
        assert row.reward_chosen == pytest.approx(_reward(model, tok, pair["prompt"] + pair["chosen"]), abs=1e-5)
        assert row.reward_rejected == pytest.approx(_reward(model, tok, pair["prompt"] + pair["rejected"]), abs=1e-5)
        assert row.reward_margin == pytest.approx(row.reward_chosen - row.reward_rejected)
        assert not row.truncated


def test_conversations_longer_than_the_model_are_cut_and_flagged(tmp_path):
    path, _, _ = _reward_model_dir(tmp_path)
    model = RewardModel.load(str(path))
    model.max_length = 11  # 12 tokens: the second pair's rejected, the third pair's chosen conversation
    frame = pair_rewards(model, _pairs())
    assert frame["truncated"].tolist() == [False, True, True]
    assert frame["reward_margin"].notna().all()


def test_a_model_with_two_labels_is_refused(tmp_path):
    path, _, _ = _reward_model_dir(tmp_path, num_labels=2)
    with pytest.raises(CheckpointError, match="num_labels=1"):
        RewardModel.load(str(path))
