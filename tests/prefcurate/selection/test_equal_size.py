"""Rules compared at equal size, absolute cuts, and agreement that separates signal from size."""

from __future__ import annotations

import numpy as np
import pytest

from prefcurate.config import SelectionConfig
from prefcurate.errors import SelectionError
from prefcurate.selection.agreement import agreement_report, cohen_kappa
from prefcurate.selection.rules import RULES, select
from tests.prefcurate.synthetic import correlated_scores


@pytest.fixture(scope="module")
def scores():
    frame = correlated_scores(400, seed=3)
    rng = np.random.default_rng(4)
    rewards = rng.normal(0, 1, (2, 400))
    return frame.assign(score_chosen=rng.uniform(5, 10, 400).round(1), score_rejected=rng.uniform(1, 6, 400).round(1),
                        reward_chosen=rewards[0], reward_rejected=rewards[1], reward_margin=rewards[0] - rewards[1])


def rule_config(rule: str) -> SelectionConfig:
    """The rule's config; the reward-model rule names a reward model (its scores are in the frame already)."""
    return SelectionConfig(rule=rule, reward_model={"uri": "rm"} if rule == "reward-model" else None)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_resizes_to_exactly_k(scores, rule):
    config = rule_config(rule)
    for k in (37, 200, 399):
        chosen = select(scores, config, size=k)
        assert chosen.n_kept == k and len(set(chosen.kept_ids)) == k and chosen.rule == rule
    with pytest.raises(SelectionError, match="between 1 and 400"):
        select(scores, config, size=401)


def test_a_band_resized_to_its_own_size_is_the_band(scores):
    config = SelectionConfig(rule="lossdiff-band")
    band = select(scores, config)
    resized = select(scores, config, size=band.n_kept)
    assert resized.kept_ids == band.kept_ids  # one score: the most central k are the band itself
    two = select(scores, SelectionConfig())  # lossdiff-irm: the band of two scores, most central in both
    overlap = len(set(select(scores, SelectionConfig(), size=two.n_kept).kept_ids) & set(two.kept_ids)) / two.n_kept
    assert overlap > 0.85
    tif = scores.loc[scores["tif"], "pair_id"].tolist()
    assert set(select(scores, SelectionConfig(rule="tif"), size=len(tif)).kept_ids) == set(tif)


def test_absolute_cuts_remove_exactly_the_pairs_on_the_wrong_side(scores):
    cut = select(scores, SelectionConfig(rule="cuts"))
    assert set(cut.kept_ids) == set(scores.loc[scores["irm"] > 0, "pair_id"])  # default: IRM > 0
    both = select(scores, SelectionConfig(rule="cuts", cuts={"irm": 0.0, "if": 0.0}))
    assert set(both.kept_ids) == set(scores.loc[(scores["irm"] > 0) & (scores["if"] > 0), "pair_id"])
    banded = select(scores, SelectionConfig(rule="lossdiff-irm-cuts"))
    assert set(banded.kept_ids) == set(select(scores, SelectionConfig()).kept_ids) & set(cut.kept_ids)
    clearest = select(scores, SelectionConfig(rule="cuts"), size=50)
    assert set(clearest.kept_ids) == set(scores.nlargest(50, "irm")["pair_id"])  # furthest above the cut
    with pytest.raises(SelectionError, match="keeps no pair"):
        select(scores, SelectionConfig(rule="cuts", cuts={"irm": 1e6}))


def test_kappa():
    a = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(a, ~a) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    x, y = rng.random(20000) < 0.5, rng.random(20000) < 0.5
    assert abs(cohen_kappa(x, y)) < 0.03  # independent decisions: no agreement beyond chance


def test_agreement_compares_every_rule_at_tif_size(scores):
    config = SelectionConfig()
    chosen = select(scores, config)
    selections = {"lossdiff-irm": chosen, "random": select(scores, config.model_copy(update={"rule": "random"}), size=300),
                  "if-top": select(scores, config.model_copy(update={"rule": "if-top"}), size=chosen.n_kept)}
    report = agreement_report(scores, selections, config=config)
    table = report.overlap
    tif = int(scores["tif"].sum())
    assert table.loc["random", "chance_at_tif_size"] == pytest.approx(tif / 400)
    assert abs(table.loc["random", "excess"]) < 0.15 and abs(table.loc["random", "kappa"]) < 0.2  # size alone
    assert table.loc["lossdiff-irm", "kappa"] > table.loc["random", "kappa"] + 0.1  # signal beyond size
    # top k by IF against the middle band of IF: exactly the band's upper half, by construction
    assert table.loc["if-top", "overlap_at_tif_size"] == pytest.approx(0.5, abs=0.01)
    assert any("fixed by construction" in note for note in report.notes)
    again = type(report).from_json(report.to_json())
    assert list(again.overlap.columns) == list(table.columns)


def test_band_and_cuts_resized_keeps_the_band_order_inside_the_cuts(scores):
    config = SelectionConfig(rule="lossdiff-irm-cuts")
    inside = set(scores.loc[scores["irm"] > 0, "pair_id"])
    small = select(scores, config, size=50)
    assert set(small.kept_ids) <= inside  # fewer than pass the cuts: all from inside them
    central = select(scores, SelectionConfig().model_copy(update={"rule": "lossdiff-irm"}), size=len(scores))
    assert set(small.kept_ids) != set(select(scores, SelectionConfig(rule="cuts"), size=50).kept_ids)
    big = select(scores, config, size=len(inside) + 10)
    assert inside <= set(big.kept_ids) and central.n_kept == len(scores)
