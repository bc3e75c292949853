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
from typing import Any, Iterable, Iterator, TypeVar

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


# Cost of one pair in units of one π_ref forward pass over it (chosen + rejected), measured on the
# toy model here: a DPO step is a forward and a backward (~3 forwards; the reference is stored),
# exact IF is one jvp (~2.6 forwards, benchmarks/README.md), LossDiff adds θ_val's forward.
STEP_COST, IF_COST, FORWARD_COST = 3.0, 2.6, 1.0
KEPT_GUESS = 0.6  # the share of the pool a final model trains on, before the selection exists


def estimate_seconds(ref_seconds: float, ref_pairs: int, *, n_train: int, n_validation: int, training: Any,
                     compute_if: bool, n_final_models: int = 0) -> float:
    """Rough seconds the training and scoring stages still need, from π_ref's pass over the pool
    (the first pass over every pair: it prices a forward on this model, this hardware)."""
    per_pair = ref_seconds / max(ref_pairs, 1)
    work = (STEP_COST * training.warmup_epochs * n_train
            + STEP_COST * (training.val_epochs + 1) * n_validation  # θ_val, then ∇L_val
            + ((IF_COST if compute_if else FORWARD_COST) + FORWARD_COST) * n_train
            + STEP_COST * training.final_epochs * n_train * KEPT_GUESS * n_final_models)
    return per_pair * work
