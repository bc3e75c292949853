"""Where a long loop is, for whoever watches: a tqdm bar on a terminal, log lines with an ETA elsewhere.

A worker's log, CI and `prefect deployment run --watch` are not terminals: a tqdm bar there is
one endless line of carriage returns. So core loops report through `track`, which draws a bar
when stderr is a terminal and otherwise logs a line every `every_s` seconds (and at the end)
with the count, the rate and the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("prefcurate.progress")

T = TypeVar("T")
EVERY_S = 30.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 07 min."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def eta_line(desc: str, done: int, total: int, elapsed: float, unit: str, extra: str = "") -> str:
    """`desc: 40/160 batches (25%), 12 s elapsed, ETA 36 s` (+ `extra`, e.g. the loss)."""
    share = done / total if total else 1.0
    left = elapsed / done * (total - done) if done else float("nan")
    eta = duration(left) if done else "?"
    return f"{desc}: {done}/{total} {unit} ({share:.0%}), {duration(elapsed)} elapsed, ETA {eta}{extra}"


def track(items: Iterable[T], *, desc: str | None, total: int | None = None, unit: str = "batches",
          every_s: float = EVERY_S) -> Iterator[T]:
    """`items`, reporting progress as a bar (terminal) or as ETA log lines (anything else); silent without `desc`."""
    if desc is None:
        yield from items
        return
    if on_terminal():
        yield from tqdm(items, desc=desc, total=total, leave=False)
        return
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or done == total:
            log.info(eta_line(desc, done, total, now - start, unit))
            last = now
