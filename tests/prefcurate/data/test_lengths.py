"""Token lengths before a run: the counts are those of the tokenisation TRL's DPO uses, and each
truncation mode counts what it would cut."""

from __future__ import annotations

import pytest
from datasets import Dataset

from prefcurate.data.lengths import length_report, render_lengths
from prefcurate.errors import DataError
from prefcurate.scoring.logps import tokenize_pair
from prefcurate.toyworld.tokenizer import build_tokenizer


def pairs(n: int) -> Dataset:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": "repeat river " + " ".join(["river"] * i)}]
        rows.append({"pair_id": str(i), "prompt": prompt, "chosen": [{"role": "assistant", "content": "river done"}],
                     "rejected": [{"role": "assistant", "content": " ".join(["um"] * (2 * i + 1))}]})
    return Dataset.from_list(rows)


def test_lengths_and_truncation_counts():
    tok, data = build_tokenizer(), pairs(10)
    ids = [tokenize_pair(tok, ex) for ex in data]
    prompt = [len(x["prompt_ids"]) for x in ids]
    longest = [p + max(len(x["chosen_ids"]), len(x["rejected_ids"])) for p, x in zip(prompt, ids)]
    limit = sorted(longest)[6]
    report = length_report(data, tok, limit, "keep_start")
    assert report.n_pairs == 10 and report.tokens["prompt"]["max"] == max(prompt)
    assert report.tokens["sequence"]["max"] == max(longest)
    assert report.n_truncated == sum(n > limit for n in longest) == 3
    assert report.n_dropped == sum(p >= limit for p in prompt) and report.n_prompt_lost == 0
    keep_end = length_report(data, tok, 8, "keep_end")
    responses = [max(len(x["chosen_ids"]), len(x["rejected_ids"])) for x in ids]
    assert keep_end.n_prompt_lost == sum(r >= 8 for r in responses) > 0 and keep_end.n_dropped == 0
    text = render_lengths(report)
    assert "token lengths of 10 pairs" in text and f"max_length {limit} (keep_start): 3 pairs truncated" in text
    assert "nothing is truncated" in render_lengths(length_report(data, tok, None, "keep_start"))


def test_empty_pool_is_refused():
    with pytest.raises(DataError, match="no pairs"):
        length_report(pairs(0), build_tokenizer(), 64, "keep_start")
