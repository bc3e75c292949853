"""Token lengths of a pool under a model's chat template, known before a run starts.

Pairs are tokenised exactly as scoring and TRL's DPO tokenise them (`scoring.logps.tokenize_pair`),
so the truncation counts are the ones training will meet: with `keep_start` TRL cuts the end of
prompt + response and drops a pair whose prompt alone fills `max_length`; with `keep_end` it cuts
the start, and a response that fills `max_length` leaves no prompt token.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from prefcurate.errors import DataError
from prefcurate.scoring.logps import tokenize_pair

PERCENTILES = (50, 90, 99, 100)


class LengthReport(BaseModel):
    n_pairs: int
    max_length: int | None
    truncation_mode: str
    tokens: dict[str, dict[str, int]]  # prompt / response (chosen and rejected) / sequence (prompt + longer response) → p50, p90, p99, max
    n_truncated: int  # prompt + a response is longer than max_length
    n_dropped: int  # keep_start: the prompt alone fills max_length (TRL drops the pair)
    n_prompt_lost: int  # keep_end: a response alone fills max_length (no prompt token is left)


def _percentiles(values: list[int]) -> dict[str, int]:
    out = {f"p{q}": int(np.ceil(np.percentile(values, q))) for q in PERCENTILES[:-1]}
    return {**out, "max": int(max(values))}


def length_report(pairs, tokenizer, max_length: int | None, truncation_mode: str) -> LengthReport:
    """Prompt / response / sequence token lengths of `pairs` and what `max_length` would cut."""
    if len(pairs) == 0:
        raise DataError("no pairs to measure; check the pool")
    prompt, responses, sequence, truncated, dropped, prompt_lost = [], [], [], 0, 0, 0
    for example in pairs:
        ids = tokenize_pair(tokenizer, example)
        p, c, r = len(ids["prompt_ids"]), len(ids["chosen_ids"]), len(ids["rejected_ids"])
        prompt.append(p)
        responses += [c, r]
        sequence.append(p + max(c, r))
        if max_length is not None:
            truncated += p + max(c, r) > max_length
            dropped += truncation_mode == "keep_start" and p >= max_length
            prompt_lost += truncation_mode == "keep_end" and max(c, r) >= max_length
    tokens = {"prompt": _percentiles(prompt), "response": _percentiles(responses), "sequence": _percentiles(sequence)}
    return LengthReport(n_pairs=len(prompt), max_length=max_length, truncation_mode=truncation_mode, tokens=tokens,
                        n_truncated=truncated, n_dropped=dropped, n_prompt_lost=prompt_lost)


def render_lengths(report: LengthReport) -> str:
    """A few lines for the terminal."""
    lines = [f"token lengths of {report.n_pairs} pairs (chat template applied):"]
    for name, stats in report.tokens.items():
        lines.append(f"  {name:<9} " + "  ".join(f"{k} {v}" for k, v in stats.items()))
    if report.max_length is None:
        return "\n".join(lines + ["  max_length none: nothing is truncated"])
    cut = f"  max_length {report.max_length} ({report.truncation_mode}): {report.n_truncated} pairs truncated"
    if report.truncation_mode == "keep_start":
        cut += f", {report.n_dropped} dropped (prompt alone fills max_length)"
    else:
        cut += f", {report.n_prompt_lost} left without prompt (a response fills max_length)"
    return "\n".join(lines + [cut])
