"""Cross-model comparison: a model against itself agrees perfectly; two models' numbers are the hand computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prefcurate.errors import SelectionError
from prefcurate.selection.crossmodel import compare_scores
from tests.prefcurate.synthetic import correlated_scores

NAMES, RULES = ("a", "b"), ("lossdiff-irm", "lossdiff-irm")


def kept(scores: pd.DataFrame, seed: int) -> list[str]:
    return list(scores["pair_id"].sample(frac=0.6, random_state=seed))


def test_a_model_compared_with_itself_agrees_perfectly():
    scores = correlated_scores(120, seed=0)
    result = compare_scores(scores, scores.sample(frac=1.0, random_state=1), kept(scores, 0), kept(scores, 0),
                            names=NAMES, rules=RULES)
    assert result.if_spearman == pytest.approx(1.0) and result.if_pearson == pytest.approx(1.0)
    assert result.if_sign_changes == 0.0
    for agreement in (result.tif, result.selection):
        assert agreement.overlap == 1.0 and agreement.kappa == pytest.approx(1.0)


def hand(first: pd.DataFrame, second: pd.DataFrame, kept_a: list[str], kept_b: list[str]) -> dict[str, float]:
    """The same numbers from first principles: correlation of ranks, counts, and kappa's definition."""
    b = second.set_index("pair_id").loc[first["pair_id"]]
    x, y = first["if"].to_numpy(), b["if"].to_numpy()
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    out = {"if_spearman": np.corrcoef(rx, ry)[0, 1], "if_sign_changes": np.mean((x > 0) != (y > 0))}
    n = len(first)
    for name, sa, sb in (("tif", set(first.loc[first["tif"], "pair_id"]), set(b.index[b["tif"].to_numpy()])),
                         ("selection", set(kept_a), set(kept_b))):
        both = len(sa & sb)
        agree = (both + (n - len(sa | sb))) / n
        pa, pb = len(sa) / n, len(sb) / n
        expected = pa * pb + (1 - pa) * (1 - pb)
        out[f"{name}.overlap"] = both / min(len(sa), len(sb))
        out[f"{name}.chance"] = len(sa) * len(sb) / n / min(len(sa), len(sb))
        out[f"{name}.kappa"] = (agree - expected) / (1 - expected)
    return out


def test_two_models_give_the_hand_computed_numbers_within_bounds():
    first, second = correlated_scores(150, seed=0), correlated_scores(150, seed=7)
    second = second.assign(pair_id=first["pair_id"]).sample(frac=1.0, random_state=3)  # same pool, other order
    kept_a, kept_b = kept(first, 1), kept(first, 2)
    result = compare_scores(first, second, kept_a, kept_b, names=NAMES, rules=RULES)
    metrics = result.metrics()
    for key, value in hand(first, second, kept_a, kept_b).items():
        assert metrics[key] == pytest.approx(value), key
    for key in ("if_spearman", "if_pearson", "tif.kappa", "selection.kappa"):
        assert -1.0 <= metrics[key] <= 1.0
    assert 0.0 <= metrics["if_sign_changes"] <= 1.0 and 0.0 < metrics["tif.overlap"] < 1.0
    assert "IF changes sign" in result.markdown()


def test_scores_of_different_pools_are_refused():
    first, second = correlated_scores(50, seed=0), correlated_scores(40, seed=1)
    with pytest.raises(SelectionError, match="scored different pools"):
        compare_scores(first, second, kept(first, 0), kept(second, 0), names=NAMES, rules=RULES)
