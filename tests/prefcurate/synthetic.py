"""Synthetic score frames for tests that need scores with a known shape, not a trained model."""

from __future__ import annotations

import numpy as np
import pandas as pd


def correlated_scores(n: int, seed: int) -> pd.DataFrame:
    """`n` pairs whose LossDiff follows IRM and whose IF follows LossDiff (plus noise); TIF keeps the IF quartiles 25-75."""
    rng = np.random.default_rng(seed)
    irm = rng.normal(0.5, 1.0, n)
    lossdiff = 0.6 * irm + rng.normal(0, 0.5, n)
    influence = 0.8 * lossdiff + rng.normal(0, 0.4, n)
    lo, hi = np.percentile(influence, [25, 75])
    return pd.DataFrame({"pair_id": [f"p{i:04d}" for i in range(n)], "if": influence, "lossdiff": lossdiff,
                         "irm": irm, "tif": (influence > lo) & (influence < hi)})
