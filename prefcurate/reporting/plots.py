"""Figures for a curation run, as PNG bytes: what was kept, why, and whether it paid off.

- score distributions with the selection band (kept vs dropped stacked),
- LossDiff vs IRM coloured by kept/dropped (the LossDiff-IRM rule is the box in the middle),
- IF vs each proxy with its Pearson r (how far the cheap scores stand in for influence),
- win rates with 95 % error bars against the reference model,
- several seeds: each model's per-seed win rates, mean and 95 % interval, and the selection's paired
  difference with every baseline.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas and never through
pyplot, so there is no global figure state and tasks on several threads can draw at once.
"""

from __future__ import annotations

import io as _io
import logging
from typing import Iterable

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prefcurate import io
from prefcurate.errors import DataError
from prefcurate.evaluation.replicates import SELECTED
from prefcurate.selection.selection import Selection

log = logging.getLogger(__name__)

KEPT, DROPPED, BAND = "#1b7837", "#b2abd2", "#d6604d"
LABELS = {"if": "IF", "lossdiff": "LossDiff", "irm": "IRM"}
MAX_POINTS = 20_000  # scatter points drawn; histograms and correlations use every pair
FIGURES = {
    "score_distributions": "score_distributions.png",
    "lossdiff_vs_irm": "lossdiff_vs_irm.png",
    "if_vs_proxies": "if_vs_proxies.png",
    "win_rates": "win_rates.png",
    "replicates": "replicates.png",
}


def png_bytes(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def kept_mask(scores: pd.DataFrame, kept: Selection | Iterable[str] | None) -> np.ndarray | None:
    """Boolean mask over `scores` rows of the kept pairs (None when nothing was selected)."""
    if kept is None:
        return None
    ids = kept.kept_ids if isinstance(kept, Selection) else list(kept)
    return scores["pair_id"].astype(str).isin(set(map(str, ids))).to_numpy()


def _values(scores: pd.DataFrame, column: str) -> np.ndarray:
    if column not in scores.columns:
        raise DataError(f"scores lack the '{column}' column needed for this figure; pass the frame from scores.parquet")
    values = pd.to_numeric(scores[column], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).any():
        raise DataError(f"scores column '{column}' has no finite value (was it computed? scoring.compute_if for IF)")
    return values


def _thresholds(selection: Selection | None) -> dict[str, list[float]]:
    if selection is None:
        return {}
    return dict(selection.params.get("thresholds", {}))


def _subsample(n: int, seed: int = 0) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_POINTS, replace=False))


def score_distributions(scores: pd.DataFrame, kept: Selection | Iterable[str] | None = None) -> bytes:
    """Histograms of IF (when computed), LossDiff and IRM; kept and dropped stacked; band edges in red."""
    columns = [c for c in ("if", "lossdiff", "irm") if c in scores.columns
               and np.isfinite(pd.to_numeric(scores[c], errors="coerce")).any()]
    if not columns:
        raise DataError("scores have none of the columns if, lossdiff, irm; pass the frame from scores.parquet")
    mask = kept_mask(scores, kept)
    thresholds = _thresholds(kept if isinstance(kept, Selection) else None)
    fig = Figure(figsize=(4.2 * len(columns), 3.4), layout="constrained")
    for ax, column in zip(fig.subplots(1, len(columns), squeeze=False)[0], columns):
        values = _values(scores, column)
        finite = np.isfinite(values)
        bins = np.histogram_bin_edges(values[finite], bins=40)
        if mask is None:
            ax.hist(values[finite], bins=bins, color=DROPPED)
        else:
            ax.hist([values[finite & mask], values[finite & ~mask]], bins=bins, stacked=True,
                    color=[KEPT, DROPPED], label=[f"kept ({int((finite & mask).sum())})",
                                                  f"dropped ({int((finite & ~mask).sum())})"])
            ax.legend(fontsize=8)
        for edge in thresholds.get(column, []):
            ax.axvline(edge, color=BAND, linestyle="--", linewidth=1.2)
        omitted = int((~finite).sum())
        ax.set_title(LABELS[column] + (f" ({omitted} non-finite omitted)" if omitted else ""), fontsize=10)
        ax.set_xlabel(LABELS[column])
        ax.set_ylabel("pairs")
    rule = kept.rule if isinstance(kept, Selection) else None
    fig.suptitle(f"Score distributions — selection: {rule}" if rule else "Score distributions", fontsize=11)
    return png_bytes(fig)


def lossdiff_vs_irm(scores: pd.DataFrame, kept: Selection | Iterable[str] | None = None) -> bytes:
    """LossDiff against IRM, kept pairs in green; the selection's band drawn as a box."""
    x, y = _values(scores, "irm"), _values(scores, "lossdiff")
    mask = kept_mask(scores, kept)
    show = _subsample(len(scores))
    fig = Figure(figsize=(5.6, 4.6), layout="constrained")
    ax = fig.subplots()
    if mask is None:
        ax.scatter(x[show], y[show], s=6, color=DROPPED, rasterized=True)
    else:
        m = mask[show]
        ax.scatter(x[show][~m], y[show][~m], s=6, color=DROPPED, label=f"dropped ({int((~mask).sum())})", rasterized=True)
        ax.scatter(x[show][m], y[show][m], s=6, color=KEPT, label=f"kept ({int(mask.sum())})", rasterized=True)
        ax.legend(fontsize=8, loc="best")
    thresholds = _thresholds(kept if isinstance(kept, Selection) else None)
    for edge in thresholds.get("irm", []):
        ax.axvline(edge, color=BAND, linestyle="--", linewidth=1.2)
    for edge in thresholds.get("lossdiff", []):
        ax.axhline(edge, color=BAND, linestyle="--", linewidth=1.2)
    ax.set_xlabel("IRM  (β · implicit reward margin of the warm-up model)")
    ax.set_ylabel("LossDiff  (ℓ(θ) − ℓ(θ_val))")
    shown = "" if len(show) == len(scores) else f" — {len(show):,} of {len(scores):,} pairs shown"
    ax.set_title(f"LossDiff vs IRM{shown}", fontsize=11)
    return png_bytes(fig)


def if_vs_proxies(scores: pd.DataFrame, kept: Selection | Iterable[str] | None = None) -> bytes:
    """IF against LossDiff and IRM with Pearson r; points coloured by `kept`, else by the TIF band."""
    influence = _values(scores, "if")
    proxies = [c for c in ("lossdiff", "irm") if c in scores.columns]
    if not proxies:
        raise DataError("scores lack both lossdiff and irm; pass the frame from scores.parquet")
    mask = kept_mask(scores, kept)
    legend = ("kept", "dropped")
    if mask is None and "tif" in scores.columns and scores["tif"].notna().all():
        mask, legend = scores["tif"].astype(bool).to_numpy(), ("inside TIF band", "outside")
    show = _subsample(len(scores))
    fig = Figure(figsize=(4.6 * len(proxies), 4.2), layout="constrained")
    for ax, column in zip(fig.subplots(1, len(proxies), squeeze=False)[0], proxies):
        proxy = _values(scores, column)
        finite = np.isfinite(proxy) & np.isfinite(influence)
        r = float(np.corrcoef(proxy[finite], influence[finite])[0, 1]) if finite.sum() > 2 else float("nan")
        px, iy = proxy[show], influence[show]
        if mask is None:
            ax.scatter(px, iy, s=6, color=DROPPED, rasterized=True)
        else:
            m = mask[show]
            ax.scatter(px[~m], iy[~m], s=6, color=DROPPED, label=legend[1], rasterized=True)
            ax.scatter(px[m], iy[m], s=6, color=KEPT, label=legend[0], rasterized=True)
            ax.legend(fontsize=8)
        ax.set_xlabel(LABELS[column])
        ax.set_ylabel("IF (influence on validation loss)")
        ax.set_title(f"IF vs {LABELS[column]}: Pearson r = {r:.2f}", fontsize=10)
    return png_bytes(fig)


def _board(leaderboard: pd.DataFrame) -> pd.DataFrame:
    board = leaderboard.set_index("model") if "model" in leaderboard.columns else leaderboard
    if "win_rate" not in board.columns:
        raise DataError("leaderboard lacks 'win_rate'; pass the frame from leaderboard.csv")
    return board


def win_rate_bars(leaderboard: pd.DataFrame, reference: str | None = None) -> bytes:
    """Win rate (%) of each model against `reference`, with ±1.96 standard errors; 50 % = tie.

    Green: better than the reference beyond the error bar; red: worse; grey: inconclusive.
    """
    board = _board(leaderboard)
    board = board.drop(index=reference, errors="ignore") if reference else board
    if board.empty:
        raise DataError("leaderboard has no model besides the reference; evaluate at least one other model")
    board = board.sort_values("win_rate", ascending=True, kind="stable")
    se = board["standard_error"].astype(float).fillna(0.0) if "standard_error" in board else 0.0 * board["win_rate"]
    names = [str(n) for n in board.index]
    fig = Figure(figsize=(6.4, 0.55 * len(names) + 1.6), layout="constrained")
    ax = fig.subplots()
    low, high = board["win_rate"] - 1.96 * se, board["win_rate"] + 1.96 * se
    colors = [KEPT if lo > 50 else BAND if hi < 50 else DROPPED for lo, hi in zip(low, high)]
    ax.barh(names, board["win_rate"], xerr=1.96 * se, color=colors, capsize=4, ecolor="#333333")
    for i, (w, s) in enumerate(zip(board["win_rate"], se)):
        ax.text(w + 1.96 * s + 1, i, f"{w:.1f} (s.e. {s:.1f})", va="center", fontsize=8)
    ax.axvline(50.0, color="#555555", linestyle=":", linewidth=1)
    upper = float(np.nanmax(board["win_rate"] + 1.96 * se))
    ax.set_xlim(0, max(100.0, upper + 12))
    against = f" against {reference}" if reference else ""
    ax.set_xlabel(f"win rate{against} (%), bars: ±1.96 s.e.")
    ax.set_title(f"Win rates{against}", fontsize=11)
    return png_bytes(fig)


def replicate_intervals(table: pd.DataFrame, by_seed: pd.DataFrame, reference: str) -> bytes:
    """Several seeds at a glance: left, every model's per-seed win rates (dots) with its mean and 95 %
    t-interval; right, the selection's paired per-seed difference with each baseline and its interval,
    green where the selection wins beyond it, red where it loses, grey where the seeds cannot tell.

    `table` is `replicates.summarize(by_seed)`; `by_seed` the seed × model win rates.
    """
    if len(by_seed) < 2 or "mean" not in table.columns:
        raise DataError("an interval needs at least two seeds; pass the summary of several seeds' leaderboards")
    table = table.sort_values("mean", ascending=True, kind="stable")
    names = [str(n) for n in table.index]
    y = np.arange(len(names))
    fig = Figure(figsize=(9.6, 0.45 * len(names) + 1.8), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    for i, model in enumerate(table.index):
        seeds = by_seed[model].dropna().to_numpy(dtype=float) if model in by_seed else np.array([])
        left.scatter(seeds, np.full(len(seeds), i), s=12, color=DROPPED, zorder=2)
    low, high = table["ci_low"].to_numpy(dtype=float), table["ci_high"].to_numpy(dtype=float)
    mean = table["mean"].to_numpy(dtype=float)
    spread = np.nan_to_num(np.stack([mean - low, high - mean]))
    left.errorbar(mean, y, xerr=spread, fmt="o", color="#333333", capsize=4, zorder=3)
    if SELECTED in names:  # the row every difference on the right is taken from
        for ax in (left, right):
            ax.axhspan(names.index(SELECTED) - 0.4, names.index(SELECTED) + 0.4, color=KEPT, alpha=0.12, zorder=0)
    left.axvline(50.0, color="#555555", linestyle=":", linewidth=1)
    left.set_yticks(y, names)
    left.set_xlabel(f"win rate against {reference} (%): seeds (dots), mean ± 95 % CI")
    if "diff_vs_selected" in table.columns:
        diff = table["diff_vs_selected"].to_numpy(dtype=float)
        d_low, d_high = table["diff_ci_low"].to_numpy(dtype=float), table["diff_ci_high"].to_numpy(dtype=float)
        for i in np.flatnonzero(np.isfinite(diff)):
            color = KEPT if d_low[i] > 0 else BAND if d_high[i] < 0 else DROPPED
            lo, hi = (diff[i] - d_low[i], d_high[i] - diff[i]) if np.isfinite(d_low[i]) else (0.0, 0.0)
            right.errorbar(diff[i], i, xerr=[[lo], [hi]], fmt="s", color=color, capsize=4)
        right.axvline(0.0, color="#555555", linestyle=":", linewidth=1)
    right.set_xlabel("selected − model (points), paired by seed, ± 95 % CI")
    fig.suptitle(f"{len(by_seed)} seeds", fontsize=11)
    return png_bytes(fig)


def write_figures(
    figures_uri: str,
    scores: pd.DataFrame | None = None,
    selection: Selection | None = None,
    leaderboard: pd.DataFrame | None = None,
    reference: str | None = None,
    replicates: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> dict[str, str]:
    """Draw every figure the inputs allow and write it under `figures_uri`; returns name → URI.

    `replicates` is several seeds' (summary table, seed × model win rates) against `reference`.
    A figure whose input is absent (no leaderboard yet, IF not computed) is skipped with an
    info line naming the reason, so a `nightly` run without evaluation still gets its score plots.
    """
    makers = {
        "score_distributions": lambda: score_distributions(scores, selection),
        "lossdiff_vs_irm": lambda: lossdiff_vs_irm(scores, selection),
        "if_vs_proxies": lambda: if_vs_proxies(scores, selection),
        "win_rates": lambda: win_rate_bars(leaderboard, reference),
        "replicates": lambda: replicate_intervals(*replicates, reference),
    }
    inputs = {"win_rates": ("leaderboard", leaderboard), "replicates": ("replicates", replicates)}
    written: dict[str, str] = {}
    for name, make in makers.items():
        what, needs = inputs.get(name, ("scores", scores))
        if needs is None:
            log.info("figure %s skipped: no %s given", name, what)
            continue
        try:
            png = make()
        except DataError as exc:
            log.info("figure %s skipped: %s", name, exc)
            continue
        written[name] = io.write_bytes(io.join(figures_uri, FIGURES[name]), png)
    return written
