"""`evaluation.seeds` inside one curate run: final training, generation and judging per seed (each its own
cached stage), scoring and selection once, means and intervals across the seeds."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.flows.conftest import stage_outputs, toy_config

pytestmark = pytest.mark.slow


def test_two_seeds_train_each_model_twice_and_report_intervals(toy_world, prefect_harness, tmp_path):
    from prefcurate.config import RunConfig, load_config
    from prefcurate.flows.cli import app
    from prefcurate.flows.curate import curate

    config = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}", run_name="seeds",
                        evaluation={"baselines": ["sft", "random"], "seeds": [0, 1]})
    (tmp_path / "seeds.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["curate", "--config", str(tmp_path / "seeds.yaml")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "seeds"
    outputs = stage_outputs(run)
    # scoring and selection once; every final model, its answers and the judging once per seed
    assert "select" in outputs and not any(s.startswith("select-") for s in outputs)
    for seed in (0, 1):
        for model in ("selected", "random"):
            assert outputs[f"final-{model}-seed{seed}"].model.uri == str(run / "models" / "final" / f"{model}-seed{seed}")
        for model in ("selected", "random", "sft"):
            assert f"generate-{model}-seed{seed}" in outputs
        assert (run / "eval" / f"seed{seed}" / "leaderboard.csv").exists()
        assert (run / "eval" / f"seed{seed}" / "head_to_head.csv").exists()
    assert not any(s in outputs for s in ("final-selected", "judge"))
    # the seed is the training seed: two trainings of one model on the same pairs differ
    assert outputs["final-selected-seed0"].fingerprint != outputs["final-selected-seed1"].fingerprint
    assert outputs["final-selected-seed0"].n_pairs == outputs["final-selected-seed1"].n_pairs == outputs["select"].n_kept

    per_seed = pd.read_csv(run / "eval" / "per_seed.csv", index_col=0)
    for seed in (0, 1):
        board = pd.read_csv(run / "eval" / f"seed{seed}" / "leaderboard.csv", index_col=0)
        assert per_seed.loc[seed].to_dict() == pytest.approx(board["win_rate"].to_dict())
    table = pd.read_csv(run / "eval" / "replicates.csv", index_col=0)
    selected = table.loc["selected"]
    assert selected["seeds"] == 2 and selected["ci_low"] < selected["mean"] < selected["ci_high"]
    diff = per_seed["selected"] - per_seed["random"]
    assert table.loc["random", "diff_vs_selected"] == pytest.approx(diff.mean())
    assert table.loc["random", "diff_ci_low"] <= diff.mean() <= table.loc["random", "diff_ci_high"]
    direct = pd.read_csv(run / "eval" / "head_to_head_seeds.csv", index_col=0)
    seed_direct = [pd.read_csv(run / "eval" / f"seed{s}" / "head_to_head.csv").set_index("opponent") for s in (0, 1)]
    assert direct.loc["random", "mean"] == pytest.approx((seed_direct[0].loc["random", "win_rate"]
                                                          + seed_direct[1].loc["random", "win_rate"]) / 2)
    report = (run / "report.md").read_text()
    assert "## Replicates" in report and "95 % CI" in report and "Head to head" in report
    assert "![replicates](figures/replicates.png)" in report and "![win_rates]" not in report
    assert (run / "figures" / "replicates.png").read_bytes().startswith(b"\x89PNG")
    assert "Replicates (2 seeds" in result.output and "selected vs random" in result.output
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config["tracking"]["tracking_uri"])
    parent = client.search_runs([client.get_experiment_by_name("flows-test").experiment_id],
                                filter_string="tags.`prefcurate.flow` = 'curate'")[0]
    assert parent.data.metrics["mean_win_rate.selected"] == pytest.approx(selected["mean"])
    steps = client.get_metric_history(parent.info.run_id, "win_rate.selected")
    assert {m.step: m.value for m in steps} == pytest.approx(per_seed["selected"].to_dict())

    # a rerun reuses every per-seed stage; a lost seed-1 model retrains that one stage only
    before = stage_outputs(run)
    (run / "manifests" / "final-random-seed1.json").unlink()
    curate(load_config(RunConfig, tmp_path / "seeds.yaml"))
    after = stage_outputs(run)
    assert set(after) == set(before)
    changed = {s for s in before if after[s].meta.created_at != before[s].meta.created_at}
    assert changed == {"final-random-seed1"}, changed  # same seed, same model: nothing downstream changes
    assert after["final-random-seed1"].fingerprint == before["final-random-seed1"].fingerprint


def test_one_seed_keeps_the_single_run_layout_without_intervals(curated):
    assert curated.exit_code == 0, curated.stdout
    outputs = stage_outputs(curated.run)
    assert "judge" in outputs and "final-selected" in outputs and "replicates" not in outputs
    assert not (curated.run / "eval" / "replicates.csv").exists()
    direct = pd.read_csv(curated.run / "eval" / "head_to_head.csv").set_index("opponent")
    assert set(direct.index) == {"full", "random", "sft"}
    board = pd.read_csv(curated.run / "eval" / "leaderboard.csv", index_col=0)
    # selected against sft directly is the leaderboard's selected row (sft is the reference)
    assert direct.loc["sft", "win_rate"] == pytest.approx(board.loc["selected", "win_rate"])
    report = (curated.run / "report.md").read_text()
    assert "## Head to head" in report and "## Replicates" not in report and "95 % CI" not in report
    assert "Head to head" in curated.stdout and "Replicates" not in curated.stdout
