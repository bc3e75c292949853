"""Selection rules: which scored pairs to train on.

Every rule reads columns of the scores frame (DESIGN §2) and returns a `Selection` that
records the rule, every parameter it used (bands *and* the score thresholds they resolved
to) and the kept pair ids, so a selection can be audited and reproduced from its files.

Rules (DESIGN §1):
- `lossdiff-irm`: keep a pair iff LossDiff and IRM both lie strictly inside their middle
  percentile band — the paper's rule and the default.
- `lossdiff-band`, `irm-band`: the same band on one score alone.
- `tif`: the pairs the scoring stage marked inside the IF band (the `tif` column).
- `if-top`: classical influence selection, the k pairs of highest IF.
- `rating-margin`: the k pairs with the largest dataset rating margin
  (`score_chosen − score_rejected`, e.g. UltraFeedback's GPT-4 ratings).
- `reward-gap`: the k pairs with the smallest signed DPO implicit-reward gap
  (arXiv 2508.04149; see `_reward_gap`).
- `random`: k pairs drawn with a seed — the equal-size baseline.

Band edges are strict (`q_lo < x < q_hi`, percentiles with linear interpolation), as for
TIF. Top-k ties break by pair_id, and `random` draws from the pool sorted by pair_id, so
the same scores give the same selection whatever their row order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from prefcurate import io
from prefcurate.config import SelectionConfig
from prefcurate.errors import SelectionError

SELECTION_PARQUET = "selection.parquet"
SELECTION_JSON = "selection.json"


class Selection(BaseModel):
    """The outcome of one rule over one scored pool."""

    rule: str = Field(description="The rule that produced this selection.")
    params: dict[str, Any] = Field(description="Every parameter the rule used, including resolved thresholds.")
    n_pool: int = Field(description="Pairs in the scored pool.")
    n_kept: int = Field(description="Pairs kept.")
    kept_fraction: float = Field(description="n_kept / n_pool.")
    score_columns: list[str] = Field(description="Score columns the rule read (stored beside the kept ids).")
    kept_ids: list[str] = Field(exclude=True, description="pair_id of every kept pair, in rule order.")
    kept_scores: dict[str, list[float]] = Field(
        default_factory=dict, exclude=True, description="Values of `score_columns` for the kept pairs, aligned to kept_ids."
    )

    def frame(self) -> pd.DataFrame:
        """Kept pair ids with the score values the rule used."""
        return pd.DataFrame({"pair_id": self.kept_ids, **self.kept_scores})


def select(scores: pd.DataFrame, config: SelectionConfig, size: int | None = None) -> Selection:
    """Apply `config.rule` to a scores frame.

    `size` fixes the kept count of the top-k rules (if-top, rating-margin, reward-gap,
    random), overriding `config.size` and `config.fraction`; used to give a baseline the
    same size as another selection.
    """
    _check_pool(scores)
    rule = config.rule
    if rule in _BAND_RULES:
        return _band_selection(scores, rule, _BAND_RULES[rule], config.band)
    if rule == "tif":
        return _tif(scores)
    k, size_params = _resolve_size(scores, config, size)
    if rule == "if-top":
        return _top_k(scores, rule, "if", _column(scores, "if", rule), k, descending=True, params=size_params)
    if rule == "reward-gap":
        return _reward_gap(scores, k, size_params)
    if rule == "rating-margin":
        return _rating_margin(scores, k, size_params)
    if rule == "random":
        return _random(scores, k, config.seed, size_params)
    raise SelectionError(f"unknown selection rule '{rule}'; choose one of {sorted(_ALL_RULES)}")


def write_selection(selection: Selection, dir_uri: str) -> str:
    """Write `selection.parquet` (kept ids + scores used) then `selection.json` (rule, params, counts); returns dir_uri."""
    io.write_parquet(io.join(dir_uri, SELECTION_PARQUET), selection.frame())
    io.write_json(io.join(dir_uri, SELECTION_JSON), selection.model_dump(mode="json"))
    return dir_uri


def read_selection(dir_uri: str) -> Selection:
    """Read a selection written by `write_selection`."""
    meta = io.read_json(io.join(dir_uri, SELECTION_JSON))
    frame = io.read_parquet(io.join(dir_uri, SELECTION_PARQUET))
    if len(frame) != meta.get("n_kept"):
        raise SelectionError(
            f"{dir_uri}: selection.parquet has {len(frame)} rows but selection.json says n_kept={meta.get('n_kept')}; "
            "the selection is incomplete — rerun the select stage"
        )
    return Selection(
        **meta,
        kept_ids=frame["pair_id"].astype(str).tolist(),
        kept_scores={c: frame[c].astype(float).tolist() for c in meta["score_columns"]},
    )


# --- rules -------------------------------------------------------------------------------

_BAND_RULES = {"lossdiff-irm": ("lossdiff", "irm"), "lossdiff-band": ("lossdiff",), "irm-band": ("irm",)}
_ALL_RULES = set(_BAND_RULES) | {"tif", "if-top", "reward-gap", "rating-margin", "random"}


def band_mask(values: np.ndarray, band: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """Mask of values strictly inside the (lo, hi) percentile band, and the two thresholds."""
    q_lo, q_hi = np.percentile(values, band)
    return (values > q_lo) & (values < q_hi), float(q_lo), float(q_hi)


def _band_selection(scores: pd.DataFrame, rule: str, columns: tuple[str, ...], band: tuple[float, float]) -> Selection:
    keep = np.ones(len(scores), dtype=bool)
    thresholds: dict[str, list[float]] = {}
    recorded: dict[str, np.ndarray] = {}
    for column in columns:
        values = recorded[column] = _column(scores, column, rule)
        mask, q_lo, q_hi = band_mask(values, band)
        keep &= mask
        thresholds[column] = [q_lo, q_hi]
    params = {"band": list(band), "thresholds": thresholds, "inclusive": False}
    if not keep.any():
        raise SelectionError(
            f"rule '{rule}' with band {list(band)} keeps no pair of {len(scores)} "
            f"(thresholds {thresholds}); widen selection.band or check the scores for constant values"
        )
    return _make(scores, rule, params, np.flatnonzero(keep), recorded)


def _tif(scores: pd.DataFrame) -> Selection:
    if "tif" not in scores.columns or scores["tif"].isna().all():
        raise SelectionError(
            "rule 'tif' needs the `tif` column, which these scores lack; rescore with scoring.compute_if=true "
            "or pick a rule that does not need influence (lossdiff-irm)"
        )
    if scores["tif"].isna().any():
        raise SelectionError(f"rule 'tif': `tif` is missing for pairs {_ids(scores, scores['tif'].isna())}; rescore the pool")
    keep = scores["tif"].astype(bool).to_numpy()
    if not keep.any():
        raise SelectionError(f"rule 'tif' keeps no pair of {len(scores)}: no pair is inside the IF band; widen scoring.tif_band")
    params = {"column": "tif", "band": "scoring.tif_band (IF percentiles, applied when the pool was scored)"}
    recorded = {"if": _column(scores, "if", "tif")} if "if" in scores.columns else {}
    return _make(scores, "tif", params, np.flatnonzero(keep), recorded)


def _top_k(
    scores: pd.DataFrame, rule: str, column: str, values: np.ndarray, k: int, *, descending: bool, params: dict[str, Any]
) -> Selection:
    """The first k pairs by `values` (named `column` in the files); ties break by ascending pair_id."""
    ids = scores["pair_id"].astype(str).to_numpy()
    order = np.lexsort((ids, -values if descending else values))[:k]  # last key is the primary one
    params = {**params, "order": "descending" if descending else "ascending", "tie_break": "pair_id ascending",
              "threshold": float(values[order[-1]])}
    return _make(scores, rule, params, order, {column: values})


def _reward_gap(scores: pd.DataFrame, k: int, size_params: dict[str, Any]) -> Selection:
    """Smallest signed implicit-reward gaps first (arXiv 2508.04149).

    That paper (and its released `data_select.py`) ranks pairs by
    Δr = β·[log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)] under a DPO-trained
    policy, ascending and signed (pairs the policy already mis-ranks come first), and keeps
    the first share (10 % in the paper). Here the DPO policy is the warm-up model θ, so
    Δr is exactly the `irm` column.
    """
    params = {**size_params, "score": "irm = beta * implicit reward margin of the warm-up model (signed)"}
    return _top_k(scores, "reward-gap", "irm", _column(scores, "irm", "reward-gap"), k, descending=False, params=params)


def _rating_margin(scores: pd.DataFrame, k: int, size_params: dict[str, Any]) -> Selection:
    missing = [c for c in ("score_chosen", "score_rejected") if c not in scores.columns]
    if missing:
        raise SelectionError(
            f"rule 'rating-margin' needs the dataset's ratings but the scores lack {missing}; "
            "use a pool with score_chosen/score_rejected or pick another rule"
        )
    chosen = pd.to_numeric(scores["score_chosen"], errors="coerce").to_numpy(dtype=float)
    rejected = pd.to_numeric(scores["score_rejected"], errors="coerce").to_numpy(dtype=float)
    margin = chosen - rejected
    bad = ~np.isfinite(margin)
    if bad.any():
        raise SelectionError(
            f"rule 'rating-margin': {int(bad.sum())} of {len(scores)} pairs have no score_chosen/score_rejected "
            f"rating (e.g. {_ids(scores, bad)}); rate every pair or pick another rule"
        )
    params = {**size_params, "score": "score_chosen - score_rejected"}
    return _top_k(scores, "rating-margin", "rating_margin", margin, k, descending=True, params=params)


def _random(scores: pd.DataFrame, k: int, seed: int, size_params: dict[str, Any]) -> Selection:
    ids = np.sort(scores["pair_id"].to_numpy().astype(str))
    drawn = set(np.random.default_rng(seed).choice(ids, size=k, replace=False).tolist())
    keep = scores["pair_id"].astype(str).isin(drawn).to_numpy()
    params = {**size_params, "seed": seed, "draw": "numpy default_rng over pair_ids sorted"}
    return _make(scores, "random", params, np.flatnonzero(keep), {})


# --- helpers -----------------------------------------------------------------------------


def _resolve_size(scores: pd.DataFrame, config: SelectionConfig, size: int | None) -> tuple[int, dict[str, Any]]:
    """The kept count of a top-k rule: `size`, else config.size, else config.fraction, else the lossdiff-irm share."""
    n = len(scores)
    if size is not None:
        k, params = int(size), {"size": int(size), "size_from": "argument"}
    elif config.size is not None:
        k, params = config.size, {"size": config.size, "size_from": "selection.size"}
    elif config.fraction is not None:
        k = int(config.fraction * n + 0.5)  # round half up
        params = {"size": k, "fraction": config.fraction, "size_from": "selection.fraction"}
    else:
        reference = _band_selection(scores, "lossdiff-irm", _BAND_RULES["lossdiff-irm"], config.band)
        k = reference.n_kept
        params = {"size": k, "size_from": f"lossdiff-irm share with band {list(config.band)}"}
    if not 1 <= k <= n:
        raise SelectionError(f"rule '{config.rule}' asked to keep {k} of {n} pairs; choose a size between 1 and {n}")
    return k, params


def _check_pool(scores: pd.DataFrame) -> None:
    if "pair_id" not in scores.columns:
        raise SelectionError("scores frame has no pair_id column; pass the frame written by the scoring stage")
    if len(scores) == 0:
        raise SelectionError("scores frame is empty; nothing to select — check the scoring stage's input pool")
    dup = scores["pair_id"].duplicated()
    if dup.any():
        raise SelectionError(f"scores frame has duplicate pair_id {_ids(scores, dup)}; deduplicate the pool before scoring")


def _column(scores: pd.DataFrame, column: str, rule: str) -> np.ndarray:
    if column not in scores.columns or scores[column].isna().all():
        hint = "rescore with scoring.compute_if=true" if column == "if" else "rescore the pool"
        raise SelectionError(f"rule '{rule}' needs the `{column}` score, which these scores lack; {hint} or pick another rule")
    values = pd.to_numeric(scores[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        raise SelectionError(
            f"rule '{rule}': `{column}` is not finite for {int(bad.sum())} pairs (e.g. {_ids(scores, bad)}); "
            "inspect or drop them and rescore"
        )
    return values


def _ids(scores: pd.DataFrame, mask: Any, limit: int = 5) -> list[str]:
    return scores["pair_id"].astype(str)[np.asarray(mask)].head(limit).tolist()


def _make(
    scores: pd.DataFrame, rule: str, params: dict[str, Any], rows: np.ndarray, recorded: dict[str, np.ndarray]
) -> Selection:
    """A Selection of the pool rows `rows` (in rank order for top-k rules, pool order otherwise)."""
    n_pool, n_kept = len(scores), len(rows)
    return Selection(
        rule=rule,
        params=params,
        n_pool=n_pool,
        n_kept=n_kept,
        kept_fraction=n_kept / n_pool,
        score_columns=list(recorded),
        kept_ids=scores["pair_id"].astype(str).to_numpy()[rows].tolist(),
        kept_scores={c: values[rows].astype(float).tolist() for c, values in recorded.items()},
    )
