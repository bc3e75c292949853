import math
import sys
import types

import numpy as np
import pandas as pd
import pytest

from prefcurate.errors import DataError
from prefcurate.evaluation import metrics


def test_win_rate_hand_computed_with_ties():
    prefs = [2.0, 1.0, 1.5, 1.5, 1.8]
    out = metrics.win_rate(prefs, lengths=[10, 20, 30, 40, 50])
    wins = np.array([1.0, 0.0, 0.5, 0.5, 0.8])
    assert out["win_rate"] == pytest.approx(56.0)
    assert out["standard_error"] == pytest.approx(np.std(wins * 100, ddof=1) / math.sqrt(5))
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (2, 1, 2, 5)
    # discrete: 2 wins, 1 loss, 2 ties → (2 + 1) / 5
    assert out["discrete_win_rate"] == pytest.approx(60.0)
    assert out["avg_length"] == pytest.approx(30.0)
    assert out["n_rejected"] == 0


def test_all_win_and_all_lose():
    win = metrics.win_rate([2.0] * 4)
    lose = metrics.win_rate([1.0] * 4)
    assert (win["win_rate"], win["standard_error"], win["n_wins"]) == (100.0, 0.0, 4)
    assert (lose["win_rate"], lose["discrete_win_rate"], lose["n_wins_base"]) == (0.0, 0.0, 4)


def test_nan_preferences_are_rejected_and_counted(caplog):
    out = metrics.win_rate([2.0, float("nan"), None, 1.0])
    assert out["n_total"] == 2 and out["n_rejected"] == 2
    assert out["win_rate"] == pytest.approx(50.0)
    assert "rejected 2 of 4" in caplog.text


def test_out_of_range_preference_is_a_clear_error():
    with pytest.raises(DataError, match=r"outside \[1, 2\]"):
        metrics.win_rate([1.5, 2.5])


def test_lc_equals_raw_when_lengths_are_equal():
    rng = np.random.default_rng(0)
    prefs = 1 + rng.uniform(size=200)
    lengths = [100] * 200
    raw = metrics.win_rate(prefs)["win_rate"]
    lc = metrics.length_controlled_win_rate(prefs, lengths, lengths)
    assert lc["length_controlled_winrate"] == pytest.approx(raw, abs=1e-6)
    assert lc["lc_standard_error"] > 0


def test_lc_removes_a_judge_length_bias():
    # The model's answers are as good as the reference's (true win prob 0.5), but the judge
    # rewards length and the model tends to write longer answers: raw > 50, LC ≈ 50.
    rng = np.random.default_rng(1)
    n = 2000
    delta = rng.normal(loc=40, scale=60, size=n)
    ref_len = np.full(n, 300)
    model_len = ref_len + delta.round().astype(int)
    x = np.tanh((model_len - ref_len) / np.std(model_len - ref_len, ddof=1))
    p = 1 / (1 + np.exp(-2.0 * x))
    prefs = 1 + (rng.uniform(size=n) < p).astype(float)
    raw = metrics.win_rate(prefs)["win_rate"]
    lc = metrics.length_controlled_win_rate(prefs, model_len, ref_len)
    assert raw > 65
    assert abs(lc["length_controlled_winrate"] - 50) < 5
    assert abs(lc["length_controlled_winrate"] - 50) < abs(raw - 50) / 3
    assert 0 < lc["lc_standard_error"] < 5


def test_lc_of_unanimous_verdicts_is_the_raw_rate():
    lc = metrics.length_controlled_win_rate([2.0] * 5, [10, 20, 30, 40, 50], [5] * 5)
    assert lc == {"length_controlled_winrate": 100.0, "lc_standard_error": 0.0}


def test_lc_warns_when_far_from_raw(caplog):
    # The model wins only where it is far longer and loses at about equal length: raw 75 %,
    # but at zero length difference it would lose.
    model_len = [400] * 30 + [105] * 10
    prefs = [2.0] * 30 + [1.0] * 10
    lc = metrics.length_controlled_win_rate(prefs, model_len, [100] * 40)
    assert lc["length_controlled_winrate"] < 40
    assert "very different from the raw one" in caplog.text


def test_single_score_excludes_and_counts_unparseable():
    out = metrics.single_score([8, -1, 6, 10, -1])
    assert out["single_score"] == pytest.approx(8.0)
    assert out["single_score_standard_error"] == pytest.approx(np.std([8, 6, 10], ddof=1) / math.sqrt(3))
    assert (out["n_scored"], out["n_unscored"]) == (3, 2)
    with pytest.raises(DataError, match="outside 1–10"):
        metrics.single_score([0.5])


def test_leaderboard_roundtrip_in_alpacaeval_format(tmp_path):
    annotations = [
        {"instruction": "a", "output_1": "xx", "output_2": "yyyy", "preference": 2.0},
        {"instruction": "b", "output_1": "xx", "output_2": "yy", "preference": 1.0},
        {"instruction": "c", "output_1": "xx", "output_2": "y", "preference": None},
    ]
    rows = {"m": metrics.leaderboard_row(annotations, [9, -1, 7]), "ref": metrics.leaderboard_row(
        [dict(a, output_2=a["output_1"], preference=1.5) for a in annotations], [5, 5, 5])}
    board = metrics.leaderboard(rows)
    uri = str(tmp_path / "leaderboard.csv")
    metrics.write_leaderboard(board, uri)
    back = pd.read_csv(uri, index_col=0)
    assert list(back.columns) == metrics.LEADERBOARD_COLUMNS
    assert back.loc["m", "n_rejected"] == 1 and back.loc["m", "n_total"] == 2
    assert back.loc["m", "avg_length"] == pytest.approx(7 / 3)  # every answer counts, as in AlpacaEval
    assert back.loc["ref", "win_rate"] == 50.0
    assert back.loc["m", "single_score"] == 8.0 and back.loc["m", "n_unscored"] == 1


def _import_alpaca_eval_metrics(monkeypatch):
    """alpaca_eval 0.6 imports pkg_resources (gone from setuptools ≥ 81) for helpers the
    win-rate code never calls; stand in an empty module for it during the import only."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "pkg_resources", types.ModuleType("pkg_resources"))
    pytest.importorskip("alpaca_eval", reason="alpaca-eval is not installed (pip install alpaca-eval)")
    from alpaca_eval.metrics import get_winrate

    return get_winrate


def test_raw_win_rate_matches_alpaca_eval(monkeypatch):
    get_winrate = _import_alpaca_eval_metrics(monkeypatch)
    rng = np.random.default_rng(3)
    prefs = np.concatenate([1 + rng.uniform(size=50), [1.0, 2.0, 1.5, 1.5, 2.0]])
    ours = metrics.win_rate(prefs)
    theirs = get_winrate(pd.DataFrame({"preference": prefs}))
    for key in ["win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate"]:
        assert ours[key] == pytest.approx(float(theirs[key]), rel=1e-12), key


def test_standard_errors_are_clustered_by_prompt_as_a_hand_computation():
    from prefcurate.evaluation.metrics import clustered_standard_error, leaderboard_row

    # two sampled answers for each of three prompts: prompt a's answers win together, c's lose together
    annotations = [{"instruction": i, "output_1": "x" * n1, "output_2": "y" * n2, "preference": p}
                   for i, n1, n2, p in [("a", 3, 4, 2.0), ("a", 3, 5, 2.0), ("b", 4, 4, 1.5), ("b", 2, 6, 2.0),
                                        ("c", 5, 3, 1.0), ("c", 4, 2, 1.0)]]
    row = leaderboard_row(annotations, [9.0, 8.0, 5.0, 7.0, 2.0, -1.0])
    wins = [1.0, 1.0, 0.5, 1.0, 0.0, 0.0]
    mean = sum(wins) / 6  # 0.5833…
    # CR1: per-prompt sums of deviations, G/(G−1)·Σ sums², square root, over n
    sums = [(1 - mean) + (1 - mean), (0.5 - mean) + (1 - mean), (0 - mean) + (0 - mean)]
    hand = (3 / 2 * sum(s * s for s in sums)) ** 0.5 / 6
    assert row["win_rate"] == pytest.approx(100 * mean)
    assert row["standard_error"] == pytest.approx(100 * hand)
    naive = float(np.std(wins, ddof=1) / np.sqrt(6))
    assert row["standard_error"] > 100 * naive  # correlated samples: the naive s.e. is too small here
    # the single score's s.e. over the five parsed grades, clustered the same way (c has one grade left)
    grades, prompts = [9.0, 8.0, 5.0, 7.0, 2.0], ["a", "a", "b", "b", "c"]
    g_mean = sum(grades) / 5
    g_sums = [9 + 8 - 2 * g_mean, 5 + 7 - 2 * g_mean, 2 - g_mean]
    assert row["single_score_standard_error"] == pytest.approx((3 / 2 * sum(s * s for s in g_sums)) ** 0.5 / 5)
    assert clustered_standard_error(grades, prompts) == pytest.approx(row["single_score_standard_error"])
    # one answer per prompt: the clustered s.e. is the plain one (today's numbers are unchanged)
    assert clustered_standard_error(wins, list("abcdef")) == pytest.approx(naive)
    assert clustered_standard_error(wins) == pytest.approx(naive)


def test_cluster_labels_must_match_the_values():
    from prefcurate.errors import DataError
    from prefcurate.evaluation.metrics import win_rate

    with pytest.raises(DataError, match="one label"):
        win_rate([2.0, 1.0, 1.5], clusters=["a", "b"])
