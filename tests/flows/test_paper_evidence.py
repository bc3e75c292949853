"""`prefcurate if-groups` and `prefcurate compare-models` on the small toy world: the paper's
training-dynamics and "quality is a property of the model" evidence, runnable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.flows.conftest import toy_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(toy_world, prefect_harness, tmp_path_factory):
    """One `if-groups` run (which scores the pool as curate does) in run `toy`; its root and output."""
    from prefcurate.flows.cli import app

    root = tmp_path_factory.mktemp("evidence")
    config = toy_config(toy_world, str(root / "runs"), f"sqlite:///{root / 'mlflow.db'}")
    (root / "toy.yaml").write_text(yaml.safe_dump(config))  # a plain curate config, as each command takes it
    result = CliRunner().invoke(app, ["if-groups", "--config", str(root / "toy.yaml"), "--set", "if_groups.eval_every=2"])
    assert result.exit_code == 0, result.output
    return root, result.output


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / "manifests" / f"{stage}.json").read_text())


def test_if_groups_split_the_pool_train_equal_steps_and_log_curves_per_step(study):
    root, output = study
    run = root / "runs" / "toy"
    split = pd.read_parquet(run / "if-groups" / "groups.parquet")
    train = pd.read_parquet(run / "data" / "train.parquet")
    assert split["pair_id"].is_unique and set(split["pair_id"]) == set(train["pair_id"])  # disjoint, covering
    groups = {g: manifest(run, f"if-group-{g}") for g in ("low", "medium", "high")}
    assert {g: m["n_pairs"] for g, m in groups.items()} == {"low": 80, "medium": 80, "high": 80}
    steps = {m["steps"] for m in groups.values()}
    assert steps == {6}  # training.final_epochs (2) epochs of 80 pairs at batch 32, for every group
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("flows-test").experiment_id],
                                   filter_string="tags.`prefcurate.flow` = 'if-groups'")
    val_loss = manifest(run, "val-gradient")["val_loss"]
    for group in groups:
        (child,) = client.search_runs([parent.info.experiment_id], filter_string=(
            f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`prefcurate.stage` = 'if-group-{group}'"))
        history = client.get_metric_history(child.info.run_id, "val/loss")
        assert [m.step for m in history] == [0, 2, 4, 6]  # every eval_every steps, before the first and after the last
        assert history[0].value == pytest.approx(val_loss, abs=1e-5)  # θ's L_val, as the gradient stage measured it
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/margin")] == [0, 2, 4, 6]
    assert set(parent.data.metrics) >= {f"val_loss_final.{g}" for g in groups}
    table = pd.read_csv(run / "if-groups" / "table.csv", index_col=0)
    assert table.loc["low", "val_loss_final"] == pytest.approx(groups["low"]["final_val_loss"])
    assert (run / "figures" / "if_groups.png").read_bytes().startswith(b"\x89PNG")
    assert "DPO from θ for 6 steps each" in output and "medium" in output


def comparison(root: Path, *args: str) -> dict:
    from prefcurate.flows.cli import app

    result = CliRunner().invoke(app, ["compare-models", "--config", str(root / "toy.yaml"), *args])
    assert result.exit_code == 0, result.output
    assert "IF Spearman" in result.output
    (report,) = [line.split()[-1] for line in result.output.splitlines() if line.startswith("Report:")]
    return json.loads((Path(report).parent / "compare.json").read_text())


def test_a_model_compared_with_itself_reuses_the_run_and_agrees_perfectly(study, toy_world):
    root, _ = study
    stages = ("warmup", "val-gradient", "score", "select")
    before = {s: manifest(root / "runs" / "toy", s)["meta"]["created_at"] for s in stages}
    result = comparison(root, "--other-model", toy_world.checkpoint_dir, "--other-run", "toy")
    assert {s: manifest(root / "runs" / "toy", s)["meta"]["created_at"] for s in stages} == before  # reused, not redone
    assert result["if_spearman"] == pytest.approx(1.0) and result["if_sign_changes"] == 0.0
    assert result["tif"]["overlap"] == 1.0 and result["selection"]["overlap"] == 1.0


def test_two_sft_models_compare_as_the_hand_computation_from_their_score_tables(study, toy_world):
    from prefcurate.flows.cli import app

    root, _ = study
    built = CliRunner().invoke(app, ["toyworld", "sft", "--world", toy_world.root, "--out", str(root / "sft-b"),
                                     "--seed", "1", "--epochs", "2"])
    assert built.exit_code == 0, built.output
    result = comparison(root, "--other-model", str(root / "sft-b"))
    a = pd.read_parquet(root / "runs" / "toy" / "scores" / "scores.parquet").set_index("pair_id")
    b = pd.read_parquet(root / "runs" / "toy-b" / "scores" / "scores.parquet").set_index("pair_id").loc[a.index]
    assert result["n_pairs"] == len(a)
    x, y = a["if"].to_numpy(), b["if"].to_numpy()
    assert result["if_spearman"] == pytest.approx(np.corrcoef(pd.Series(x).rank(), pd.Series(y).rank())[0, 1])
    assert result["if_sign_changes"] == pytest.approx(np.mean(np.sign(x) != np.sign(y)))
    ta, tb = set(a.index[a["tif"].astype(bool)]), set(b.index[b["tif"].astype(bool)])
    assert result["tif"]["overlap"] == pytest.approx(len(ta & tb) / min(len(ta), len(tb)))
    sa, sb = (set(pd.read_parquet(root / "runs" / r / "selection" / "selection.parquet")["pair_id"]) for r in ("toy", "toy-b"))
    assert result["selection"]["overlap"] == pytest.approx(len(sa & sb) / min(len(sa), len(sb)))
    for key in ("if_spearman", "if_pearson"):
        assert -1.0 <= result[key] <= 1.0
    assert -1.0 <= result["tif"]["kappa"] <= 1.0 and -1.0 <= result["selection"]["kappa"] <= 1.0
    assert result["if_spearman"] < 1.0  # another model: not the same ranking


def test_bad_arguments_are_one_line_errors(tmp_path, toy_world):
    from prefcurate.flows.cli import app

    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'm.db'}")))
    for args, message in (
        (["if-groups", "--config", str(config), "--set", "if_groups.cuts=[60,40]"], "0 < lo < hi < 100"),
        (["compare-models", "--config", str(config)], "'compare': Field required; pass --other-model"),
        (["toyworld", "sft", "--world", str(tmp_path), "--out", str(tmp_path / "m"), "--seed", "1"], "holds no toy world"),
        (["toyworld", "sft", "--world", toy_world.root, "--out", str(tmp_path / "m"), "--seed", "0"], "rebuilds the world's model"),
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
