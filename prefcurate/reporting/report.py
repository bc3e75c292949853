"""The run report (report.md): what went in, what was kept, how well it did, where to look.

One markdown file beside the run's artifacts, also shown as a Prefect markdown artifact and
logged to MLflow. It only formats numbers computed elsewhere (ingest counts, the Selection,
the AgreementReport, the leaderboard); it computes nothing it could get wrong silently.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Mapping

import pandas as pd

from prefcurate import io
from prefcurate.selection.agreement import AgreementReport
from prefcurate.selection.selection import Selection
from prefcurate.tracking import RunHandle, redact_uri, run_url, ui_command


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; a named index becomes the first column."""
    if frame.index.name is not None:
        frame = frame.reset_index()
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _pm(value: Any, error: Any) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return "–"
    if error is None or isinstance(error, float) and math.isnan(error):
        return f"{value:.1f}"
    return f"{value:.1f} ± {error:.1f}"


def leaderboard_table(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as shown to people: win rates with their standard errors side by side."""
    board = leaderboard.set_index("model") if "model" in leaderboard.columns else leaderboard
    out = pd.DataFrame(index=pd.Index([str(i) for i in board.index], name="model"))
    shown = [("win rate % (± s.e.)", "win_rate", "standard_error"),
             ("LC win rate % (± s.e.)", "length_controlled_winrate", "lc_standard_error"),
             ("single score (± s.e.)", "single_score", "single_score_standard_error")]
    for title, value, error in shown:
        if value in board:
            errors = board[error] if error in board else [None] * len(board)
            out[title] = [_pm(v, e) for v, e in zip(board[value], errors)]
    for name in ("n_wins", "n_draws", "n_total", "avg_length"):
        if name in board:
            out[name] = [None if pd.isna(v) else (int(v) if name != "avg_length" else float(v)) for v in board[name]]
    return out


def _link(uri: str, run_root: str) -> str:
    root = run_root.rstrip("/") + "/"
    return uri[len(root):] if uri.startswith(root) else uri


def inline_figures(markdown: str, figures: Mapping[str, str], run_root: str) -> str:
    """The report with each figure embedded as a data URI: for viewers that have no file next to the
    report to resolve a relative link against (a Prefect markdown artifact)."""
    for uri in figures.values():
        data = base64.b64encode(io.read_bytes(uri)).decode("ascii")
        markdown = markdown.replace(f"]({_link(uri, run_root)})", f"](data:image/png;base64,{data})")
    return markdown


def render_report(
    *,
    run_name: str,
    run_root: str,
    model_uri: str | None = None,
    model_fingerprint: str | None = None,
    counts: Mapping[str, int] | None = None,
    rejects_by_reason: Mapping[str, int] | None = None,
    selection: Selection | None = None,
    agreement: AgreementReport | None = None,
    leaderboard: pd.DataFrame | None = None,
    reference: str | None = None,
    figures: Mapping[str, str] | None = None,
    tracking: RunHandle | None = None,
    notes: list[str] | None = None,
    head_to_head: pd.DataFrame | None = None,
    replicates: str | None = None,
) -> str:
    """report.md for one run; sections whose inputs are absent (e.g. nightly: no leaderboard) are left out.

    `counts` are the data counts by name (rows_read, train, validation, rejected, …);
    `figures` maps a figure name to its URI (linked relative to `run_root` when under it);
    `head_to_head` is one seed's direct judgments of the selection (`evaluate.head_to_head`), `replicates`
    the markdown of several seeds' summary (`replicates.markdown`, its own head-to-head table included).
    """
    root = redact_uri(run_root)
    out = [f"# prefcurate run `{run_name}`", ""]
    if model_uri or model_fingerprint:
        out.append(f"- **Model**: `{redact_uri(model_uri or '?')}` (fingerprint `{model_fingerprint or '?'}`)")
    out.append(f"- **Run root**: `{root}`")
    if selection is not None:
        out.append(f"- **Kept**: {selection.n_kept:,} of {selection.n_pool:,} pairs "
                   f"(**{100 * selection.kept_fraction:.1f} %**) by rule `{selection.rule}`")
    out.append("")

    if counts:
        out += ["## Data", "", markdown_table(pd.DataFrame({"rows": dict(counts)}).rename_axis("set")), ""]
    if rejects_by_reason:
        total = sum(rejects_by_reason.values())
        out += [f"Rejected rows: {total:,} (see `data/rejects.parquet` for each row and its reason).", "",
                markdown_table(pd.DataFrame({"rows": dict(rejects_by_reason)}).rename_axis("reason")), ""]

    if selection is not None:
        out += ["## Selection", "", f"Rule `{selection.rule}`, parameters:", ""]
        out += [f"- `{key}`: {_fmt(value)}" for key, value in selection.params.items()]
        out.append("")

    if agreement is not None:
        out += ["## Agreement of the cheap scores with exact influence", ""]
        sections = [("Correlation with IF", agreement.correlations),
                    ("Overlap with the TIF selection (at each selection's size; then each rule resized to TIF's size)", agreement.overlap),
                    ("Defect detection (AUROC)", agreement.detection),
                    ("Pairs removed by each selection", agreement.removal)]
        for title, table in sections:
            if not table.empty:
                out += [f"**{title}**", "", markdown_table(table), ""]
        out += [f"> {note}" for note in agreement.notes] + ([""] if agreement.notes else [])

    if leaderboard is not None and not leaderboard.empty:
        against = f" against `{reference}` (50 % = tie)" if reference else ""
        out += ["## Leaderboard", "", f"Win rates{against}, ± one standard error.", "",
                markdown_table(leaderboard_table(leaderboard), digits=1), ""]
    if head_to_head is not None and not head_to_head.empty:
        table = pd.DataFrame({"opponent": head_to_head["opponent"].astype(str),
                              "win rate % of selected (± s.e.)": [_pm(v, e) for v, e in zip(head_to_head["win_rate"],
                                                                                             head_to_head["standard_error"])],
                              "n_wins": head_to_head["n_wins"], "n_wins_base": head_to_head["n_wins_base"],
                              "n_draws": head_to_head["n_draws"], "n_total": head_to_head["n_total"]})
        out += ["## Head to head", "", "`selected` judged directly against each model (its win rate; 50 % = tie), "
                "± one standard error clustered by prompt.", "", markdown_table(table, digits=1), ""]
    if replicates:
        out += ["## Replicates", "", replicates.rstrip(), ""]

    if figures:
        out += ["## Figures", ""]
        out += [f"![{name}]({_link(uri, run_root)})" for name, uri in figures.items()]
        out.append("")

    out += ["## Where to look", "", f"- Artifacts: `{root}`"]
    if tracking is not None:
        out += [f"- MLflow run: {run_url(tracking)}", f"- MLflow UI: `{ui_command(tracking.tracking_uri)}`"]
    out.append("- Prefect UI: `prefect server start`, then http://127.0.0.1:4200")
    out += [f"- Note: {note}" for note in notes or []]
    return "\n".join(out) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else _cell(value)


def write_report(markdown: str, run_root: str) -> str:
    """Write report.md at the run root (atomic); returns its URI."""
    return io.write_text(io.join(run_root, "report.md"), markdown)
