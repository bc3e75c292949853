"""The `evaluate` flow: judge a checkpoint and answer files against a reference."""

from __future__ import annotations

import pandas as pd
import pytest

from prefcurate.config import EvaluateConfig

pytestmark = pytest.mark.slow


def test_evaluate_files_and_checkpoint_reproduce_the_curate_leaderboard(curated, prefect_harness, tmp_path):
    from prefcurate.flows.evaluate import evaluate

    run = curated.run
    config = EvaluateConfig(
        root=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"),
        models={
            "sft": str(run / "eval" / "sft" / "model_outputs.json"),
            "full": str(run / "eval" / "full" / "model_outputs.json"),
            "selected": str(run / "models" / "final" / "selected"),  # a checkpoint: answers generated here
        },
        eval_prompts_uri=str(run / "data" / "eval_prompts.parquet"),
        evaluation={"reference": "sft"},
        tracking={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    state = evaluate(config, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert set(result.generated) == {"selected"} and result.judged.models == 3
    board = {row["model"]: row for row in result.leaderboard}
    expected = pd.read_csv(run / "eval" / "leaderboard.csv", index_col=0)
    # greedy generation and the oracle judge are deterministic: the same numbers as in curate
    for model in ("sft", "full", "selected"):
        assert board[model]["win_rate"] == pytest.approx(expected.loc[model, "win_rate"]), model
        assert board[model]["standard_error"] == pytest.approx(expected.loc[model, "standard_error"], nan_ok=True)
    assert (tmp_path / "runs" / "evaluate" / "eval" / "selected" / "annotations.json").exists()
