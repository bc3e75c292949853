"""`prefcurate study`: one curate run per seed, aggregated across seeds."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.flows.conftest import toy_config

pytestmark = pytest.mark.slow


def test_study_runs_every_seed_and_reports_paired_differences(toy_world, prefect_harness, tmp_path):
    from prefcurate.flows.cli import app

    config = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}",
                        evaluation={"baselines": ["sft", "random", "full-steps"]})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["study", "--config", str(tmp_path / "study.yaml"), "--seeds", "0,1", "--name", "t"])
    assert result.exit_code == 0, result.output
    per_seed = pd.read_csv(tmp_path / "runs" / "study-t" / "per_seed.csv", index_col=0)
    for seed in (0, 1):  # each replicate is a curate run of its own, with every seed set
        board = pd.read_csv(tmp_path / "runs" / f"t-seed{seed}" / "eval" / "leaderboard.csv", index_col=0)
        assert per_seed.loc[seed].to_dict() == pytest.approx(board["win_rate"].to_dict())
        selection = yaml.safe_load((tmp_path / "runs" / f"t-seed{seed}" / "selection" / "rules" / "random" / "selection.json").read_text())
        assert selection["params"]["seed"] == seed
    assert set(per_seed.columns) == {"selected", "sft", "random", "full-steps"}
    table = pd.read_csv(tmp_path / "runs" / "study-t" / "study.csv", index_col=0)
    diff = per_seed["selected"] - per_seed["random"]
    assert table.loc["random", "diff_vs_selected"] == pytest.approx(diff.mean())
    assert "selected − model" in result.output and "Study: " in result.output
    assert f"Figure: {tmp_path / 'runs' / 'study-t' / 'study.png'}" in result.output
    assert (tmp_path / "runs" / "study-t" / "study.png").read_bytes().startswith(b"\x89PNG")
    # the same command ran the IF-group study on the first replicate and verified both
    study_md = (tmp_path / "runs" / "study-t" / "study.md").read_text()
    curves = tmp_path / "runs" / "t-seed0" / "figures" / "if_groups.png"
    assert "## IF groups (replicate seed 0)" in study_md and "(../t-seed0/figures/if_groups.png)" in study_md
    assert curves.read_bytes().startswith(b"\x89PNG") and f"IF groups: {curves}" in result.output
    groups = pd.read_csv(tmp_path / "runs" / "t-seed0" / "if-groups" / "table.csv", index_col=0)
    assert list(groups.index) == ["low", "medium", "high"] and groups["steps"].nunique() == 1
    verify_rows = [line for line in study_md.split("## Verify")[1].splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(verify_rows) == 2 and all(row.rstrip(" |").endswith("ok") for row in verify_rows)
    # full-steps trained the whole pool for the selection's optimiser steps, not final_epochs
    import json

    manifest = json.loads((tmp_path / "runs" / "t-seed0" / "manifests" / "final-full-steps.json").read_text())
    selected = json.loads((tmp_path / "runs" / "t-seed0" / "manifests" / "final-selected.json").read_text())
    ingest = json.loads((tmp_path / "runs" / "t-seed0" / "manifests" / "ingest.json").read_text())
    assert manifest["n_pairs"] == ingest["n_train"] and abs(manifest["steps"] - selected["steps"]) <= 1


def test_study_refuses_bad_arguments_in_one_line(tmp_path):
    from prefcurate.flows.cli import app

    for args, message in ((["--seeds", "a,b", "--toy", "small"], "comma-separated integers"),
                          ([], "give --config or --toy"), (["--toy", "huge"], "--toy must be small or default")):
        result = CliRunner().invoke(app, ["study", *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_study_refuses_seeds_inside_each_replicate(tmp_path):
    from prefcurate.config import RunConfig
    from prefcurate.errors import ConfigError
    from prefcurate.flows.study import study

    config = RunConfig.model_validate({"root": str(tmp_path), "model": {"uri": "m"}, "data": {"pool_uri": "p.parquet"},
                                       "evaluation": {"seeds": [0, 1]}})
    with pytest.raises(ConfigError, match="one curate per seed already"):
        study.fn([config])


def test_study_exits_1_and_names_the_check_when_a_replicate_fails_verification(toy_world, tmp_path, monkeypatch):
    from prefcurate.flows import study as study_module
    from prefcurate.flows.cli import app
    from prefcurate.verify import Check, VerifyReport

    def failing() -> VerifyReport:
        checks = [Check(name="if", n=8, max_abs_error=0.1, max_rel_error=0.02, tolerance=1e-4),
                  Check(name="irm", n=8, max_abs_error=0.0, max_rel_error=0.0, tolerance=1e-4)]
        return VerifyReport(run_uri="r", dtype="float32", sample=8, n_pool=8, seed=0, checks=checks)

    seen = {}

    def fake_study(configs, **options):
        seen.update(options, seeds=[c.training.seed for c in configs])
        return study_module.StudyResult(study_uri=str(tmp_path / "s"), runs={0: "r0", 1: "r1"}, table=[], markdown="",
                                        verify={0: failing(), 1: failing().model_copy(update={"checks": []})})

    monkeypatch.setattr(study_module, "study", fake_study)
    config = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["study", "--config", str(tmp_path / "study.yaml"), "--seeds", "0,1", "--no-if-groups"])
    assert result.exit_code == 1, result.output
    assert "error: verify beyond tolerance (seed 0: if)" in result.output
    assert seen == {"name": "study", "if_groups": False, "verify": True, "seeds": [0, 1]}
