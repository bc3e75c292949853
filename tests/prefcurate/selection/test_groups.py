"""IF groups: disjoint, covering the pool, cut by rank at the configured percentiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from prefcurate.config import IFGroupSettings
from prefcurate.errors import SelectionError
from prefcurate.selection.groups import GROUPS, if_groups
from tests.prefcurate.synthetic import correlated_scores


def test_groups_are_disjoint_cover_the_pool_and_are_ordered_by_if():
    scores = correlated_scores(100, seed=1)
    scores.loc[:9, "if"] = 0.0  # ties are broken by pair_id, not by row order
    split = if_groups(scores.sample(frac=1.0, random_state=0), IFGroupSettings().cuts)
    assert sorted(split["pair_id"]) == sorted(scores["pair_id"]) and split["pair_id"].is_unique
    assert split["group"].value_counts().to_dict() == {"low": 33, "medium": 34, "high": 33}
    ranges = [split.loc[split["group"] == g, "if"] for g in GROUPS]
    assert ranges[0].max() <= ranges[1].min() and ranges[1].max() <= ranges[2].min()
    again = if_groups(scores, IFGroupSettings().cuts)  # another row order, the same split
    assert again.set_index("pair_id")["group"].to_dict() == split.set_index("pair_id")["group"].to_dict()


def test_configured_cuts_set_the_group_sizes():
    split = if_groups(correlated_scores(200, seed=2), (10.0, 90.0))
    assert split["group"].value_counts().to_dict() == {"low": 20, "medium": 160, "high": 20}


def test_missing_if_or_an_empty_group_is_refused_in_one_line():
    scores = correlated_scores(20, seed=3)
    with pytest.raises(SelectionError, match="compute_if=true"):
        if_groups(scores.assign(**{"if": np.nan}), (33.0, 66.0))
    with pytest.raises(SelectionError, match=r"\['low'\] are empty"):
        if_groups(pd.DataFrame({"pair_id": ["a", "b"], "if": [0.1, 0.2]}), (10.0, 50.0))
    with pytest.raises(ValidationError, match="0 < lo < hi < 100"):
        IFGroupSettings(cuts=(60.0, 40.0))
