"""Across seeds: means with t-intervals, paired differences with a paired t-test, plain verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from prefcurate.evaluation import replicates


def _boards(selected, full, sft=(50.0,) * 5):
    return {seed: pd.DataFrame({"model": ["selected", "full", "sft"], "win_rate": [s, f, r]})
            for seed, (s, f, r) in enumerate(zip(selected, full, sft))}


def test_paired_differences_and_intervals():
    selected, full = [60.0, 58.0, 63.0, 61.0, 59.0], [55.0, 56.0, 57.0, 54.0, 58.0]
    by_seed = replicates.win_rates_by_seed(_boards(selected, full))
    table = replicates.summarize(by_seed)
    row = table.loc["full"]
    diff = np.subtract(selected, full)
    half = stats.t.ppf(0.975, 4) * diff.std(ddof=1) / np.sqrt(5)
    assert row["diff_vs_selected"] == pytest.approx(diff.mean())
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((diff.mean() - half, diff.mean() + half))
    assert row["paired_p"] == pytest.approx(stats.ttest_rel(selected, full).pvalue)
    assert row["selected_wins"] == 5 and table.loc["selected", "mean"] == pytest.approx(np.mean(selected))
    assert table.index[0] == "selected"  # sorted by mean win rate
    text = replicates.markdown(table, by_seed, "sft")
    assert "selected beats full: +4.2 points" in text and "| 4 | 59.0 | 58.0 | 50.0 |" in text


def test_an_undecided_baseline_says_so():
    table = replicates.summarize(replicates.win_rates_by_seed(_boards([60, 50, 55, 45, 52], [55, 52, 50, 50, 54])))
    (verdict,) = [v for v in replicates.verdicts(table) if "full" in v]
    assert verdict.startswith("selected vs full: not distinguishable at 5 seeds")


def test_one_seed_has_no_interval():
    table = replicates.summarize(replicates.win_rates_by_seed({0: pd.DataFrame({"model": ["selected", "full"],
                                                                                "win_rate": [60.0, 55.0]})}))
    assert np.isnan(table.loc["full", "diff_ci_low"]) and np.isnan(table.loc["full", "paired_p"])
    assert replicates.verdicts(table) == ["selected vs full: +5.0 points on one seed (an interval and a test need two or more)"]
    text = replicates.markdown(table, replicates.win_rates_by_seed({0: table[["mean"]].rename(columns={"mean": "win_rate"})}), "sft")
    assert "against `sft`, 1 seed:" in text and "nan" not in text


def test_head_to_head_summary_across_seeds():
    frames = {s: pd.DataFrame({"model": "selected", "opponent": ["full", "random"], "win_rate": [w_full, w_random],
                               "standard_error": 2.0})
              for s, w_full, w_random in [(0, 60.0, 52.0), (1, 56.0, 47.0), (2, 58.0, 51.0)]}
    table = replicates.head_to_head_summary(frames)
    full = table.loc["full"]
    half = stats.t.ppf(0.975, 2) * np.std([60, 56, 58], ddof=1) / np.sqrt(3)
    assert (full["seeds"], full["mean"], full["selected_wins"]) == (3, pytest.approx(58.0), 3)
    assert (full["ci_low"], full["ci_high"]) == (pytest.approx(58 - half), pytest.approx(58 + half))
    assert full["p_vs_tie"] == pytest.approx(stats.ttest_1samp([60, 56, 58], 50).pvalue)
    assert table.loc["random", "selected_wins"] == 2
    by_seed = replicates.win_rates_by_seed({0: pd.DataFrame({"win_rate": [60.0, 50.0]}, index=["selected", "sft"]),
                                 1: pd.DataFrame({"win_rate": [58.0, 50.0]}, index=["selected", "sft"])})
    text = replicates.markdown(replicates.summarize(by_seed), by_seed, "sft", table)
    assert "Head to head" in text and "| full | 3 | 58.0 |" in text
