"""Config forms that must read the way users write them."""

from __future__ import annotations

import logging

import pytest

from prefcurate.config import EvaluateConfig, NightlyConfig, RunConfig
from prefcurate.errors import ConfigError


def test_evaluate_models_are_a_typed_list_and_a_mapping_still_reads():
    listed = EvaluateConfig.model_validate({"models": [{"name": "sft", "uri": "a.json"}, {"name": "new", "uri": "b.json"}],
                                            "evaluation": {"reference": "sft"}})
    mapped = EvaluateConfig.model_validate({"models": {"sft": "a.json", "new": "b.json"}, "evaluation": {"reference": "sft"}})
    assert listed == mapped and listed.model_map() == {"sft": "a.json", "new": "b.json"}
    with pytest.raises(ValueError, match="unique"):
        EvaluateConfig.model_validate({"models": [{"name": "x", "uri": "a.json"}, {"name": "x", "uri": "b.json"}],
                                       "evaluation": {"reference": "x"}})


def test_nightly_reads_a_curate_config_with_one_warning(caplog):
    curate = RunConfig.model_validate({"model": {"uri": "m"}, "data": {"pool_uri": "p.parquet"},
                                       "evaluation": {"baselines": ["sft", "full"]}}).model_dump(mode="json")
    with caplog.at_level(logging.WARNING, logger="prefcurate.config"):
        nightly = NightlyConfig.model_validate(curate)
    assert nightly.model.uri == "m" and [r.message for r in caplog.records].count(
        "nightly ignores the config's `evaluation` section: it trains no final model and evaluates nothing") == 1
    with pytest.raises(ValueError):
        NightlyConfig.model_validate({**curate, "evalution": {}})  # a typo is still an error


def test_load_config_names_a_bad_refresh_policy(tmp_path):
    from prefcurate.config import load_config

    with pytest.raises(ConfigError, match="refresh.policy"):
        load_config(NightlyConfig, None, ["model.uri=m", "data.pool_uri=p.parquet", "refresh.policy=weekly"])


def test_evaluation_seeds_are_distinct_and_only_curate_repeats_them():
    from prefcurate.config import load_config

    base = ["model.uri=m", "data.pool_uri=p.parquet"]
    assert load_config(RunConfig, None, [*base, "evaluation.seeds=[0, 1, 2]"]).evaluation.seeds == [0, 1, 2]
    assert load_config(RunConfig, None, base).evaluation.seeds is None  # default: one run, today's seeds
    for bad, message in (("[0, 0]", "distinct"), ("[]", "evaluation.seeds")):
        with pytest.raises(ConfigError, match=message):
            load_config(RunConfig, None, [*base, f"evaluation.seeds={bad}"])
    with pytest.raises(ValueError, match="evaluate judges the given models once"):
        EvaluateConfig.model_validate({"models": {"sft": "a.json", "new": "b.json"},
                                       "evaluation": {"reference": "sft", "seeds": [0, 1]}})
