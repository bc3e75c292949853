"""judge_stage via `.fn` on hand-made answer files judged by the toy oracle: known win rates,
files in AlpacaEval layout, resume, and a rerun when an answer file changes."""

from __future__ import annotations

import pandas as pd
import pytest

from prefcurate import io
from prefcurate.config import EvaluateConfig, EvaluationConfig
from prefcurate.evaluation.generation import write_model_outputs
from prefcurate.manifest import FileRef
from prefcurate.tasks.evaluate import judge_stage
from prefcurate.toyworld.task import all_instructions


def _files(tmp_path, good_for_b: int) -> dict[str, FileRef]:
    insts = all_instructions()[:10]
    ref = [{"instruction": i.text, "output": "zz", "generator": "ref", "sample": 0} for i in insts]
    a = [{"instruction": i.text, "output": i.perfect_answer, "generator": "a", "sample": 0} for i in insts]
    b = [{"instruction": i.text, "output": i.perfect_answer if k < good_for_b else "zz", "generator": "b", "sample": 0}
         for k, i in enumerate(insts)]  # fmt: skip
    return {name: FileRef.of(write_model_outputs(rows, str(tmp_path / "given" / f"{name}.json"))) for name, rows in
            {"ref": ref, "a": a, "b": b}.items()}  # fmt: skip


def test_judge_known_win_rates_and_resume(tmp_path):
    files = _files(tmp_path, good_for_b=4)
    run = str(tmp_path / "run")
    config = EvaluateConfig(models={n: f.uri for n, f in files.items()}, evaluation=EvaluationConfig(reference="ref"),
                            cache_dir=str(tmp_path / "cache"))
    m = judge_stage.fn(files, config, run)
    board = pd.read_csv(m.leaderboard.uri, index_col=0)
    assert board.loc["a", "win_rate"] == pytest.approx(100.0)  # perfect answers beat junk everywhere
    assert board.loc["b", "win_rate"] == pytest.approx(70.0)  # 4 wins + 6 ties with the same junk: (4 + 0.5·6)/10
    assert board.loc["ref", "win_rate"] == pytest.approx(50.0)
    assert {r["model"] for r in m.leaderboard_records()} == {"ref", "a", "b"}
    annotations = io.read_json(m.annotations["b"].uri)
    assert [r["preference"] for r in annotations].count(2.0) == 4
    assert judge_stage.fn(files, config, run).meta.created_at == m.meta.created_at
    changed = _files(tmp_path, good_for_b=7)  # b's answers change on disk
    again = judge_stage.fn(changed, config, run)
    assert again.meta.created_at > m.meta.created_at
    assert pd.read_csv(again.leaderboard.uri, index_col=0).loc["b", "win_rate"] > board.loc["b", "win_rate"]
