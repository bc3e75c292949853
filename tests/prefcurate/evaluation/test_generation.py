import json
import random

import pytest
import torch

from prefcurate.config import GenerationConfig
from prefcurate.errors import ConfigError, DataError
from prefcurate.evaluation.generation import generate, read_model_outputs, write_model_outputs
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.task import all_instructions, imperfect_answer
from prefcurate.toyworld.tokenizer import build_tokenizer

INSTRUCTIONS = ["repeat apple two", "please repeat river three", "repeat stone one", "now repeat tiger four", "repeat lemon six"]


def quick_lm(steps: int = 30, seed: int = 0):
    """A small toy model given a few steps of LM training on noisy answers, so it writes words."""
    tok = build_tokenizer()
    model = build_model(tok, "small", seed=seed)
    rng = random.Random(seed)
    insts = all_instructions()
    texts = []
    for _ in range(256):
        inst = rng.choice(insts)
        messages = [{"role": "user", "content": inst.text}, {"role": "assistant", "content": imperfect_answer(inst, rng, 0.5)}]
        texts.append(tok.apply_chat_template(messages, tokenize=False))
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = model(input_ids=enc["input_ids"][batch], attention_mask=enc["attention_mask"][batch], labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def toy():
    return quick_lm()


@pytest.mark.slow  # the toy fixture trains a few steps
def test_greedy_is_deterministic_and_batch_independent(toy):
    model, tok = toy
    a = generate(model, tok, INSTRUCTIONS, GenerationConfig(max_new_tokens=6, batch_size=2), "toy")
    b = generate(model, tok, INSTRUCTIONS, GenerationConfig(max_new_tokens=6, batch_size=5), "toy")
    assert a == b
    # left padding: a prompt decoded inside a padded batch answers as it does alone
    alone = generate(model, tok, INSTRUCTIONS[1:2], GenerationConfig(max_new_tokens=6), "toy")
    assert alone[0]["output"] == a[1]["output"]
    assert all(row["output"] for row in a)
    assert tok.padding_side == "right"


@pytest.mark.slow  # the toy fixture trains a few steps
def test_sampling_is_seeded_and_differs_from_greedy(toy):
    model, tok = toy
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.5, n_samples=3, seed=7)
    first = generate(model, tok, INSTRUCTIONS, config, "toy")
    torch.manual_seed(123)  # the global RNG does not leak in
    second = generate(model, tok, INSTRUCTIONS, config, "toy")
    assert first == second
    other_seed = generate(model, tok, INSTRUCTIONS, config.model_copy(update={"seed": 8}), "toy")
    assert [r["output"] for r in other_seed] != [r["output"] for r in first]
    greedy = generate(model, tok, INSTRUCTIONS, GenerationConfig(max_new_tokens=6), "toy")
    assert [r["output"] for r in first[::3]] != [r["output"] for r in greedy]
    # samples of one prompt differ from each other
    assert len({r["output"] for r in first if r["instruction"] == INSTRUCTIONS[0]}) > 1


@pytest.mark.slow  # the toy fixture trains a few steps
def test_alpacaeval_rows_and_files(toy, tmp_path):
    model, tok = toy
    seen = []
    rows = generate(
        model, tok, INSTRUCTIONS, GenerationConfig(max_new_tokens=4, do_sample=True, n_samples=2, batch_size=2), "m1",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert len(rows) == 10
    assert [(r["instruction"], r["sample"]) for r in rows[:4]] == [
        (INSTRUCTIONS[0], 0), (INSTRUCTIONS[0], 1), (INSTRUCTIONS[1], 0), (INSTRUCTIONS[1], 1)]
    assert all(set(r) == {"instruction", "output", "generator", "sample"} and r["generator"] == "m1" for r in rows)
    assert seen == [(2, 5), (4, 5), (5, 5)]
    uri = str(tmp_path / "m1" / "model_outputs.json")
    write_model_outputs(rows, uri)
    assert json.loads((tmp_path / "m1" / "model_outputs.json").read_text()) == rows
    assert read_model_outputs(uri) == rows
    assert tok.padding_side == "right"


@pytest.mark.slow  # the toy fixture trains a few steps
def test_bad_inputs_are_clear_errors(toy, tmp_path):
    model, tok = toy
    with pytest.raises(ConfigError, match="needs generation.do_sample=true"):
        generate(model, tok, INSTRUCTIONS, GenerationConfig(n_samples=2), "toy")
    with pytest.raises(DataError, match="1 evaluation instructions are empty"):
        generate(model, tok, ["repeat apple two", " "], GenerationConfig(), "toy")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(DataError, match="row 0 lacks a text 'instruction' or 'output'"):
        read_model_outputs(str(bad))
