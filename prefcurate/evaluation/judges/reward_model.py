"""A local reward model as judge: Bradley–Terry preferences from one scalar head."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from prefcurate.errors import ConfigError
from prefcurate.evaluation.judges.base import Judge, Verdict


class RewardModelJudge(Judge):
    """A local sequence-classification reward model (one logit), safetensors only, no remote code.

    Pairwise: 1 + σ(r₂ − r₁), the Bradley–Terry probability that output 2 wins, on AlpacaEval's
    scale. Single: 1 + 9·σ(r), the same probability against an answer of reward 0, stretched
    onto 1–10 (monotone in the reward; comparable across models judged by the same RM).
    """

    kind = "reward-model"

    def __init__(self, model_dir: str, cache_dir: str | os.PathLike | None, batch_size: int = 16):
        super().__init__(cache_dir)
        from prefcurate.scoring.reward_model import RewardModel

        self._uri = model_dir
        self.reward_model = RewardModel.load(model_dir, batch_size=batch_size)
        self._fingerprint = self.reward_model.fingerprint

    @classmethod
    def from_config(cls, config, cache_dir) -> "RewardModelJudge":
        if not config.model:
            raise ConfigError("the reward-model judge needs judge.model: a local or s3:// sequence-classification checkpoint")
        return cls(config.model, cache_dir, batch_size=config.batch_size)

    @property
    def identity(self) -> dict:
        return {"kind": self.kind, "fingerprint": self._fingerprint, "mapping": "bt-v1"}

    @property
    def name(self) -> str:
        return f"reward-model:{Path(str(self._uri)).name}"

    def rewards(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The reward of each (instruction, output)."""
        from prefcurate.scoring.reward_model import conversation

        return self.reward_model.rewards([conversation(i, o) for i, o in pairs])[0]

    def _pairwise(self, items):
        rewards = self.rewards([(i, o) for i, o1, o2 in items for o in (o1, o2)])
        out = []
        for k in range(len(items)):
            r1, r2 = rewards[2 * k], rewards[2 * k + 1]
            out.append(Verdict(1.0 + _sigmoid(r2 - r1), raw=f"{r1} vs {r2}"))
        return out

    def _single(self, items):
        return [Verdict(1.0 + 9.0 * _sigmoid(r), raw=str(r)) for r in self.rewards(items)]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
