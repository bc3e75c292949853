"""The `evaluate` flow and command: judge a checkpoint and answer files against a reference; the
exit code says whether the evaluation is complete."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from prefcurate.config import EvaluateConfig
from prefcurate.flows.cli import EXIT_INCOMPLETE, app
from prefcurate.toyworld.task import all_instructions
from tests.prefcurate.evaluation.fake_openai import FakeEndpoint


@pytest.mark.slow
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


def _answer_files(tmp_path) -> dict[str, str]:
    instructions = all_instructions()[:4]
    files = {}
    for name, answer in (("ref", lambda i: "zz"), ("new", lambda i: i.perfect_answer)):
        rows = [{"instruction": i.text, "output": answer(i), "generator": name} for i in instructions]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(rows))
        files[name] = str(path)
    return files


def _evaluate_cli(tmp_path, judge: dict, *sets: str):
    config = {"root": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "models": _answer_files(tmp_path),
              "evaluation": {"reference": "ref", "judge": judge},
              "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(app, ["evaluate", "--config", str(path), *[a for s in sets for a in ("--set", s)]])


def test_evaluate_cli_exits_0_when_complete(prefect_harness, tmp_path):
    result = _evaluate_cli(tmp_path, {"kind": "oracle"})
    assert result.exit_code == 0, result.output
    assert "new               100.0 ±  0.0   n=4, no verdict 0" in result.stdout
    assert "gave no verdict" not in result.output


def test_evaluate_cli_prints_the_table_and_exits_3_on_a_dead_judge(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-cli-test")
    endpoint = FakeEndpoint()
    endpoint.mode = "html_502"
    judge = {"kind": "openai", "base_url": endpoint.url, "model": "judge-1", "api_key_env": "JUDGE_KEY",
             "max_retries": 0, "retry_backoff_s": 0.0}
    try:
        dead = _evaluate_cli(tmp_path, judge)
        tolerated = _evaluate_cli(tmp_path, judge, "evaluation.max_failed_fraction=1.0")
        bad = _evaluate_cli(tmp_path, judge, "evaluation.max_failed_fraction=1.5")
    finally:
        endpoint.close()
    assert dead.exit_code == EXIT_INCOMPLETE == 3, dead.output
    # the model with no verdict keeps its row: empty numbers, its counts
    assert "new                   - ±    -   n=0, no verdict 4" in dead.stdout
    assert "ref                50.0 ±  0.0   n=4, no verdict 0" in dead.stdout
    assert "Judgments: 12 of 12 gave no verdict (100.0%; http_error 12)" in dead.stdout
    last = dead.stderr.strip().splitlines()[-1]  # one line, no traceback
    assert last == ("error: 100.0% of the judgments gave no verdict, more than evaluation.max_failed_fraction=0.1: "
                    "the evaluation is incomplete")
    assert tolerated.exit_code == 0 and "Judgments: 12 of 12 gave no verdict" in tolerated.stdout
    assert bad.exit_code == 2 and "evaluation.max_failed_fraction" in bad.output  # bad input stays exit 2
