"""The toy world's ground-truth judge: exact win rates, no model involved."""

from __future__ import annotations

from prefcurate.errors import JudgeError
from prefcurate.evaluation.judges.base import Judge, Verdict


class OracleJudge(Judge):
    """The toy world's ground truth: pairwise compares qualities, single maps quality q to 1 + 9q."""

    kind = "oracle"
    cacheable = False  # recomputing is cheaper than reading a file

    @classmethod
    def from_config(cls, config, cache_dir) -> "OracleJudge":
        return cls(cache_dir)

    @property
    def identity(self) -> dict:
        return {"kind": self.kind, "version": 1}

    def _quality(self, instruction: str, output: str) -> float:
        from prefcurate.toyworld.task import quality

        try:
            return quality(instruction, output)
        except ValueError as exc:
            raise JudgeError(
                f"the oracle judge only knows toy-world instructions, got {instruction[:60]!r}; "
                "use judge.kind=reward-model or openai for other prompts"
            ) from exc

    def _pairwise(self, items):
        out = []
        for instruction, output_1, output_2 in items:
            q1, q2 = self._quality(instruction, output_1), self._quality(instruction, output_2)
            out.append(Verdict(1.5 if q1 == q2 else 2.0 if q2 > q1 else 1.0, raw=f"{q1} vs {q2}"))
        return out

    def _single(self, items):
        out = []
        for instruction, output in items:
            q = self._quality(instruction, output)
            out.append(Verdict(1.0 + 9.0 * q, raw=str(q)))
        return out
