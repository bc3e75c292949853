"""The judge protocol and the on-disk verdict cache every judge shares.

Preferences use AlpacaEval's scale: a float in [1, 2], 2 when the second output is better,
1.5 for a tie, None when no verdict could be had. Single grades use MT-Bench's 1–10 scale,
−1 when unparseable. Every verdict is cached under a content hash of (judge identity, mode,
instruction, outputs), so rerunning an evaluation costs nothing; failed and unparseable
judgments are counted in `Judge.stats` with their reason and never cached, so a rerun retries them.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tqdm.auto import tqdm

from prefcurate import io

log = logging.getLogger("prefcurate.evaluation.judges")

Progress = Callable[[int, int], None]
OK, UNPARSEABLE, FAILED = "ok", "unparseable", "failed"


@dataclass(frozen=True)
class Verdict:
    """One judgment. `status` is OK, UNPARSEABLE (a reply that names no verdict) or FAILED (no
    usable reply); `reason` is a short code and `detail` says what went wrong, both empty when OK.
    `raw` is the judge's own reply, kept in the cache. Nothing here holds a secret."""

    value: float | None
    status: str = OK
    raw: str = ""
    reason: str = ""
    detail: str = ""


@dataclass
class JudgeStats:
    """What a judge did: fresh verdicts, cache hits, the judgments that produced nothing and why."""

    judged: int = 0
    cached: int = 0
    unparseable: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # reason code → judgments without a verdict

    def add(self, verdict: Verdict) -> None:
        if verdict.status == OK:
            self.judged += 1
            return
        if verdict.status == UNPARSEABLE:
            self.unparseable += 1
        else:
            self.failed += 1
        self.reasons[verdict.reason] = self.reasons.get(verdict.reason, 0) + 1

    @property
    def failed_fraction(self) -> float:
        """The share of all judgments (fresh, cached, failed, unparseable) that gave no verdict; 0 when none were made."""
        total = self.judged + self.cached + self.unparseable + self.failed
        return (self.unparseable + self.failed) / total if total else 0.0

    def to_dict(self) -> dict:
        return {"judged": self.judged, "cached": self.cached, "unparseable": self.unparseable, "failed": self.failed,
                "failed_fraction": self.failed_fraction, "reasons": dict(sorted(self.reasons.items()))}


class Judge(ABC):
    """The judge protocol, with the on-disk verdict cache shared by every implementation."""

    kind: str = ""
    cacheable: bool = True

    def __init__(self, cache_dir: str | os.PathLike | None, max_concurrency: int = 1):
        self.cache_dir = str(cache_dir) if cache_dir is not None else None  # a local path or any fsspec URI
        self.max_concurrency = max_concurrency
        self.stats = JudgeStats()
        self._lock = threading.Lock()

    @classmethod
    @abstractmethod
    def from_config(cls, config, cache_dir: str | os.PathLike | None) -> "Judge":
        """The judge a `JudgeConfig` describes."""

    def close(self) -> None:
        """Release connections or models; the judge stays usable for cached verdicts only."""

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    @abstractmethod
    def identity(self) -> dict:
        """What makes this judge's verdicts what they are (no secrets): part of every cache key."""

    @property
    def name(self) -> str:
        """The `annotator` written into annotations."""
        return self.kind

    # -- the protocol -------------------------------------------------------------------------

    def pairwise(self, instruction: str, output_1: str, output_2: str) -> float | None:
        """Preference in [1, 2] (2: output_2 is better, 1.5: tie), None when no verdict could be had."""
        return self.pairwise_many([(instruction, output_1, output_2)])[0]

    def single(self, instruction: str, output: str) -> float:
        """Grade 1–10 of one answer, −1 when unparseable or failed."""
        return self.single_many([(instruction, output)])[0]

    def pairwise_many(self, items: Sequence[tuple[str, str, str]], progress: Progress | None = None) -> list[float | None]:
        return [v.value for v in self.pairwise_verdicts(items, progress)]

    def single_many(self, items: Sequence[tuple[str, str]], progress: Progress | None = None) -> list[float]:
        return [v.value if v.value is not None else -1.0 for v in self.single_verdicts(items, progress)]

    def pairwise_verdicts(self, items: Sequence[tuple[str, str, str]], progress: Progress | None = None) -> list[Verdict]:
        """Like `pairwise_many`, with each judgment's status and reason."""
        return self._run("pairwise", list(items), self._pairwise, progress)

    def single_verdicts(self, items: Sequence[tuple[str, str]], progress: Progress | None = None) -> list[Verdict]:
        """Like `single_many` (value None where it gives −1), with each judgment's status and reason."""
        return self._run("single", list(items), self._single, progress)

    # -- implementations ----------------------------------------------------------------------

    @abstractmethod
    def _pairwise(self, items: list[tuple[str, str, str]]) -> list[Verdict]:
        """One Verdict per item."""

    @abstractmethod
    def _single(self, items: list[tuple[str, str]]) -> list[Verdict]:
        """One Verdict per item."""

    def _batches(self, items: list) -> list[list]:
        """How uncached items are handed to the implementation (one at a time by default)."""
        return [[item] for item in items]

    # -- caching and bookkeeping --------------------------------------------------------------

    def _key(self, mode: str, item: tuple) -> str:
        return io.sha256_json({"judge": self.identity, "mode": mode, "item": list(item)})

    def _cache_uri(self, key: str) -> str | None:
        if self.cache_dir is None or not self.cacheable:
            return None
        return io.join(self.cache_dir, key[:2], f"{key}.json")

    def _run(self, mode: str, items: list[tuple], compute, progress: Progress | None) -> list[Verdict]:
        results: list[Verdict] = [None] * len(items)  # type: ignore[list-item]  (filled below)
        todo: list[int] = []
        for i, item in enumerate(items):
            uri = self._cache_uri(self._key(mode, item))
            if uri is not None and io.exists(uri):
                cached = io.read_json(uri)
                results[i] = Verdict(cached["value"], OK, cached.get("raw", ""))
                self.stats.cached += 1
            else:
                todo.append(i)
        done = len(items) - len(todo)
        bar = tqdm(total=len(items), initial=done, desc=f"judge {mode} ({self.name})", unit="item", leave=False)

        def work(batch_idx: list[int]) -> None:
            nonlocal done
            verdicts = compute([items[i] for i in batch_idx])
            for i, verdict in zip(batch_idx, verdicts):
                results[i] = verdict
                uri = self._cache_uri(self._key(mode, items[i])) if verdict.status == OK else None
                if uri is not None:
                    io.write_json(uri, {"value": verdict.value, "mode": mode, "judge": self.name, "raw": verdict.raw})
            with self._lock:
                for verdict in verdicts:
                    self.stats.add(verdict)
                done += len(batch_idx)
                bar.update(len(batch_idx))
                if progress is not None:
                    progress(done, len(items))

        batches = self._batches(todo)
        try:
            if self.max_concurrency > 1 and len(batches) > 1:
                with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                    list(pool.map(work, batches))
            else:
                for batch in batches:
                    work(batch)
        finally:
            bar.close()
        _warn_missing(self.name, mode, results)
        return results  # every slot is filled once the batches are done


def _warn_missing(judge: str, mode: str, verdicts: list[Verdict]) -> None:
    """One warning line for the judgments of a batch that gave no verdict: how many, why, one example."""
    bad = [v for v in verdicts if v.status != OK]
    if bad:
        why = ", ".join(f"{reason} {n}" for reason, n in Counter(v.reason for v in bad).most_common())
        log.warning("%s judge: %d of %d %s judgments gave no verdict (%s); e.g. %s", judge, len(bad), len(verdicts), mode,
                    why, bad[0].detail)
