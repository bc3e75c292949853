"""Selection rules on synthetic score frames whose kept sets are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prefcurate.config import SelectionConfig
from prefcurate.errors import SelectionError
from prefcurate.selection.rules import select
from prefcurate.selection.selection import read_selection, write_selection


def frame(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], **columns})


def cfg(rule: str, **kw) -> SelectionConfig:
    return SelectionConfig(rule=rule, **kw)


# --- band rules ----------------------------------------------------------------------------

def test_lossdiff_irm_keeps_pairs_inside_both_bands():
    # 0..9 with band (10, 90): thresholds 0.9 and 8.1, so values 1..8 are inside.
    # lossdiff keeps p1..p8; irm (a permutation) keeps every pair except p1 (0) and p2 (9).
    scores = frame(lossdiff=np.arange(10.0), irm=[5.0, 0.0, 9.0, 3.0, 4.0, 1.0, 6.0, 7.0, 8.0, 2.0])
    sel = select(scores, cfg("lossdiff-irm", band=(10.0, 90.0)))
    assert sel.kept_ids == ["p3", "p4", "p5", "p6", "p7", "p8"]
    assert (sel.n_pool, sel.n_kept, sel.kept_fraction) == (10, 6, 0.6)
    assert sel.params["band"] == [10.0, 90.0]
    assert sel.params["thresholds"]["lossdiff"] == pytest.approx([0.9, 8.1])
    assert sel.params["thresholds"]["irm"] == pytest.approx([0.9, 8.1])
    assert sel.kept_scores["irm"] == [3.0, 4.0, 1.0, 6.0, 7.0, 8.0]


def test_band_edges_are_strict():
    # 1..5 with band (25, 75): q25 = 2 and q75 = 4 exactly; pairs at 2 and 4 sit on the edges and are dropped.
    sel = select(frame(lossdiff=[1.0, 2.0, 3.0, 4.0, 5.0]), cfg("lossdiff-band", band=(25.0, 75.0)))
    assert sel.kept_ids == ["p2"]


def test_single_score_bands_use_their_own_column():
    scores = frame(lossdiff=np.arange(10.0), irm=np.arange(10.0)[::-1].copy())
    assert select(scores, cfg("irm-band", band=(10.0, 90.0))).kept_ids == [f"p{i}" for i in range(1, 9)]
    irm_high = frame(lossdiff=np.zeros(5) + np.arange(5), irm=[10.0, 20.0, 30.0, 40.0, 50.0])
    assert select(irm_high, cfg("irm-band", band=(25.0, 75.0))).kept_ids == ["p2"]


def test_band_that_keeps_nothing_is_an_error():
    scores = frame(lossdiff=np.ones(8), irm=np.arange(8.0))
    with pytest.raises(SelectionError, match="keeps no pair"):
        select(scores, cfg("lossdiff-irm"))


def test_band_selection_ignores_row_order():
    rng = np.random.default_rng(1)
    scores = frame(lossdiff=rng.normal(size=200), irm=rng.normal(size=200))
    a = select(scores, cfg("lossdiff-irm"))
    b = select(scores.sample(frac=1.0, random_state=3), cfg("lossdiff-irm"))
    assert set(a.kept_ids) == set(b.kept_ids) and a.n_kept == b.n_kept


def test_non_finite_score_names_the_pairs():
    scores = frame(lossdiff=[0.1, np.nan, 0.3, np.inf], irm=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(SelectionError, match=r"not finite for 2 pairs.*p1.*p3"):
        select(scores, cfg("lossdiff-irm"))


# --- tif ---------------------------------------------------------------------------------

def test_tif_rule_keeps_the_tif_column():
    scores = frame(**{"if": [0.5, 0.1, 0.3, 0.9], "tif": [False, True, True, False]})
    sel = select(scores, cfg("tif"))
    assert sel.kept_ids == ["p1", "p2"] and sel.kept_scores["if"] == [0.1, 0.3]


def test_tif_rule_without_influence_says_how_to_get_it():
    scores = frame(lossdiff=[0.1, 0.2], irm=[0.1, 0.2])
    with pytest.raises(SelectionError, match="compute_if=true"):
        select(scores, cfg("tif"))
    with pytest.raises(SelectionError, match="compute_if=true"):
        select(scores, cfg("if-top", size=1))


# --- top-k rules -------------------------------------------------------------------------

def test_if_top_breaks_ties_by_pair_id_whatever_the_row_order():
    scores = pd.DataFrame({"pair_id": ["e", "c", "d", "a", "b"], "if": [5.0, 5.0, 1.0, 5.0, 3.0]})
    sel = select(scores, cfg("if-top"), size=2)
    assert sel.kept_ids == ["a", "c"]
    assert select(scores.iloc[::-1], cfg("if-top"), size=2).kept_ids == ["a", "c"]
    assert sel.params["threshold"] == 5.0 and sel.params["size_from"] == "argument"


def test_reward_gap_keeps_smallest_signed_gaps():
    # Signed, not absolute: the mis-ranked pair (-2.0) is the hardest and comes first.
    scores = frame(irm=[-2.0, 0.1, -0.5, 3.0, 0.1])
    sel = select(scores, cfg("reward-gap", size=3))
    assert sel.kept_ids == ["p0", "p2", "p1"]
    assert sel.params["order"] == "ascending"


def test_rating_margin_keeps_largest_margins():
    scores = frame(score_chosen=[9.0, 7.0, 8.0, 5.0], score_rejected=[1.0, 6.0, 2.0, 4.5])
    sel = select(scores, cfg("rating-margin", fraction=0.5))
    assert sel.kept_ids == ["p0", "p2"]
    assert sel.kept_scores == {"rating_margin": [8.0, 6.0]}
    assert sel.params["fraction"] == 0.5 and sel.params["size"] == 2


def test_rating_margin_without_ratings_is_a_clear_error():
    scores = frame(score_chosen=[9.0, None, 8.0], score_rejected=[1.0, 2.0, None])
    with pytest.raises(SelectionError, match=r"2 of 3 pairs have no score_chosen/score_rejected.*p1.*p2"):
        select(scores, cfg("rating-margin", size=1))
    with pytest.raises(SelectionError, match="lack"):
        select(frame(irm=[1.0, 2.0]), cfg("rating-margin", size=1))


def test_reward_model_keeps_largest_reward_margins_and_needs_a_reward_model():
    scores = frame(reward_margin=[0.5, -1.0, 2.5, 0.5, 1.0], irm=[0.0] * 5)
    rm = {"reward_model": {"uri": "some/rm"}}
    sel = select(scores, cfg("reward-model", size=3, **rm))
    assert sel.kept_ids == ["p2", "p4", "p0"]  # ties (p0, p3 at 0.5) break by pair_id
    assert sel.kept_scores == {"reward_margin": [2.5, 1.0, 0.5]}
    with pytest.raises(SelectionError, match="set selection.reward_model"):
        select(frame(irm=[1.0, 2.0]), cfg("reward-model", size=1, **rm))
    with pytest.raises(ValueError, match="needs selection.reward_model"):
        cfg("reward-model")
    with pytest.raises(SelectionError, match="not finite for 1 pairs"):
        select(frame(reward_margin=[1.0, float("nan")]), cfg("reward-model", size=1, **rm))


def test_top_k_default_size_is_the_lossdiff_irm_share():
    rng = np.random.default_rng(0)
    scores = frame(lossdiff=rng.normal(size=300), irm=rng.normal(size=300), **{"if": rng.normal(size=300)})
    reference = select(scores, cfg("lossdiff-irm"))
    for rule in ("if-top", "reward-gap", "random"):
        assert select(scores, cfg(rule)).n_kept == reference.n_kept


def test_size_precedence_and_bounds():
    scores = frame(**{"if": np.arange(10.0)})
    assert select(scores, cfg("if-top", size=3, fraction=0.9)).n_kept == 3
    assert select(scores, cfg("if-top", size=3), size=5).n_kept == 5
    assert select(scores, cfg("if-top", fraction=0.25)).n_kept == 3  # 2.5 rounds half up
    with pytest.raises(SelectionError, match="between 1 and 10"):
        select(scores, cfg("if-top"), size=11)
    with pytest.raises(SelectionError, match="keep 0"):
        select(scores, cfg("if-top", fraction=0.01))


def test_random_is_seeded_and_order_free():
    scores = frame(lossdiff=np.arange(100.0), irm=np.arange(100.0))
    a = select(scores, cfg("random", seed=7), size=40)
    b = select(scores.sample(frac=1.0, random_state=1), cfg("random", seed=7), size=40)
    c = select(scores, cfg("random", seed=8), size=40)
    assert a.n_kept == 40 and set(a.kept_ids) == set(b.kept_ids)
    assert set(a.kept_ids) != set(c.kept_ids)
    assert a.params["seed"] == 7


# --- pool checks and files ---------------------------------------------------------------

def test_bad_pools_are_errors():
    with pytest.raises(SelectionError, match="empty"):
        select(frame(lossdiff=[], irm=[]), cfg("lossdiff-irm"))
    with pytest.raises(SelectionError, match="duplicate pair_id"):
        select(pd.DataFrame({"pair_id": ["a", "a"], "lossdiff": [1.0, 2.0], "irm": [1.0, 2.0]}), cfg("lossdiff-irm"))


def test_write_and_read_round_trip(tmp_path):
    scores = frame(lossdiff=np.arange(10.0), irm=[5.0, 0.0, 9.0, 3.0, 4.0, 1.0, 6.0, 7.0, 8.0, 2.0])
    sel = select(scores, cfg("lossdiff-irm", band=(10.0, 90.0)))
    write_selection(sel, str(tmp_path / "selection"))
    meta = json.loads((tmp_path / "selection" / "selection.json").read_text())
    assert meta["rule"] == "lossdiff-irm" and meta["n_kept"] == 6 and meta["params"]["band"] == [10.0, 90.0]
    assert "kept_ids" not in meta
    table = pd.read_parquet(tmp_path / "selection" / "selection.parquet")
    assert list(table.columns) == ["pair_id", "lossdiff", "irm"] and table["pair_id"].tolist() == sel.kept_ids
    assert read_selection(str(tmp_path / "selection")) == sel
