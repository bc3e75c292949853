"""The middle percentile band: one definition for TIF and for every band rule.

Edges are strict (`q_lo < x < q_hi`) and percentiles interpolate linearly (numpy's
default), so the IF band that makes TIF and the LossDiff/IRM bands that make the paper's
selection are the same computation.
"""

from __future__ import annotations

import numpy as np


def band_mask(values: np.ndarray, band: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """Mask of values strictly inside the (lo, hi) percentile band, and the two thresholds."""
    values = np.asarray(values, dtype=float)
    q_lo, q_hi = np.percentile(values, list(band))
    return (values > q_lo) & (values < q_hi), float(q_lo), float(q_hi)
