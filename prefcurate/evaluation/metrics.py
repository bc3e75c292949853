"""WinRate, length-controlled WinRate and SingleScore, in AlpacaEval's and MT-Bench's terms.

Preferences follow AlpacaEval: a float in [1, 2] per item, 1 = the reference (output_1)
is better, 2 = the model (output_2) is better, 1.5 = a tie. The raw win rate is
mean(preference − 1)·100 with the standard error of the per-item win in %; the discrete
win rate counts wins as 1, ties as ½ after rounding each preference to its side.

Several answers per prompt (`generation.n_samples`) are not independent items: the standard
errors are clustered by prompt (`clustered_standard_error`), which with one answer per prompt
is exactly the plain standard error (ddof 1) of the mean.

The length-controlled win rate answers "what would the win rate be if both answers had the
same length?": a logistic GLM of the (soft) preference on an intercept and
tanh(standardised length difference), read at a length difference of zero. AlpacaEval's
public LC also has a per-instruction difficulty term fitted on its fixed 805 prompts; for a
custom prompt set that table does not exist, so the difficulty term is left out (its
"length_controlled_minimal" GLM). As in AlpacaEval the length coefficient carries an L2
penalty of 1/C with C = 100, which keeps the fit finite when length separates wins from
losses; the intercept is left free, so with equal lengths LC equals the raw win rate.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from prefcurate import io
from prefcurate.errors import DataError

log = logging.getLogger(__name__)

LEADERBOARD_COLUMNS = [
    "win_rate",
    "standard_error",
    "n_wins",
    "n_wins_base",
    "n_draws",
    "n_total",
    "discrete_win_rate",
    "avg_length",
    "length_controlled_winrate",
    "lc_standard_error",
    "n_rejected",
    "single_score",
    "single_score_standard_error",
    "n_scored",
    "n_unscored",
]
# A model judged directly against an opponent (`evaluate.head_to_head`): `model`'s win rate against `opponent`
HEAD_TO_HEAD_COLUMNS = ["model", "opponent", "win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
                        "n_rejected"]
GLM_C = 100.0  # AlpacaEval's inverse L2 strength for its length-controlled GLM


def _preferences(preferences: Sequence[float | None]) -> tuple[np.ndarray, int]:
    """Valid preferences as an array and the count of missing (NaN/None) ones, which are rejected."""
    values = np.array([np.nan if p is None else float(p) for p in preferences], dtype=float)
    missing = np.isnan(values)
    kept = values[~missing]
    bad = kept[(kept < 1.0) | (kept > 2.0)]
    if bad.size:
        raise DataError(
            f"{bad.size} preferences lie outside [1, 2] (e.g. {bad[0]:g}); a preference must be in [1, 2] "
            "with 1 = reference better, 2 = model better, 1.5 = tie"
        )
    if missing.any():
        log.warning("rejected %d of %d preferences that are missing (failed or unparseable judgments)", missing.sum(), len(values))
    return kept, int(missing.sum())


def clustered_standard_error(values: Sequence[float], clusters: Sequence[Any] | None = None) -> float:
    """Standard error of mean(values) with items of one cluster (one prompt) correlated:
    sqrt(G/(G−1) · Σ_g (Σ_{i∈g} (v_i − v̄))²) / n over G clusters (the CR1 sandwich of a mean).
    Without clusters, or one item per cluster, it is std(ddof=1)/√n. NaN with fewer than two clusters."""
    v = np.asarray(values, dtype=float)
    if clusters is None:
        clusters = range(len(v))
    if len(clusters) != len(v):
        raise DataError(f"{len(v)} values but {len(clusters)} cluster labels; pass one label (the prompt) per value")
    groups = pd.Series(v - v.mean()).groupby(pd.Series(list(clusters)), sort=False).sum().to_numpy() if len(v) else v
    g = len(groups)
    if g < 2:
        return math.nan
    return float(math.sqrt(g / (g - 1) * float(np.sum(groups**2))) / len(v))


def win_rate(preferences: Sequence[float | None], lengths: Sequence[int] | None = None,
             clusters: Sequence[Any] | None = None) -> dict[str, float]:
    """AlpacaEval's head-to-head metrics of a model against the reference.

    `lengths` are the model's output lengths in characters (for `avg_length`); missing
    preferences are left out of every metric and counted in `n_rejected`. `clusters` (one
    label per preference, the prompt) cluster the standard error; None: items independent.
    """
    prefs, n_rejected = _preferences(preferences)
    kept = _kept(preferences, clusters)
    wins = prefs - 1.0
    n = len(wins)
    discrete = np.where(prefs == 1.5, 0.5, np.where(prefs > 1.5, 1.0, 0.0))
    return {
        "win_rate": float(wins.mean() * 100) if n else math.nan,
        "standard_error": clustered_standard_error(wins, kept) * 100 if n > 1 else math.nan,
        "n_wins": int((wins > 0.5).sum()),
        "n_wins_base": int((wins < 0.5).sum()),
        "n_draws": int((prefs == 1.5).sum()),
        "n_total": n,
        "discrete_win_rate": float(discrete.mean() * 100) if n else math.nan,
        "avg_length": float(np.mean(lengths)) if lengths is not None and len(lengths) else math.nan,
        "n_rejected": n_rejected,
    }


def _kept(values: Sequence[Any], clusters: Sequence[Any] | None) -> list[Any] | None:
    """The cluster labels of the values that are not missing (None/NaN)."""
    if clusters is None:
        return None
    if len(clusters) != len(values):
        raise DataError(f"{len(values)} values but {len(clusters)} cluster labels; pass one label (the prompt) per value")
    return [c for v, c in zip(values, clusters) if not (v is None or (isinstance(v, float) and math.isnan(v)))]


def length_controlled_win_rate(
    preferences: Sequence[float | None],
    model_lengths: Sequence[int],
    reference_lengths: Sequence[int],
    clusters: Sequence[Any] | None = None,
) -> dict[str, float]:
    """The win rate at zero length difference and its standard error (both in %).

    Fits P(model wins) = σ(b0 + b1·tanh(Δ/sd(Δ))) with Δ = model length − reference length
    to the soft labels preference − 1 by penalised Newton steps; LC = 100·σ(b0). The
    standard error is the delta method on a sandwich (robust) covariance of b0, which stays
    honest for soft labels; with `clusters` (the prompt of each item) its middle sums the
    score contributions per cluster first. Warns, as AlpacaEval does, when LC and raw differ wildly.
    """
    values = np.array([np.nan if p is None else float(p) for p in preferences], dtype=float)
    if not (len(values) == len(model_lengths) == len(reference_lengths)):
        raise DataError(
            f"{len(values)} preferences but {len(model_lengths)} model and {len(reference_lengths)} reference lengths; "
            "pass one length pair per preference"
        )
    keep = ~np.isnan(values)
    groups = None if clusters is None else _kept(values.tolist(), clusters)
    prefs, _ = _preferences(values[keep])
    y = prefs - 1.0
    delta = np.asarray(model_lengths, dtype=float)[keep] - np.asarray(reference_lengths, dtype=float)[keep]
    raw = float(y.mean() * 100) if len(y) else math.nan
    if len(y) < 2 or y.min() == y.max():
        # Every item has the same verdict: there is no length effect left to remove.
        return {"length_controlled_winrate": raw, "lc_standard_error": 0.0 if len(y) else math.nan}
    sd = delta.std(ddof=1)
    x = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    design = np.column_stack([np.ones_like(x), x])
    beta = _fit_soft_logistic(design, y, penalty=np.array([0.0, 1.0 / GLM_C]))
    p = _sigmoid(design @ beta)
    hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag([0.0, 1.0 / GLM_C])
    scores = design * (y - p)[:, None]
    if groups is not None:
        scores = pd.DataFrame(scores).groupby(pd.Series(groups), sort=False).sum().to_numpy()
    meat = scores.T @ scores
    bread = np.linalg.pinv(hessian)
    var_b0 = float((bread @ meat @ bread)[0, 0])
    p0 = float(_sigmoid(beta[0]))
    lc = p0 * 100
    lc_se = p0 * (1 - p0) * math.sqrt(max(var_b0, 0.0)) * 100
    if _is_extreme_change(raw, lc):
        log.warning(
            "Length controlled win rate is very different from the raw one: %.1f%% vs %.1f%%. "
            "This might be a sign of failure of the GLM.",
            lc,
            raw,
        )
    return {"length_controlled_winrate": lc, "lc_standard_error": lc_se}


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=float)))


def _fit_soft_logistic(design: np.ndarray, y: np.ndarray, penalty: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Minimise Σ cross-entropy(y, σ(Xβ)) + ½ Σ penalty·β² by Newton's method with step halving."""

    def objective(beta: np.ndarray) -> float:
        z = design @ beta
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * beta**2))

    beta = np.zeros(design.shape[1])
    current = objective(beta)
    for _ in range(max_iter):
        p = _sigmoid(design @ beta)
        grad = design.T @ (p - y) + penalty * beta
        hess = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-12 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            candidate = beta - scale * step
            value = objective(candidate)
            if value <= current:
                break
            scale /= 2
        beta, previous, current = candidate, current, value
        if abs(previous - current) < 1e-12 * max(1.0, abs(current)) and np.max(np.abs(scale * step)) < 1e-10:
            break
    return beta


def _is_extreme_change(raw: float, lc: float, abs_diff: float = 10.0, rel_diff: float = 4.0) -> bool:
    """AlpacaEval's test for an LC win rate implausibly far from the raw one."""
    too_small = lc < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = lc > max(raw + (100 - raw) / rel_diff, raw + abs_diff)
    return bool(too_small or too_large)


def single_score(scores: Sequence[float], clusters: Sequence[Any] | None = None) -> dict[str, float]:
    """MT-Bench SingleScore: the mean of 1–10 grades; −1 (unparseable) is excluded and counted.
    `clusters` (the prompt of each grade) cluster the standard error."""
    values = np.array(scores, dtype=float)
    unscored = (values == -1) | np.isnan(values)
    kept = values[~unscored]
    if clusters is not None and len(clusters) != len(values):
        raise DataError(f"{len(values)} single scores but {len(clusters)} cluster labels; pass one label per score")
    groups = None if clusters is None else [c for c, u in zip(clusters, unscored) if not u]
    bad = kept[(kept < 1) | (kept > 10)]
    if bad.size:
        raise DataError(f"{bad.size} single scores lie outside 1–10 (e.g. {bad[0]:g}); use −1 for an unparseable grade")
    if unscored.any():
        log.warning("excluded %d of %d single scores that could not be parsed", unscored.sum(), len(values))
    n = len(kept)
    return {
        "single_score": float(kept.mean()) if n else math.nan,
        "single_score_standard_error": clustered_standard_error(kept, groups) if n > 1 else math.nan,
        "n_scored": n,
        "n_unscored": int(unscored.sum()),
    }


def leaderboard_row(annotations: Sequence[dict], single_scores: Sequence[float] | None = None) -> dict[str, float]:
    """One leaderboard row from a model's AlpacaEval annotations (output_1 = reference, output_2 = model),
    standard errors clustered by instruction (several samples of one prompt are one cluster)."""
    prefs = [row.get("preference") for row in annotations]
    prompts = [row["instruction"] for row in annotations]
    model_lengths = [len(row["output_2"]) for row in annotations]
    row = win_rate(prefs, model_lengths, clusters=prompts)
    row.update(length_controlled_win_rate(prefs, model_lengths, [len(r["output_1"]) for r in annotations], clusters=prompts))
    row.update(single_score(single_scores if single_scores is not None else [],
                            clusters=prompts if single_scores is not None else None))
    return row


def leaderboard(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Model name → row, as AlpacaEval's leaderboard table (index = model), best win rate first."""
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame = frame.reindex(columns=LEADERBOARD_COLUMNS)
    return frame.sort_values("win_rate", ascending=False, kind="stable")


def write_leaderboard(frame: pd.DataFrame, uri: str) -> str:
    """Write `leaderboard.csv` as AlpacaEval does (model names as the unnamed index column)."""
    return io.write_text(uri, frame.to_csv(index=True))


def read_leaderboard(uri: str) -> pd.DataFrame:
    """A `leaderboard.csv` written by `write_leaderboard`, model names as the index."""
    from io import StringIO

    frame = pd.read_csv(StringIO(io.read_text(uri)), index_col=0)
    frame.index = frame.index.astype(str)
    return frame


def table_records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    """A table's rows, its index first when the index is named, missing numbers as None (artifacts, results, CLI)."""
    if frame is None:
        return []
    if frame.index.name is not None:
        frame = frame.reset_index()
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def leaderboard_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The leaderboard as rows with the model name first."""
    return table_records(frame.set_axis(frame.index.astype(str)).rename_axis("model"))


def write_annotations(annotations: Sequence[dict], uri: str) -> str:
    """Write AlpacaEval `annotations.json` (NaN preferences written as null)."""
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in annotations]
    return io.write_json(uri, clean)
