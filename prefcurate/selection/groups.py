"""Low / medium / high IF groups of a pool: the split behind the paper's training-dynamics study.

Groups are cut by rank, not by value, so the sizes are the percentiles asked for whatever the
IF distribution, ties are broken by pair_id (deterministic), and every pair lands in exactly
one group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from prefcurate.errors import SelectionError

GROUPS = ("low", "medium", "high")


def if_groups(scores: pd.DataFrame, cuts: tuple[float, float]) -> pd.DataFrame:
    """[pair_id, if, group] in IF order: below the `cuts[0]` percentile of the IF ranking `low`,
    from there to `cuts[1]` `medium`, the rest `high`."""
    if "if" not in scores.columns or scores["if"].isna().any():
        raise SelectionError("IF groups need the exact IF of every pair, and these scores lack it; "
                             "score the run with scoring.compute_if=true")
    frame = scores[["pair_id", "if"]].sort_values(["if", "pair_id"], kind="stable").reset_index(drop=True)
    n = len(frame)
    lo, hi = (round(n * c / 100) for c in cuts)
    rank = np.arange(n)
    frame["group"] = np.where(rank < lo, GROUPS[0], np.where(rank < hi, GROUPS[1], GROUPS[2]))
    sizes = frame["group"].value_counts()
    empty = [g for g in GROUPS if sizes.get(g, 0) == 0]
    if empty:
        raise SelectionError(f"IF group(s) {empty} are empty: {n} pairs cut at percentiles {cuts}; "
                             "widen if_groups.cuts or score a larger pool")
    return frame
