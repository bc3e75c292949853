"""The `reward-model` baseline: a toy reward model built by the CLI, its margins scored in a stage of their
own, the rule's top k at the selection's size trained and judged, `verify` checking it, resume reusing it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from prefcurate.flows.cli import app
from tests.flows.conftest import toy_config

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def reward_model(toy_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "reward-model"
    built = runner.invoke(app, ["toyworld", "reward-model", "--world", toy_world.root, "--out", str(out)])
    assert built.exit_code == 0, built.output
    assert f"reward model (seed 0, 2000 pairs) in {out}" in built.stdout
    again = runner.invoke(app, ["toyworld", "reward-model", "--world", toy_world.root, "--out", str(out)])
    assert again.stdout == built.stdout and "it/s" not in again.output  # reused, not trained again
    other = runner.invoke(app, ["toyworld", "reward-model", "--world", toy_world.root, "--out", str(out), "--seed", "5"])
    assert other.exit_code == 2 and "holds another model" in other.output and "Traceback" not in other.output
    return out


def test_the_toy_reward_model_learns_the_task_from_pairs_that_are_not_the_pool(toy_world, reward_model):
    from prefcurate import io
    from prefcurate.scoring.reward_model import RewardModel
    from prefcurate.toyworld.reward import RewardSpec, oracle_accuracy, reward_pairs

    pool = io.read_parquet(toy_world.pool_parquet)
    seen = {(p, c[-1]["content"], r[-1]["content"]) for p, c, r in zip(pool["prompt"], pool["chosen"], pool["rejected"])}
    drawn = reward_pairs(toy_world, RewardSpec(), seed=0)
    own = {(x["prompt"][0]["content"], x["chosen"][0]["content"], x["rejected"][0]["content"]) for x in drawn}
    assert len(own & seen) / len(own) < 0.2  # fresh draws: only short answers coincide with pool pairs by chance
    model = RewardModel.load(str(reward_model))
    validation = io.read_parquet(toy_world.validation_parquet)
    assert oracle_accuracy(model, validation) > 0.75  # far from chance (0.5): it knows the task
    meta = json.loads((reward_model / "prefcurate.json").read_text())
    assert meta["stats"]["oracle_accuracy_validation"] == pytest.approx(oracle_accuracy(model, validation), abs=1e-4)


def test_curate_trains_the_reward_model_baseline_at_the_selection_size_and_verify_checks_it(
        toy_world, reward_model, prefect_harness, tmp_path):
    from prefcurate.data.pairs import read_pairs
    from prefcurate.scoring.reward_model import RewardModel, pair_rewards

    config = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}", run_name="rm",
                        selection={"reward_model": {"uri": str(reward_model)}},
                        evaluation={"baselines": ["sft", "reward-model"], "single_score": False, "head_to_head": False})
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["curate", "--config", str(tmp_path / "rm.yaml")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "rm"
    rewards = pd.read_parquet(run / "scores" / "reward_scores.parquet")
    pairs = read_pairs(str(run / "data" / "train.parquet"))
    expected = pair_rewards(RewardModel.load(str(reward_model)), pairs)
    np.testing.assert_allclose(rewards["reward_margin"], expected["reward_margin"], atol=1e-5)
    manifest = json.loads((run / "manifests" / "reward-scores.json").read_text())
    assert manifest["pairs"] == manifest["n_scored"] == len(pairs)  # no store_uri: every pair scored here
    assert manifest["fingerprint"] == RewardModel.load(str(reward_model)).fingerprint

    selected = json.loads((run / "selection" / "selection.json").read_text())
    kept = pd.read_parquet(run / "selection" / "rules" / "reward-model" / "selection.parquet")["pair_id"]
    top = rewards.sort_values(["reward_margin", "pair_id"], ascending=[False, True]).head(selected["n_kept"])["pair_id"]
    assert set(kept) == set(top)  # the largest margins, as many as the selection keeps
    final = json.loads((run / "manifests" / "final-reward-model.json").read_text())
    assert final["n_pairs"] == selected["n_kept"]
    board = pd.read_csv(run / "eval" / "leaderboard.csv", index_col=0)
    assert {"selected", "sft", "reward-model"} <= set(board.index)

    verified = runner.invoke(app, ["verify", str(run), "--sample", "8", "--json"])
    report = json.loads(verified.stdout)
    assert verified.exit_code == 0 and report["passed"], verified.stdout
    selection_check = next(c for c in report["checks"] if c["name"] == "selection")
    assert selection_check["max_abs_error"] == 0

    again = runner.invoke(app, ["curate", "--config", str(tmp_path / "rm.yaml")])
    assert again.exit_code == 0, again.output
    assert json.loads((run / "manifests" / "reward-scores.json").read_text())["meta"]["created_at"] == manifest["meta"]["created_at"]


def test_a_grown_nightly_pool_scores_only_its_new_pairs_with_the_reward_model(toy_world, reward_model, prefect_harness,
                                                                             tmp_path):
    from prefcurate.config import NightlyConfig
    from prefcurate.data.pairs import read_pairs
    from prefcurate.flows.nightly import nightly
    from prefcurate.scoring.reward_model import RewardModel, pair_rewards
    from prefcurate.toyworld.pool import new_pairs
    from tests.flows.conftest import stage_outputs

    pool = pd.read_parquet(toy_world.pool_parquet)
    grown = pd.concat([pool, new_pairs(toy_world.spec.pool, toy_world.spec.seed, pool, n=12)], ignore_index=True)
    pool.to_parquet(tmp_path / "pool-1.parquet")
    grown.to_parquet(tmp_path / "pool-2.parquet")
    rewards = {}
    for night in (1, 2):
        raw = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}", run_name=f"night-{night}",
                         cache_dir=str(tmp_path / "cache"), selection={"rule": "reward-model", "reward_model": {"uri": str(reward_model)}})
        raw["data"] = {**raw["data"], "pool_uri": str(tmp_path / f"pool-{night}.parquet")}
        config = NightlyConfig.model_validate({**raw, "store_uri": str(tmp_path / "store"), "publish_uri": str(tmp_path / "pub")})
        state = nightly(config, return_state=True)
        assert state.is_completed(), state.message
        rewards[night] = stage_outputs(tmp_path / "runs" / f"night-{night}")["reward-scores"]
    assert rewards[1].n_scored == rewards[1].pairs
    assert rewards[2].n_scored == rewards[2].pairs - rewards[1].pairs == 12  # only the new pairs met the reward model
    run = tmp_path / "runs" / "night-2"
    stored = pd.read_parquet(run / "scores" / "reward_scores.parquet")
    pairs = read_pairs(str(run / "data" / "train.parquet"))
    assert list(stored["pair_id"]) == list(pairs["pair_id"])  # in pool order
    expected = pair_rewards(RewardModel.load(str(reward_model)), pairs)
    np.testing.assert_allclose(stored["reward_margin"], expected["reward_margin"], atol=1e-5)


def test_the_baseline_without_a_reward_model_is_a_one_line_error(toy_world, tmp_path):
    config = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}",
                        evaluation={"baselines": ["sft", "reward-model"]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["curate", "--config", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "needs selection.reward_model" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
