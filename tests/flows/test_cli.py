"""The `prefcurate curate/nightly/evaluate` commands: an end-to-end run and one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from prefcurate.flows.cli import app


@pytest.mark.slow
def test_curate_cli_end_to_end(curated):
    assert curated.exit_code == 0, curated.stdout
    out = curated.stdout
    # the leaderboard the user reads: every model with a standard error, and the kept fraction
    board = pd.read_csv(curated.run / "eval" / "leaderboard.csv", index_col=0)
    assert set(board.index) == {"selected", "full", "random", "sft"}
    for model, row in board.iterrows():
        assert f"{row['win_rate']:.1f} ± {row['standard_error']:.1f}" in out, model
    selection = pd.read_parquet(curated.run / "selection" / "selection.parquet")
    assert f"kept {len(selection)} of 240 pairs" in out
    # the ingestion counts, which conserve: rows read = train + validation + rejected
    train = pd.read_parquet(curated.run / "data" / "train.parquet")
    validation = pd.read_parquet(curated.run / "data" / "validation.parquet")
    rejects = pd.read_parquet(curated.run / "data" / "rejects.parquet")
    read = len(train) + len(validation) + len(rejects)
    assert f"Data: read {read} rows; train {len(train)}, validation {len(validation)}" in out
    assert f"rejected {len(rejects)}" in out
    assert "Overlap with the TIF selection" in out and "kappa" in out
    assert f"Run root:   {curated.run}" in out
    assert "models:/toy-selected@candidate (version 1" in out
    assert f"mlflow ui --backend-store-uri {curated.tracking_uri}" in out


def test_invalid_config_fails_before_work_with_field_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: {uri: m}\ndata: {pool_uri: p}\nroot: " + str(tmp_path / "runs") + "\n")
    result = CliRunner().invoke(app, ["curate", "--config", str(config), "--set", "training.learning_rate=-1"])
    assert result.exit_code == 2
    assert "training.learning_rate" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing started


def test_unknown_key_and_bad_choice_are_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: {uri: m}\ndata: {pool_uri: p}\n")
    result = CliRunner().invoke(app, ["curate", "--config", str(config), "--set", "selection.rule=best"])
    assert result.exit_code == 2 and "selection.rule" in result.output
    result = CliRunner().invoke(app, ["nightly", "--config", str(config), "--set", "scaleout.task_runner=ray"])
    assert result.exit_code == 2 and "scaleout.task_runner" in result.output
    threads = ["--set", "scaleout.task_runner=dask", "--set", "scaleout.processes=false"]
    result = CliRunner().invoke(app, ["curate", "--config", str(config), *threads])
    assert result.exit_code == 2 and "scaleout.processes" in result.output  # jvp is not thread-safe
    result = CliRunner().invoke(app, ["curate", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_evaluate_cli_checks_models(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--model", "a=x.json", "--model", "broken"])
    assert result.exit_code == 2 and "NAME=URI" in result.output
    result = CliRunner().invoke(app, ["evaluate", "--model", "a=ckpt_dir", "--model", "b=y.json", "--reference", "b"])
    assert result.exit_code == 2 and "eval_prompts_uri" in result.output


@pytest.mark.parametrize("name", ["curate.yaml", "toy.yaml"])
def test_example_configs_are_valid_run_configs(name):
    from pathlib import Path

    from prefcurate.config import RunConfig, load_config

    config = load_config(RunConfig, Path(__file__).parents[2] / "examples" / "configs" / name)
    assert config.selection.rule == "lossdiff-irm"
