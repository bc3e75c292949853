"""judge_stage via `.fn` on hand-made answer files judged by the toy oracle: known win rates,
files in AlpacaEval layout, resume, and a rerun when an answer file changes."""

from __future__ import annotations

import pandas as pd
import pytest

from prefcurate import io
from prefcurate.config import EvaluationConfig
from prefcurate.generation import write_model_outputs
from prefcurate.toyworld.task import all_instructions
from tasks.evaluate import judge_stage


def _files(tmp_path, good_for_b: int):
    insts = all_instructions()[:10]
    ref = [{"instruction": i.text, "output": "zz", "generator": "ref", "sample": 0} for i in insts]
    a = [{"instruction": i.text, "output": i.perfect_answer, "generator": "a", "sample": 0} for i in insts]
    b = [{"instruction": i.text, "output": i.perfect_answer if k < good_for_b else "zz", "generator": "b", "sample": 0}
         for k, i in enumerate(insts)]  # fmt: skip
    return {name: write_model_outputs(rows, str(tmp_path / "given" / f"{name}.json")) for name, rows in
            {"ref": ref, "a": a, "b": b}.items()}  # fmt: skip


def test_judge_known_win_rates_and_resume(tmp_path):
    files = _files(tmp_path, good_for_b=4)
    run = str(tmp_path / "run")
    evaluation = EvaluationConfig(reference="ref")
    m = judge_stage.fn(files, evaluation, run, str(tmp_path / "cache"))
    board = pd.read_csv(m.outputs["leaderboard"], index_col=0)
    assert board.loc["a", "win_rate"] == pytest.approx(100.0)  # perfect answers beat junk everywhere
    assert board.loc["b", "win_rate"] == pytest.approx(70.0)  # 4 wins + 6 ties with the same junk: (4 + 0.5·6)/10
    assert board.loc["ref", "win_rate"] == pytest.approx(50.0)
    assert {r["model"] for r in m.extra["leaderboard"]} == {"ref", "a", "b"}
    annotations = io.read_json(m.outputs["annotations.b"])
    assert [r["preference"] for r in annotations].count(2.0) == 4
    assert judge_stage.fn(files, evaluation, run, str(tmp_path / "cache")).created_at == m.created_at
    _files(tmp_path, good_for_b=7)  # b's answers change on disk
    again = judge_stage.fn(files, evaluation, run, str(tmp_path / "cache"))
    assert again.created_at > m.created_at
    assert pd.read_csv(again.outputs["leaderboard"], index_col=0).loc["b", "win_rate"] > board.loc["b", "win_rate"]
