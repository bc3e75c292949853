"""Deployments: prefect.yaml deploys through Prefect's own CLI, and `prefcurate serve` builds the same ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefcurate.config import DataSource, ModelSource, NightlyConfig
from prefcurate.errors import PrefcurateError

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {  # deployment → (entrypoint, flow name)
    "nightly-curation": ("flows/nightly.py:nightly", "nightly-curation"),
    "curate": ("flows/curate.py:curate", "curate"),
    "evaluate": ("flows/evaluate.py:evaluate", "evaluate"),
    "if-groups": ("flows/ifgroups.py:if_groups_flow", "if-groups"),
    "compare-models": ("flows/compare.py:compare_models", "compare-models"),
}
ON_DEMAND = [name for name in EXPECTED if name != "nightly-curation"]


def _leaves_without_description(schema: dict[str, Any]) -> list[str]:
    """Form fields of every model in a parameter schema (sections included) that lack a description."""
    missing = []
    for model, definition in schema.get("definitions", {}).items():
        for name, prop in definition.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{model}.{name}")
    return missing


def test_prefect_yaml_declares_the_deployments():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert {name: d["entrypoint"] for name, d in deployments.items()} == {k: v[0] for k, v in EXPECTED.items()}
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"prefcurate-process"}
    (schedule,) = deployments["nightly-curation"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and "prefect.variables.prefcurate_timezone" in schedule["timezone"]
    assert [name for name in ON_DEMAND if deployments[name].get("schedules")] == []


def test_prefect_yaml_is_rendered_from_the_one_definition():
    from prefcurate.flows.serve import prefect_yaml

    assert (ROOT / "prefect.yaml").read_text() == prefect_yaml(), "regenerate: python -m prefcurate.flows.serve > prefect.yaml"


def test_serve_builds_the_deployments_with_forms():
    from prefcurate.flows.serve import deployments

    config = NightlyConfig(model=ModelSource(uri="/models/sft"), data=DataSource(pool_uri="/data/pool.parquet"))
    built = {d.name: d for d in deployments(config, timezone="Europe/Berlin")}
    assert set(built) == set(EXPECTED)
    assert {d.entrypoint for d in built.values()} == {v[0] for v in EXPECTED.values()}
    (nightly,) = built["nightly-curation"].schedules
    assert nightly.schedule.cron == "0 2 * * *" and nightly.schedule.timezone == "Europe/Berlin" and nightly.active
    assert built["nightly-curation"].parameters["config"]["data"]["pool_uri"] == "/data/pool.parquet"
    assert all(not built[name].schedules and built[name].parameters == {} for name in ON_DEMAND)
    for name, deployment in built.items():
        schema = deployment._parameter_openapi_schema.model_dump()
        assert schema["required"] == ["config"], name
        assert _leaves_without_description(schema) == [], name
    rule = built["curate"]._parameter_openapi_schema.model_dump()["definitions"]["SelectionConfig"]["properties"]["rule"]
    assert "lossdiff-irm" in rule["enum"]  # choices render as a dropdown
    evaluate = built["evaluate"]._parameter_openapi_schema.model_dump()["definitions"]
    models = evaluate["EvaluateConfig"]["properties"]["models"]
    assert models["type"] == "array" and models["items"]["$ref"].endswith("/EvaluatedModel")  # a row per model, no JSON box
    assert set(evaluate["EvaluatedModel"]["properties"]) == {"name", "uri"}

    groups = built["if-groups"]._parameter_openapi_schema.model_dump()["definitions"]["IFGroupSettings"]["properties"]
    assert set(groups) == {"cuts", "steps", "eval_every"}
    compare = built["compare-models"]._parameter_openapi_schema.model_dump()["definitions"]["CompareModelsConfig"]
    assert "compare" in compare["required"]  # the second model is a required part of the form

    (idle,) = {d.name: d for d in deployments(None)}["nightly-curation"].schedules
    assert not idle.active  # nothing to curate without a config: scheduled but switched off
    with pytest.raises(PrefcurateError, match="IANA timezone"):
        deployments(None, timezone="Mars/Olympus")
    with pytest.raises(PrefcurateError, match="cron"):
        deployments(None, cron="every night")


def _ui_run(name: str, params: dict[str, Any]) -> Any:
    """What a run from the UI form goes through: the server checks the parameters against the
    deployment's schema, the worker validates them into the flow's config."""
    from prefect.utilities.schema_tools import validate

    from prefcurate.flows.serve import DEPLOYMENTS, deployments

    (deployment,) = [d for d in deployments(None) if d.name == name]
    validate(params, deployment._parameter_openapi_schema.model_dump(), raise_on_error=True)
    (flow,) = [d.flow for d in DEPLOYMENTS if d.name == name]
    return flow.validate_parameters(params)["config"]


def test_a_ui_run_of_the_study_deployments_validates_into_their_configs():
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.schema_tools import ValidationError

    from prefcurate.config import CompareModelsConfig, IFGroupsConfig

    base = {"model": {"uri": "/models/sft"}, "data": {"pool_uri": "s3://prefs/pool.parquet"}, "run_name": "study"}
    groups = _ui_run("if-groups", {"config": {**base, "if_groups": {"cuts": [20, 80], "steps": 40}}})
    assert isinstance(groups, IFGroupsConfig) and (groups.if_groups.cuts, groups.if_groups.steps) == ((20, 80), 40)
    compared = _ui_run("compare-models", {"config": {**base, "compare": {"model": {"uri": "/models/sft-b"}}}})
    assert isinstance(compared, CompareModelsConfig)
    first, second = compared.pipelines()
    assert (second.model.uri, second.run_name, first.model.uri) == ("/models/sft-b", "study-b", "/models/sft")

    with pytest.raises(ValidationError, match="compare"):  # the server refuses a form without the second model
        _ui_run("compare-models", {"config": base})
    with pytest.raises(ParameterTypeError, match="0 < lo < hi < 100"):  # the worker refuses cuts the schema cannot express
        _ui_run("if-groups", {"config": {**base, "if_groups": {"cuts": [80, 20]}}})


@pytest.mark.slow
def test_prefect_deploy_all_creates_them_on_a_server(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="prefcurate-process", type="process"))
        client.create_variable(VariableCreate(name="prefcurate_timezone", value="Europe/Berlin"))
        client.create_variable(VariableCreate(name="prefcurate_model_uri", value="/models/sft"))
        client.create_variable(VariableCreate(name="prefcurate_pool_uri", value="s3://prefs/new.parquet"))
    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "PREFECT_HOME": str(tmp_path), "PWD": str(ROOT)}
    prefect = Path(sys.executable).parent / "prefect"
    done = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    with get_client(sync_client=True) as client:
        deployed = {d.name: d for d in client.read_deployments()}
        flow_names = {d.name: client.read_flow(d.flow_id).name for d in deployed.values()}
    assert {name: (d.entrypoint, flow_names[name]) for name, d in deployed.items()} == EXPECTED
    nightly = deployed["nightly-curation"]
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "Europe/Berlin", True)
    assert nightly.parameters["config"]["model"]["uri"] == "/models/sft"
    assert nightly.parameters["config"]["data"]["pool_uri"] == "s3://prefs/new.parquet"
    assert nightly.global_concurrency_limit is not None and nightly.global_concurrency_limit.limit == 1
    assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    for name, deployment in deployed.items():
        assert deployment.work_pool_name == "prefcurate-process"
        assert _leaves_without_description(deployment.parameter_openapi_schema) == [], name


def test_ci_workflow_sends_a_valid_config_to_an_existing_deployment(tmp_path):
    from prefcurate.config import RunConfig

    workflow = yaml.safe_load((ROOT / "examples/ci/retrain.yml").read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["curate"]["steps"]}
    script = steps["Build the flow parameters"]["run"].split("<<'PY'\n", 1)[1].rsplit("PY", 1)[0]
    config = tmp_path / "curate.yaml"
    config.write_text("model: {uri: /models/sft}\ndata: {pool_uri: /data/old.parquet}\ntraining: {beta: 0.3}\n")
    env = {**os.environ, "CONFIG": str(config), "RUN_NAME": "ci-123456", "POOL_URI": "s3://prefs/new.parquet"}
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True)

    params = json.loads((tmp_path / "params.json").read_text())
    sent = RunConfig.model_validate(params["config"])  # what the deployment's schema will check
    assert (sent.run_name, sent.data.pool_uri, sent.training.beta) == ("ci-123456", "s3://prefs/new.parquet", 0.3)

    command = steps["Run curate and wait for it"]["run"]
    flow_name, deployment = command.split("prefect deployment run ", 1)[1].split()[0].split("/")
    assert (flow_name, deployment) == (EXPECTED["curate"][1], "curate")
    assert "--watch" in command and '--params "$(cat params.json)"' in command


def test_serve_command_serves_the_deployments_or_explains_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_BASE_DIR", str(tmp_path))  # `serve` sets it for its runs; not for later tests
    import prefect
    from typer.testing import CliRunner

    from prefcurate.flows.cli import app

    served: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments: served.extend(deployments))
    config = tmp_path / "nightly.yaml"
    config.write_text("model: {uri: /models/sft}\ndata: {pool_uri: /data/pool.parquet}\n")
    result = CliRunner().invoke(app, ["serve", "--config", str(config), "--set", "run_name=night",
                                      "--timezone", "Asia/Tokyo", "--cron", "30 1 * * *"])
    assert result.exit_code == 0, result.output
    by_name = {d.name: d for d in served}
    assert set(by_name) == set(EXPECTED)
    (schedule,) = by_name["nightly-curation"].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("30 1 * * *", "Asia/Tokyo", True)
    assert by_name["nightly-curation"].parameters["config"]["run_name"] == "night"

    bad = CliRunner().invoke(app, ["serve", "--timezone", "Mars/Olympus"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "IANA timezone" in bad.output
    bad = CliRunner().invoke(app, ["serve", "--config", str(config), "--set", "training.beta=-1"])
    assert bad.exit_code == 2 and "training.beta" in bad.output and "Traceback" not in bad.output
