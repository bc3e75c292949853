"""Generation on the real model goes through its own chat template and gives a real answer."""

from __future__ import annotations

import pytest

from prefcurate.checkpoint import load_checkpoint
from prefcurate.config import GenerationConfig
from prefcurate.evaluation.generation import generate

pytestmark = pytest.mark.real_model


def test_greedy_answers_through_the_chat_template(smollm2_dir):
    ckpt = load_checkpoint(str(smollm2_dir))
    questions = ["What is the capital of France?", "What is 2 plus 2?"]
    rows = generate(ckpt.model, ckpt.tokenizer, questions, GenerationConfig(max_new_tokens=12, batch_size=2), "smollm2")
    assert [r["instruction"] for r in rows] == questions
    assert "Paris" in rows[0]["output"]
    assert "<|im_" not in rows[0]["output"] + rows[1]["output"]  # the answer ends at <|im_end|>, decoded without it
    alone = generate(ckpt.model, ckpt.tokenizer, questions[1:], GenerationConfig(max_new_tokens=12), "smollm2")
    assert alone[0]["output"] == rows[1]["output"]  # left padding in a batch changes nothing
