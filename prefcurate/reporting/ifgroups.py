"""The IF-group study's report: validation loss and margin per step, three curves per panel,
and the final numbers per group."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from prefcurate.reporting.plots import png_bytes
from prefcurate.reporting.report import markdown_table
from prefcurate.selection.groups import GROUPS

COLOURS = {"low": "#2166ac", "medium": "#1b7837", "high": "#b2182b"}
PANELS = (("val_loss", "validation DPO loss"), ("val_margin", "validation margin (mean β·m)"))


def curves_figure(curves: pd.DataFrame) -> bytes:
    """PNG: one panel per measure, one line per IF group (`curves`: group, step, val_loss, val_margin)."""
    fig = Figure(figsize=(10, 4))
    for ax, (column, title) in zip(fig.subplots(1, 2), PANELS):
        for group in GROUPS:
            rows = curves[curves["group"] == group]
            ax.plot(rows["step"], rows[column], marker="o", markersize=3, color=COLOURS[group], label=f"{group} IF")
        ax.set_xlabel("optimiser step (DPO from θ)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.axes[0].legend()
    return png_bytes(fig)


def final_table(curves: pd.DataFrame, sizes: dict[str, int]) -> pd.DataFrame:
    """Per group: pairs, steps, validation loss and margin before the first and after the last step."""
    rows = {}
    for group in GROUPS:
        c = curves[curves["group"] == group].sort_values("step")
        rows[group] = {"n_pairs": sizes[group], "steps": int(c["step"].iloc[-1]),
                       "val_loss_start": c["val_loss"].iloc[0], "val_loss_final": c["val_loss"].iloc[-1],
                       "val_margin_start": c["val_margin"].iloc[0], "val_margin_final": c["val_margin"].iloc[-1]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("group")


def markdown(table: pd.DataFrame, cuts: tuple[float, float], figure: str) -> str:
    """report.md of the study: the table and the figure's relative link."""
    return (f"# IF groups\n\nThe pool split at IF percentiles {cuts[0]:.1f} / {cuts[1]:.1f}; DPO from θ on each group "
            f"for the same number of steps.\n\n{markdown_table(table, digits=4)}\n\n![validation curves]({figure})\n")
