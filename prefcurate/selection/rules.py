"""Selection rules: which scored pairs to train on.

A registry: `RULES` maps a rule's name to its `Rule` — the function, its kind (a middle
band, the top k by a score, or a flag set at scoring time), the score columns and the
`SelectionConfig` fields it reads. The config's choices, the comparison rules of the
agreement report and the trainable baselines all come from it, so adding a rule is one
`@rule(...)` function here and its test.

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
- `reward-model`: the k pairs with the largest chosen − rejected margin of an external reward model
  (`selection.reward_model`), the paper's reward-model baseline.
- `random`: k pairs drawn with a seed — the equal-size baseline.
- `cuts`: absolute cuts instead of percentiles (every score of `selection.cuts` above its bound,
  default IRM > 0); `lossdiff-irm-cuts`: the LossDiff-IRM band and the cuts.

Any rule can be resized to a given size k (`select(..., size=k)`): top-k rules keep their top k,
band and flag rules their k most central pairs (`central_k`), cut rules the k furthest above
their cuts (`clearest_k`) — how baselines and the agreement report compare rules at equal size.

Band edges are strict (`q_lo < x < q_hi`, `prefcurate.selection.band`), as for TIF. Top-k ties break by pair_id, and `random` draws from the pool sorted by pair_id, so
the same scores give the same selection whatever their row order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
import pandas as pd
from scipy import stats

from prefcurate.errors import SelectionError
from prefcurate.selection.band import band_mask
from prefcurate.selection.selection import Selection

if TYPE_CHECKING:
    from prefcurate.config import SelectionConfig

RuleKind = Literal["band", "top-k", "flag", "cut"]
SIZE_FIELDS = ("size", "fraction", "band")  # a top-k rule's default size is the lossdiff-irm share


@dataclass(frozen=True)
class Rule:
    """One selection rule and what it depends on."""

    name: str
    kind: RuleKind
    columns: tuple[str, ...]  # score columns it reads
    reads: tuple[str, ...]  # SelectionConfig fields it reads (part of its stage's cache key)
    apply: Callable[..., Selection]  # (scores, config, k, size_params) for top-k; (scores, config) otherwise
    paper_overlap: str | None = None  # the paper's overlap with TIF (DESIGN §1), shown beside ours


RULES: dict[str, Rule] = {}


def rule(name: str, kind: RuleKind, columns: tuple[str, ...], reads: tuple[str, ...] = (),
         paper_overlap: str | None = None) -> Callable[[Callable[..., Selection]], Callable[..., Selection]]:
    """Register the decorated function as the rule `name`."""
    def register(fn: Callable[..., Selection]) -> Callable[..., Selection]:
        if name in RULES:
            raise ValueError(f"selection rule {name!r} is registered twice")
        extra = SIZE_FIELDS if kind == "top-k" else ()
        RULES[name] = Rule(name, kind, columns, tuple(dict.fromkeys((*reads, *extra))), fn, paper_overlap)
        return fn

    return register


def select(scores: pd.DataFrame, config: SelectionConfig, size: int | None = None) -> Selection:
    """Apply `config.rule` to a scores frame.

    `size` fixes the kept count: of the top-k rules (if-top, rating-margin, reward-gap,
    random), overriding `config.size` and `config.fraction`, and of the band and flag rules,
    which then keep their `size` most central pairs (`central_k`). Used to compare a baseline
    with another selection at the same size.
    """
    _check_pool(scores)
    chosen = RULES.get(config.rule)
    if chosen is None:
        raise SelectionError(f"unknown selection rule '{config.rule}'; choose one of {sorted(RULES)}")
    if chosen.kind == "top-k":
        k, size_params = _resolve_size(scores, config, size)
        return chosen.apply(scores, config, k, size_params)
    if size is not None:
        return clearest_k(scores, chosen, config, size) if chosen.kind == "cut" else central_k(scores, chosen, config, size)
    return chosen.apply(scores, config)


# The band a flag rule was cut with at scoring time, for resizing it: TIF's IF band's middle is
# the 50th percentile for the default (25, 75) and any symmetric band.
FLAG_BANDS = {"tif": (("if",), 50.0)}


def _distance_from_middle(scores: pd.DataFrame, rule: str, columns: tuple[str, ...], middle: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each pair's largest distance, over `columns`, of its percentile rank from the `middle` percentile."""
    recorded = {column: _column(scores, column, rule) for column in columns}
    ranks = [100.0 * (stats.rankdata(values) - 0.5) / len(scores) for values in recorded.values()]
    return np.max([np.abs(r - middle) for r in ranks], axis=0), recorded


def _check_k(rule: str, k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise SelectionError(f"rule '{rule}' asked to keep {k} of {n} pairs; choose a size between 1 and {n}")


def central_k(scores: pd.DataFrame, rule: Rule, config: SelectionConfig, k: int) -> Selection:
    """A band (or flag) rule resized to exactly k pairs: the k whose scores sit nearest the middle
    of the band — by percentile rank, the largest distance over the rule's columns, ties by pair_id.
    Widening or narrowing a band symmetrically keeps pairs in this order, so at the band's own
    size this is (up to ties at its edges) the band itself."""
    _check_k(rule.name, k, len(scores))
    columns, middle = FLAG_BANDS.get(rule.name, (rule.columns, (config.band[0] + config.band[1]) / 2))
    distance, recorded = _distance_from_middle(scores, rule.name, columns, middle)
    ids = scores["pair_id"].astype(str).to_numpy()
    rows = np.sort(np.lexsort((ids, distance))[:k])  # kept in pool order, as the band keeps them
    params = {"size": k, "size_from": "resized to equal size", "centre_percentile": middle, "columns": list(columns),
              "max_distance": float(distance[rows].max())}
    return _make(scores, rule.name, params, rows, recorded)


# --- rules -------------------------------------------------------------------------------


def _band_rule(name: str, columns: tuple[str, ...], paper_overlap: str) -> None:
    @rule(name, "band", columns, reads=("band",), paper_overlap=paper_overlap)
    def apply(scores: pd.DataFrame, config: SelectionConfig) -> Selection:
        return _band_selection(scores, name, columns, config.band)


_band_rule("lossdiff-irm", ("lossdiff", "irm"), "0.73-0.78")  # the paper's rule and the default
_band_rule("lossdiff-band", ("lossdiff",), "0.66-0.70")
_band_rule("irm-band", ("irm",), "0.60-0.70")


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


DEFAULT_CUTS = {"irm": 0.0}


def _cuts(config: SelectionConfig) -> dict[str, float]:
    return dict(config.cuts or DEFAULT_CUTS)


def _cut_mask(scores: pd.DataFrame, rule: str, cuts: dict[str, float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    recorded = {column: _column(scores, column, rule) for column in cuts}
    keep = np.ones(len(scores), dtype=bool)
    for column, bound in cuts.items():
        keep &= recorded[column] > bound
    return keep, recorded


@rule("cuts", "cut", (), reads=("cuts",))
def _cut_rule(scores: pd.DataFrame, config: SelectionConfig) -> Selection:
    """Absolute cuts instead of percentiles: keep a pair iff every score in `selection.cuts` is above its
    bound (default IRM > 0: the warm-up model already prefers the chosen answer). A percentile band
    removes a fixed share whatever the scores; a cut removes exactly the pairs on the wrong side."""
    cuts = _cuts(config)
    keep, recorded = _cut_mask(scores, "cuts", cuts)
    if not keep.any():
        raise SelectionError(f"rule 'cuts' {cuts} keeps no pair of {len(scores)}; lower the bounds in selection.cuts")
    return _make(scores, "cuts", {"cuts": cuts, "inclusive": False}, np.flatnonzero(keep), recorded)


@rule("lossdiff-irm-cuts", "cut", ("lossdiff", "irm"), reads=("band", "cuts"))
def _band_and_cuts(scores: pd.DataFrame, config: SelectionConfig) -> Selection:
    """The paper's LossDiff-IRM band, and the absolute cuts on top (default IRM > 0)."""
    band = _band_selection(scores, "lossdiff-irm-cuts", ("lossdiff", "irm"), config.band)
    cuts = _cuts(config)
    keep, recorded = _cut_mask(scores, "lossdiff-irm-cuts", cuts)
    keep &= scores["pair_id"].astype(str).isin(set(band.kept_ids)).to_numpy()
    if not keep.any():
        raise SelectionError(f"rule 'lossdiff-irm-cuts' (band {list(config.band)}, cuts {cuts}) keeps no pair; "
                             "widen selection.band or lower selection.cuts")
    recorded = {"lossdiff": _column(scores, "lossdiff", "lossdiff-irm-cuts"), **recorded,
                "irm": _column(scores, "irm", "lossdiff-irm-cuts")}
    return _make(scores, "lossdiff-irm-cuts", {**band.params, "cuts": cuts}, np.flatnonzero(keep), recorded)


def clearest_k(scores: pd.DataFrame, rule: Rule, config: SelectionConfig, k: int) -> Selection:
    """A cut rule resized to exactly k pairs. Cuts alone: the k furthest above their cuts (the smallest
    margin over the cut columns, each in units of its standard deviation). A band and cuts: the pairs
    inside the cuts first, each group most central in the band first. Ties by pair_id."""
    _check_k(rule.name, k, len(scores))
    cuts = _cuts(config)
    inside, recorded = _cut_mask(scores, rule.name, cuts)
    params = {"size": k, "size_from": "resized to equal size", "cuts": cuts}
    if not rule.columns:
        margin = np.min([(recorded[c] - bound) / (np.std(recorded[c]) or 1.0) for c, bound in cuts.items()], axis=0)
        return _top_k(scores, rule.name, "cut_margin", margin, k, descending=True,
                      params={**params, "order": "smallest margin above the cuts, descending"})
    distance, banded = _distance_from_middle(scores, rule.name, rule.columns, (config.band[0] + config.band[1]) / 2)
    ids = scores["pair_id"].astype(str).to_numpy()
    rows = np.sort(np.lexsort((ids, distance, ~inside))[:k])
    return _make(scores, rule.name, {**params, "order": "inside the cuts, then most central"}, rows, {**banded, **recorded})


@rule("tif", "flag", ("tif",))
def _tif(scores: pd.DataFrame, config: SelectionConfig) -> Selection:
    """The pairs the scoring stage marked inside the IF band (`scoring.tif_band`)."""
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


@rule("if-top", "top-k", ("if",))
def _if_top(scores: pd.DataFrame, config: SelectionConfig, k: int, size_params: dict[str, Any]) -> Selection:
    """Classical influence selection: the k pairs of highest IF."""
    return _top_k(scores, "if-top", "if", _column(scores, "if", "if-top"), k, descending=True, params=size_params)


def _top_k(
    scores: pd.DataFrame, rule: str, column: str, values: np.ndarray, k: int, *, descending: bool, params: dict[str, Any]
) -> Selection:
    """The first k pairs by `values` (named `column` in the files); ties break by ascending pair_id."""
    ids = scores["pair_id"].astype(str).to_numpy()
    order = np.lexsort((ids, -values if descending else values))[:k]  # last key is the primary one
    params = {**params, "order": "descending" if descending else "ascending", "tie_break": "pair_id ascending",
              "threshold": float(values[order[-1]])}
    return _make(scores, rule, params, order, {column: values})


@rule("rating-margin", "top-k", ("score_chosen", "score_rejected"))
def _rating_margin(scores: pd.DataFrame, config: SelectionConfig, k: int, size_params: dict[str, Any]) -> Selection:
    """The k pairs with the largest dataset rating margin (score_chosen − score_rejected)."""
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


@rule("reward-gap", "top-k", ("irm",))
def _reward_gap(scores: pd.DataFrame, config: SelectionConfig, k: int, size_params: dict[str, Any]) -> Selection:
    """Smallest signed implicit-reward gaps first (arXiv 2508.04149).

    That paper (and its released `data_select.py`) ranks pairs by
    Δr = β·[log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)] under a DPO-trained
    policy, ascending and signed (pairs the policy already mis-ranks come first), and keeps
    the first share (10 % in the paper). Here the DPO policy is the warm-up model θ, so
    Δr is exactly the `irm` column.
    """
    params = {**size_params, "score": "irm = beta * implicit reward margin of the warm-up model (signed)"}
    return _top_k(scores, "reward-gap", "irm", _column(scores, "irm", "reward-gap"), k, descending=False, params=params)


@rule("reward-model", "top-k", ("reward_margin",))
def _reward_model(scores: pd.DataFrame, config: SelectionConfig, k: int, size_params: dict[str, Any]) -> Selection:
    """The k pairs an external reward model separates most (largest reward_chosen − reward_rejected; the
    `reward-scores` stage computes them with `selection.reward_model`): the paper's reward-model baseline.
    The reward model never sees this SFT model, so the rule is the same for every model."""
    if "reward_margin" not in scores.columns:
        raise SelectionError("rule 'reward-model' needs an external reward model's scores; set selection.reward_model "
                             "to a sequence-classification checkpoint or pick another rule")
    params = {**size_params, "score": "reward_chosen - reward_rejected of selection.reward_model"}
    margin = _column(scores, "reward_margin", "reward-model")
    return _top_k(scores, "reward-model", "reward_margin", margin, k, descending=True, params=params)


@rule("random", "top-k", (), reads=("seed",))
def _random(scores: pd.DataFrame, config: SelectionConfig, k: int, size_params: dict[str, Any]) -> Selection:
    """k pairs drawn with `selection.seed` from the pool sorted by pair_id: the equal-size baseline."""
    ids = np.sort(scores["pair_id"].to_numpy().astype(str))
    drawn = set(np.random.default_rng(config.seed).choice(ids, size=k, replace=False).tolist())
    keep = scores["pair_id"].astype(str).isin(drawn).to_numpy()
    params = {**size_params, "seed": config.seed, "draw": "numpy default_rng over pair_ids sorted"}
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
        reference = _band_selection(scores, "lossdiff-irm", RULES["lossdiff-irm"].columns, config.band)
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
