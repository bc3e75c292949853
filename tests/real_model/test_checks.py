"""`prefcurate model check` and `data check` on the real model and a pool of real questions."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prefcurate.flows.cli import app

pytestmark = pytest.mark.real_model
runner = CliRunner()


def test_model_check(smollm2_dir):
    result = runner.invoke(app, ["model", "check", str(smollm2_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["architecture"] == "LlamaForCausalLM" and info["model_type"] == "llama"
    assert 134e6 < info["n_parameters"] < 135e6 and info["weight_format"] == "safetensors"
    assert info["chat_template"] and not info["chat_template_supplied"]


def test_data_check_with_token_lengths(real_data, smollm2_dir):
    args = ["data", "check", str(real_data.pool), "--model", str(smollm2_dir), "--max-length", "51"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows_read"] == summary["rows_kept"] == 36 and summary["rows_rejected"] == 0
    lengths = summary["lengths"]
    # SmolLM2's template adds its default system turn: 40 prompt tokens for a one-line question
    assert lengths["tokens"]["prompt"]["max"] == 41 and lengths["tokens"]["sequence"]["max"] == 53
    assert 0 < lengths["n_truncated"] < 36 and lengths["n_dropped"] == 0
    human = runner.invoke(app, args)
    assert f"max_length 51 (keep_start): {lengths['n_truncated']} pairs truncated, 0 dropped" in human.stdout
