"""report.md: the numbers it is given, in the sections a reader looks for, with no secrets."""

from __future__ import annotations

import pandas as pd
import pytest

from prefcurate.config import SelectionConfig
from prefcurate.reporting import report
from prefcurate.selection.agreement import agreement_report
from prefcurate.selection.rules import select
from prefcurate.tracking import RunHandle
from tests.prefcurate.synthetic import correlated_scores


@pytest.fixture(scope="module")
def scores() -> pd.DataFrame:
    return correlated_scores(300, seed=1)


LEADERBOARD = pd.DataFrame({
    "model": ["selected", "full", "random", "sft"],
    "win_rate": [64.25, 55.5, 48.75, 50.0],
    "standard_error": [3.125, 3.5, 3.375, float("nan")],
    "length_controlled_winrate": [62.0, 54.0, 49.0, 50.0],
    "lc_standard_error": [2.5, 2.75, 2.25, float("nan")],
    "n_total": [200, 200, 200, 200],
})


def _section(markdown: str, title: str) -> str:
    body = markdown.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def test_full_report_carries_every_number(scores):
    selection = select(scores, SelectionConfig(band=(10.0, 90.0)))
    agreement = agreement_report(scores, {"lossdiff-irm": selection})
    handle = RunHandle(tracking_uri="sqlite:///mlflow.db", run_id="r123", experiment_id="4")
    md = report.render_report(
        run_name="demo", run_root="runs/demo", model_uri="runs/world/sft", model_fingerprint="fp-9a8b",
        counts={"rows_read": 1012, "train": 850, "validation": 150, "rejected": 12},
        rejects_by_reason={"identical_responses": 9, "prompt_mismatch": 3},
        selection=selection, agreement=agreement, leaderboard=LEADERBOARD, reference="sft",
        figures={"win_rates": "runs/demo/figures/win_rates.png", "elsewhere": "s3://b/x.png"}, tracking=handle,
    )
    assert "fp-9a8b" in md and "runs/world/sft" in md
    assert f"{selection.n_kept} of {selection.n_pool} pairs (**{100 * selection.kept_fraction:.1f} %**)" in md
    assert "| rows_read | 1012 |" in _section(md, "Data") and "| prompt_mismatch | 3 |" in md
    lo, hi = selection.params["thresholds"]["lossdiff"]
    assert f"lossdiff=[{lo:.4g}, {hi:.4g}]" in _section(md, "Selection")
    pearson = agreement.correlations.loc["lossdiff", "pearson"]
    assert f"| lossdiff | {pearson:.3f} |" in _section(md, "Agreement of the cheap scores with exact influence")
    board = _section(md, "Leaderboard")
    assert "| selected | 64.2 ± 3.1 | 62.0 ± 2.5 | 200 |" in board
    assert "| sft | 50.0 | 50.0 | 200 |" in board
    rows = [line for line in board.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| selected", "| full", "| random", "| sft"]
    assert "![win_rates](figures/win_rates.png)" in md and "![elsewhere](s3://b/x.png)" in md
    assert "http://127.0.0.1:5000/#/experiments/4/runs/r123" in md
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in md


def test_nightly_report_has_no_empty_sections(scores):
    md = report.render_report(run_name="nightly", run_root="s3://bucket/runs/n",
                              selection=select(scores, SelectionConfig()))
    assert "## Selection" in md
    for absent in ("## Leaderboard", "## Figures", "## Agreement", "## Data", "MLflow run"):
        assert absent not in md


def test_report_hides_credentials_and_is_written_atomically(tmp_path):
    md = report.render_report(run_name="x", run_root="https://user:hunter2@store.example/runs",
                              model_uri="https://bob:pw123@hub.example/m",
                              tracking=RunHandle(tracking_uri="https://u:tok@mlflow.example", run_id="r",
                                                 experiment_id="1"))
    assert "hunter2" not in md and "pw123" not in md and "tok@" not in md
    assert "https://mlflow.example/#/experiments/1/runs/r" in md
    uri = report.write_report(md, str(tmp_path))
    assert uri == str(tmp_path / "report.md") and (tmp_path / "report.md").read_text() == md


def test_markdown_table_escapes_pipes_and_shows_missing_values():
    table = report.markdown_table(pd.DataFrame({"a": ["x|y", None], "b": [1.23456, float("nan")]}))
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.235 |", "| – | – |"]


def test_prefect_artifact_embeds_the_figures(tmp_path):
    """The Prefect markdown artifact has no directory to resolve `figures/x.png` against: figures go inline."""
    import base64

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "scores.png").write_bytes(png)
    figures = {"scores": str(tmp_path / "figures" / "scores.png")}
    markdown = report.render_report(run_name="r", run_root=str(tmp_path), figures=figures)
    assert "![scores](figures/scores.png)" in markdown  # report.md beside its figures: relative links
    inline = report.inline_figures(markdown, figures, str(tmp_path))
    assert f"![scores](data:image/png;base64,{base64.b64encode(png).decode()})" in inline
    assert "figures/scores.png" not in inline


def test_head_to_head_and_replicates_sections():
    direct = pd.DataFrame({"model": "selected", "opponent": ["full", "random"], "win_rate": [58.25, 61.0],
                           "standard_error": [3.5, float("nan")], "n_wins": [60, 70], "n_wins_base": [40, 38],
                           "n_draws": [100, 92], "n_total": [200, 200]})
    md = report.render_report(run_name="r", run_root="runs/r", leaderboard=LEADERBOARD, reference="sft", head_to_head=direct)
    section = _section(md, "Head to head")
    assert "| full | 58.2 ± 3.5 | 60 | 40 | 100 | 200 |" in section and "| random | 61.0 | 70 |" in section
    assert "## Replicates" not in md  # one seed: no interval is shown, none is made up
    seeds = report.render_report(run_name="r", run_root="runs/r", replicates="| model | seeds | mean | 95 % CI |\n")
    assert "| model | seeds | mean | 95 % CI |" in _section(seeds, "Replicates") and "## Leaderboard" not in seeds
