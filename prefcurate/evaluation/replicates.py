"""Replicates: what holds across seeds, not in one lucky run.

One curate run gives each model one win rate; chance (the training seed, the sampled answers,
the random subset, the data) moves it by several points. A study repeats the run per seed and
reports, per model, the mean win rate with a 95 % t-interval across seeds, and for the
selection against every baseline the paired per-seed differences (same seed, same data, same
prompts), their interval and a paired t-test — the comparison the method's claim is about.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from prefcurate.errors import PrefcurateError

SELECTED = "selected"


def _interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of `values` (NaN interval with fewer than two)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def win_rates_by_seed(leaderboards: Mapping[int, pd.DataFrame], column: str = "win_rate") -> pd.DataFrame:
    """seed × model table of `column` from each seed's leaderboard (models as index or a `model` column)."""
    if not leaderboards:
        raise PrefcurateError("no finished replicate to aggregate; run at least one seed")
    rows = {}
    for seed, board in leaderboards.items():
        board = board.set_index("model") if "model" in board.columns else board
        rows[seed] = board[column].astype(float)
    return pd.DataFrame(rows).T.rename_axis("seed").sort_index()


def summarize(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Per model: seeds, mean, 95 % interval, and against the selection the paired difference
    (selected − model) with its interval, a paired t-test and the seeds the selection won."""
    rows = {}
    for model in by_seed.columns:
        values = by_seed[model].dropna().to_numpy()
        mean, lo, hi = _interval(values) if len(values) else (math.nan,) * 3
        row = {"seeds": len(values), "mean": mean, "ci_low": lo, "ci_high": hi}
        if SELECTED in by_seed.columns and model != SELECTED:
            paired = by_seed[[SELECTED, model]].dropna()
            diff = (paired[SELECTED] - paired[model]).to_numpy()
            d_mean, d_lo, d_hi = _interval(diff) if len(diff) else (math.nan,) * 3
            p = float(stats.ttest_rel(paired[SELECTED], paired[model]).pvalue) if len(diff) >= 2 and np.ptp(diff) > 0 else math.nan
            row.update({"diff_vs_selected": d_mean, "diff_ci_low": d_lo, "diff_ci_high": d_hi, "paired_p": p,
                        "selected_wins": int((diff > 0).sum())})
        rows[model] = row
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    return table.sort_values("mean", ascending=False)


def head_to_head_summary(frames: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Per opponent of the selection's direct comparisons (`evaluate.head_to_head`, one frame per seed): the
    seeds, the mean win rate of `selected` against it with its 95 % t-interval, a one-sample t-test against
    50 % (a tie) and the seeds the selection won."""
    if not frames:
        raise PrefcurateError("no head-to-head judgment to aggregate; set evaluation.head_to_head")
    by_seed = pd.DataFrame({seed: f.set_index("opponent")["win_rate"].astype(float) for seed, f in frames.items()}).T
    rows = {}
    for opponent in by_seed.columns:
        values = by_seed[opponent].dropna().to_numpy()
        mean, lo, hi = _interval(values) if len(values) else (math.nan,) * 3
        p = float(stats.ttest_1samp(values, 50.0).pvalue) if len(values) >= 2 and np.ptp(values) > 0 else math.nan
        rows[opponent] = {"seeds": len(values), "mean": mean, "ci_low": lo, "ci_high": hi, "p_vs_tie": p,
                          "selected_wins": int((values > 50).sum())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("opponent")


def verdicts(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One plain sentence per baseline: does the selection beat it, lose to it, or is it undecided?"""
    out = []
    for model, row in table.iterrows():
        if model == SELECTED or pd.isna(row.get("diff_vs_selected")):
            continue
        diff, p = row["diff_vs_selected"], row["paired_p"]
        if int(row["seeds"]) < 2:
            out.append(f"selected vs {model}: {diff:+.1f} points on one seed (an interval and a test need two or more)")
            continue
        span = f"{diff:+.1f} points (95 % CI {row['diff_ci_low']:+.1f} to {row['diff_ci_high']:+.1f}, paired p = {p:.3f})"
        if not pd.isna(p) and p < alpha:
            out.append(f"selected {'beats' if diff > 0 else 'loses to'} {model}: {span}")
        else:
            out.append(f"selected vs {model}: not distinguishable at {int(row['seeds'])} seeds, {span}")
    return out


def markdown(table: pd.DataFrame, by_seed: pd.DataFrame, reference: str, head_to_head: pd.DataFrame | None = None) -> str:
    """The study as markdown: the summary table, the per-seed win rates, the verdicts (and the head-to-head summary)."""
    def cell(v: object, fmt: str = "{:.1f}") -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    seeds = f"{len(by_seed)} seed{'s' if len(by_seed) != 1 else ''}"
    lines = [f"Win rate % against `{reference}`, {seeds}: mean and 95 % t-interval across seeds; "
             "paired difference selected − model per seed.", "",
             "| model | seeds | mean | 95 % CI | selected − model | 95 % CI | paired p | selected wins |",
             "|---|---|---|---|---|---|---|---|"]
    for model, r in table.iterrows():
        paired = "diff_vs_selected" in r and not pd.isna(r.get("diff_vs_selected"))
        lines.append(
            f"| {model} | {int(r['seeds'])} | {cell(r['mean'])} | {cell(r['ci_low'])} – {cell(r['ci_high'])} | "
            + (f"{cell(r['diff_vs_selected'], '{:+.1f}')} | {cell(r['diff_ci_low'], '{:+.1f}')} – "
               f"{cell(r['diff_ci_high'], '{:+.1f}')} | {cell(r['paired_p'], '{:.3f}')} | "
               f"{int(r['selected_wins'])}/{int(r['seeds'])} |" if paired else "| | | |")
        )
    lines += ["", "Per seed:", "", "| seed | " + " | ".join(by_seed.columns) + " |", "|---" * (len(by_seed.columns) + 1) + "|"]
    lines += [f"| {seed} | " + " | ".join(cell(v) for v in row) + " |" for seed, row in by_seed.iterrows()]
    lines.append("")
    lines += [f"- {v}" for v in verdicts(table)]
    if head_to_head is not None and not head_to_head.empty:
        lines += ["", f"Head to head: win rate % of `{SELECTED}` judged directly against each model, mean and 95 % "
                  "t-interval across seeds; p of a one-sample t-test against 50 % (a tie).", "",
                  "| opponent | seeds | selected's win rate | 95 % CI | p vs 50 % | selected wins |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {int(r['seeds'])} | {cell(r['mean'])} | {cell(r['ci_low'])} – {cell(r['ci_high'])} | "
                  f"{cell(r['p_vs_tie'], '{:.3f}')} | {int(r['selected_wins'])}/{int(r['seeds'])} |"
                  for name, r in head_to_head.iterrows()]
    return "\n".join(lines) + "\n"
