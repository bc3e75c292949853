"""Judges: who decides which answer is better (pairwise) and how good one answer is (single).

A registry: `JUDGES` maps `judge.kind` to the class that implements it; every class builds
itself from the `JudgeConfig` with `from_config`. Adding a judge is one module here, its
entry below, and its test.
"""

from __future__ import annotations

import os

from prefcurate.evaluation.judges.base import Judge
from prefcurate.evaluation.judges.openai import OpenAIJudge
from prefcurate.evaluation.judges.oracle import OracleJudge
from prefcurate.evaluation.judges.reward_model import RewardModelJudge

JUDGES: dict[str, type[Judge]] = {judge.kind: judge for judge in (OracleJudge, RewardModelJudge, OpenAIJudge)}


def make_judge(config, cache_dir: str | os.PathLike | None) -> Judge:
    """The judge `config` (a JudgeConfig) describes, caching its verdicts under `cache_dir` (None: no cache)."""
    return JUDGES[config.kind].from_config(config, cache_dir)
