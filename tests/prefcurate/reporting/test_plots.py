"""Figures: valid PNGs, deterministic, and drawn from the data they are given."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prefcurate.config import SelectionConfig
from prefcurate.errors import DataError
from prefcurate.reporting import plots
from prefcurate.selection.rules import select
from tests.prefcurate.synthetic import correlated_scores


@pytest.fixture(scope="module")
def scores() -> pd.DataFrame:
    return correlated_scores(400, seed=0)


@pytest.fixture(scope="module")
def leaderboard() -> pd.DataFrame:
    return pd.DataFrame({"model": ["selected", "full", "random", "sft"], "win_rate": [64.5, 55.2, 41.0, 50.0],
                         "standard_error": [3.1, 3.4, 3.3, float("nan")]})


def _image(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _pixels(png: bytes, hex_color: str) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(_image(png).astype(int) - rgb).sum(axis=2) <= 6).sum())


def test_kept_pairs_are_coloured_by_membership(scores):
    none = plots.lossdiff_vs_irm(scores, kept=[])
    half = plots.lossdiff_vs_irm(scores, kept=scores["pair_id"][:200])
    every = plots.lossdiff_vs_irm(scores, kept=scores["pair_id"])
    assert _pixels(none, plots.KEPT) < 50  # only the legend marker
    assert _pixels(half, plots.KEPT) > 20 * _pixels(none, plots.KEPT)
    assert _pixels(every, plots.KEPT) > _pixels(half, plots.KEPT)
    assert _pixels(every, plots.DROPPED) < _pixels(half, plots.DROPPED)


def test_band_lines_follow_the_selection(scores):
    narrow = select(scores, SelectionConfig(band=(30.0, 70.0)))
    wide = select(scores, SelectionConfig(band=(5.0, 95.0)))
    a, b = plots.lossdiff_vs_irm(scores, narrow), plots.lossdiff_vs_irm(scores, wide)
    assert a != b
    assert _pixels(a, plots.BAND) > 0 and _pixels(plots.lossdiff_vs_irm(scores, narrow.kept_ids), plots.BAND) == 0
    assert plots.lossdiff_vs_irm(scores, narrow) == a  # same inputs, same bytes


def test_score_distributions_draw_each_available_score(scores):
    sel = select(scores, SelectionConfig())
    with_if = _image(plots.score_distributions(scores, sel))
    without_if = _image(plots.score_distributions(scores.assign(**{"if": np.nan}), sel))
    assert with_if.shape[1] > 1.3 * without_if.shape[1]  # three panels against two
    assert _pixels(plots.score_distributions(scores, sel), plots.KEPT) > 1000


def test_if_vs_proxies_reports_the_correlation(scores):
    png = plots.if_vs_proxies(scores)
    assert _image(png).shape[0] > 300
    assert plots.if_vs_proxies(scores.assign(lossdiff=-scores["lossdiff"])) != png
    with pytest.raises(DataError, match="no finite value"):
        plots.if_vs_proxies(scores.assign(**{"if": np.nan}))


def test_win_rate_bars_colour_by_significance(leaderboard):
    png = plots.win_rate_bars(leaderboard, reference="sft")
    assert _pixels(png, plots.KEPT) > 500  # selected: beyond its error bar above 50 %
    assert _pixels(png, plots.BAND) > 500  # random: below
    assert _pixels(png, plots.DROPPED) > 500  # full: error bar crosses 50 %
    tied = leaderboard.assign(win_rate=[50.0, 51.0, 49.0, 50.0])
    assert _pixels(plots.win_rate_bars(tied, reference="sft"), plots.KEPT) < 50
    indexed = leaderboard.set_index("model")
    assert plots.win_rate_bars(indexed, reference="sft") == png
    with pytest.raises(DataError, match="besides the reference"):
        plots.win_rate_bars(leaderboard[leaderboard.model == "sft"], reference="sft")


def test_write_figures_writes_what_the_inputs_allow(scores, leaderboard, tmp_path):
    sel = select(scores, SelectionConfig())
    written = plots.write_figures(str(tmp_path), scores, sel, leaderboard, reference="sft")
    assert set(written) == set(plots.FIGURES) - {"replicates"}  # one seed: no interval to draw
    for name, uri in written.items():
        assert uri == str(tmp_path / plots.FIGURES[name])
        _image(open(uri, "rb").read())
    nightly = plots.write_figures(str(tmp_path / "n"), scores.drop(columns=["if", "tif"]), sel)
    assert set(nightly) == {"score_distributions", "lossdiff_vs_irm"}


def _seeds(selected, others) -> tuple[pd.DataFrame, pd.DataFrame]:
    from prefcurate.evaluation.replicates import summarize

    by_seed = pd.DataFrame({"selected": selected, **others, "sft": [50.0] * len(selected)}).rename_axis("seed")
    return summarize(by_seed), by_seed


def test_replicate_intervals_colour_the_paired_differences_by_what_the_seeds_show():
    beaten = _seeds([64.0, 66.0, 65.0], {"full": [58.0, 59.0, 58.5]})  # selected ahead on every seed
    png = plots.replicate_intervals(*beaten, reference="sft")
    assert _pixels(png, plots.KEPT) > 50 and _pixels(png, plots.BAND) < 10
    losing = _seeds([58.0, 59.0, 58.5], {"full": [64.0, 66.0, 65.0]})
    png_losing = plots.replicate_intervals(*losing, reference="sft")
    assert _pixels(png_losing, plots.BAND) > 50
    assert plots.replicate_intervals(*beaten, reference="sft") == png  # deterministic
    with pytest.raises(DataError, match="at least two seeds"):
        plots.replicate_intervals(*_seeds([64.0], {"full": [58.0]}), reference="sft")


def test_write_figures_draws_the_replicates_when_given(tmp_path):
    written = plots.write_figures(str(tmp_path), replicates=_seeds([64.0, 66.0], {"full": [58.0, 60.0]}), reference="sft")
    assert set(written) == {"replicates"}
    _image(open(written["replicates"], "rb").read())
