"""Locations are absolute before a run starts; a worker without a base refuses relative ones."""

from __future__ import annotations

import pytest

from prefcurate.config import NightlyConfig
from prefcurate.errors import ConfigError
from prefcurate.locations import absolute_locations, tracking_uri


def _config(**extra) -> NightlyConfig:
    return NightlyConfig.model_validate({"model": {"uri": "m"}, "data": {"pool_uri": "p.parquet"}, **extra})


def test_every_written_location_is_made_absolute():
    config = absolute_locations(_config(store_uri="team/store", tracking={"artifact_location": "art"}), "/srv/base")
    assert (config.root, config.cache_dir, config.store_uri) == ("/srv/base/runs", "/srv/base/.prefcurate-cache",
                                                                 "/srv/base/team/store")
    assert config.tracking.tracking_uri == "sqlite:////srv/base/mlflow.db"
    assert config.tracking.artifact_location == "/srv/base/art"


def test_absolute_and_remote_locations_are_kept():
    config = absolute_locations(_config(root="s3://bucket/runs", cache_dir="/tmp/cache", publish_uri="s3://b/pub",
                                        tracking={"tracking_uri": "http://mlflow:5000"}), None)
    assert (config.root, config.cache_dir, config.publish_uri) == ("s3://bucket/runs", "/tmp/cache", "s3://b/pub")
    assert config.tracking.tracking_uri == "http://mlflow:5000"
    assert tracking_uri("sqlite:////abs/mlflow.db", None) == "sqlite:////abs/mlflow.db"


def test_a_worker_without_a_base_refuses_a_relative_location():
    with pytest.raises(ConfigError, match=r"root='runs' is relative.*PREFCURATE_BASE_DIR"):
        absolute_locations(_config(), None)


def test_run_names_fresh_from_a_deployment_stable_from_the_cli(monkeypatch, tmp_path):
    from prefcurate.flows.runs import resolve_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFCURATE_BASE_DIR", raising=False)
    here = resolve_run(_config(), "nightly")
    assert here.run_name == "nightly" and here.root == str(tmp_path / "runs")  # the CLI: a rerun resumes
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "0b6f3c3e-0000-4000-8000-000000000001")
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__NAME", "witty-lemur")
    with pytest.raises(ConfigError, match="PREFCURATE_BASE_DIR"):
        resolve_run(_config(), "nightly")
    monkeypatch.setenv("PREFCURATE_BASE_DIR", "/srv/prefcurate")
    ui = resolve_run(_config(), "nightly")
    assert ui.run_name == "witty-lemur" and ui.root == "/srv/prefcurate/runs"  # a UI run starts fresh
    assert resolve_run(_config(run_name="night-7"), "nightly").run_name == "night-7"  # a given name resumes
