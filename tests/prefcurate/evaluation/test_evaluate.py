import json
from io import StringIO

import numpy as np
import pandas as pd
import pytest

from prefcurate.config import GenerationConfig, JudgeConfig
from prefcurate.errors import DataError
from prefcurate.evaluation.evaluate import evaluate, evaluate_output_files
from prefcurate.evaluation.judges import make_judge
from prefcurate.evaluation.metrics import leaderboard_records
from prefcurate.toyworld.task import quality
from tests.prefcurate.evaluation.fake_openai import FakeEndpoint
from tests.prefcurate.evaluation.test_generation import quick_lm

INSTRUCTIONS = ["repeat apple two", "please repeat river three", "repeat stone one", "now repeat tiger four",
                "repeat lemon five", "kindly repeat piano two"]


def _read(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_evaluate_generates_judges_and_writes_alpacaeval_files(tmp_path):
    strong, tok = quick_lm(steps=30)
    weak, _ = quick_lm(steps=8)
    strong.save_pretrained(tmp_path / "strong")  # one model given as a directory, loaded through load_checkpoint
    tok.save_pretrained(tmp_path / "strong")
    models = {"weak": (weak, tok), "strong": str(tmp_path / "strong")}
    gen = GenerationConfig(max_new_tokens=8, do_sample=True, n_samples=2, seed=3)
    steps = []
    out = tmp_path / "eval"
    board = evaluate(models, INSTRUCTIONS, "weak", make_judge(JudgeConfig(), None), str(out), gen,
                     progress=lambda step, done, total: steps.append(step))

    strong_rows = _read(out / "strong" / "model_outputs.json")
    weak_rows = _read(out / "weak" / "model_outputs.json")
    assert len(strong_rows) == len(weak_rows) == 12 and {r["generator"] for r in strong_rows} == {"strong"}
    # The numbers follow from the answers alone: recompute them with the oracle's quality.
    q_strong = np.array([quality(r["instruction"], r["output"]) for r in strong_rows])
    q_weak = np.array([quality(r["instruction"], r["output"]) for r in weak_rows])
    prefs = np.where(q_strong > q_weak, 2.0, np.where(q_strong < q_weak, 1.0, 1.5))
    row = board.loc["strong"]
    assert row["win_rate"] == pytest.approx((prefs - 1).mean() * 100)
    assert row["n_wins"] == (prefs == 2).sum() and row["n_draws"] == (prefs == 1.5).sum()
    assert row["single_score"] == pytest.approx((1 + 9 * q_strong).mean())
    assert row["avg_length"] == pytest.approx(np.mean([len(r["output"]) for r in strong_rows]))
    assert board.loc["weak", "win_rate"] == 50.0 and board.loc["weak", "n_draws"] == 12
    assert board.loc["weak", "single_score"] == pytest.approx((1 + 9 * q_weak).mean())

    annotations = _read(out / "strong" / "annotations.json")
    assert [a["preference"] for a in annotations] == prefs.tolist()
    assert {a["generator_1"] for a in annotations} == {"weak"} and {a["annotator"] for a in annotations} == {"oracle"}
    assert [a["output_1"] for a in annotations] == [r["output"] for r in weak_rows]  # paired by instruction and sample

    on_disk = pd.read_csv(out / "leaderboard.csv", index_col=0)
    pd.testing.assert_frame_equal(on_disk, board, check_dtype=False)
    one = pd.read_csv(out / "strong" / "leaderboard.csv", index_col=0)
    assert list(one.index) == ["strong"] and one.loc["strong", "win_rate"] == pytest.approx(row["win_rate"])
    assert _read(out / "judge.json")["failed"] == 0
    assert {"generate weak", "generate strong", "judge strong", "grade strong"} <= set(steps)


def _outputs(tmp_path, name, answers):
    path = tmp_path / f"{name}.json"
    rows = [{"instruction": i, "output": a, "generator": name} for i, a in zip(INSTRUCTIONS[:4], answers)]
    path.write_text(json.dumps(rows))
    return str(path)


def test_evaluate_output_files_hand_computed(tmp_path):
    ref = _outputs(tmp_path, "ref", ["apple done", "river river river done", "stone done", "tiger done"])
    new = _outputs(tmp_path, "new", ["apple apple done", "river river river done", "um", "tiger tiger tiger tiger done"])
    board = evaluate_output_files([ref, new], "ref", make_judge(JudgeConfig(), None), str(tmp_path / "out"),
                                  single_score=False)
    # new wins 1 and 4, ties 2, loses 3 → (1 + 0.5 + 0 + 1) / 4
    assert board.loc["new", "win_rate"] == pytest.approx(62.5)
    assert (board.loc["new", "n_wins"], board.loc["new", "n_wins_base"], board.loc["new", "n_draws"]) == (2, 1, 1)
    assert np.isnan(board.loc["new", "single_score"])
    assert "score_2" not in _read(tmp_path / "out" / "new" / "annotations.json")[0]
    assert list(board.index) == ["new", "ref"]


def test_evaluate_rejects_mismatched_inputs(tmp_path):
    ref = _outputs(tmp_path, "ref", ["apple done"] * 4)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"instruction": "repeat willow one", "output": "willow done", "generator": "other"}]))
    judge = make_judge(JudgeConfig(), None)
    with pytest.raises(DataError, match="have no answer from the reference"):
        evaluate_output_files({"ref": ref, "other": str(other)}, "ref", judge, str(tmp_path / "out"))
    with pytest.raises(DataError, match="reference 'sft' is not among the output files"):
        evaluate_output_files({"ref": ref}, "sft", judge, str(tmp_path / "out"))
    with pytest.raises(DataError, match="reference model 'sft' is not among the models"):
        evaluate({"a": "unused"}, INSTRUCTIONS, "sft", judge, str(tmp_path / "out"), GenerationConfig())


@pytest.mark.slow
def test_toy_world_dpo_beats_sft_and_everything_is_deterministic(toy_world, tmp_path):
    from prefcurate import io
    from prefcurate.config import TrainingConfig
    from prefcurate.data.pairs import load_pairs
    from prefcurate.training.dpo import train_dpo

    pairs = load_pairs(toy_world.pool_parquet).pairs
    training = TrainingConfig()  # DESIGN §4: lr 2e-4, β 0.5, batch 32, 3 epochs beat SFT
    first = train_dpo(toy_world.checkpoint_dir, pairs, str(tmp_path / "full_a"), training, epochs=3)
    second = train_dpo(toy_world.checkpoint_dir, pairs, str(tmp_path / "full_b"), training, epochs=3)
    assert first.fingerprint == second.fingerprint

    prompts = [row["instruction"] for row in io.read_json(toy_world.eval_prompts)]
    gen = GenerationConfig(do_sample=True, n_samples=4, max_new_tokens=16, seed=0)
    runs = []
    for name, trained in [("a", first), ("b", second)]:
        out = tmp_path / f"eval_{name}"
        board = evaluate({"sft": toy_world.checkpoint_dir, "full": trained.uri}, prompts, "sft",
                         make_judge(JudgeConfig(), None), str(out), gen)
        runs.append((board, _read(out / "full" / "model_outputs.json")))
    (board, outputs), (board_again, outputs_again) = runs
    pd.testing.assert_frame_equal(board, board_again)
    assert outputs == outputs_again

    full = board.loc["full"]
    assert full["n_total"] == 4 * len(prompts)
    # DPO on the small world's noisy pool improves on SFT, but only a little: +1.95 ± 1.40 win-rate points
    # measured on this machine (the 2-s.e. bound the default world passes does not hold here; see NOTES).
    assert full["win_rate"] > 50 and full["n_wins"] > full["n_wins_base"], board
    assert full["single_score"] > board.loc["sft", "single_score"]


def test_evaluate_output_files_to_s3(tmp_path, s3_bucket):
    from prefcurate import io

    ref = _outputs(tmp_path, "ref", ["apple done", "river done", "stone done", "tiger done"])
    new = _outputs(tmp_path, "new", ["apple apple done", "river river river done", "stone done", "um"])
    out = f"{s3_bucket}/run/eval"
    board = evaluate_output_files({"ref": ref, "new": new}, "ref", make_judge(JudgeConfig(), None), out)
    on_s3 = pd.read_csv(StringIO(io.read_text(f"{out}/leaderboard.csv")), index_col=0)
    pd.testing.assert_frame_equal(on_s3, board, check_dtype=False)
    assert len(io.read_json(f"{out}/new/annotations.json")) == 4
    assert io.read_json(f"{out}/ref/model_outputs.json")[0]["output"] == "apple done"


@pytest.fixture
def broken_endpoint(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-evaluate-test-key")
    server = FakeEndpoint()
    yield server
    server.close()


def _openai(endpoint, **kw):
    return make_judge(JudgeConfig(kind="openai", base_url=endpoint.url, model="judge-1", api_key_env="JUDGE_KEY",
                                  retry_backoff_s=0.01, **kw), None)


def test_a_model_without_verdicts_keeps_its_row_counts_and_reasons(tmp_path, broken_endpoint):
    ref = _outputs(tmp_path, "ref", ["apple done", "river done", "stone done", "tiger done"])
    new = _outputs(tmp_path, "new", ["apple apple done", "river river river done", "stone done", "um"])
    broken_endpoint.mode = "json_list"
    out = tmp_path / "out"
    board = evaluate_output_files({"ref": ref, "new": new}, "ref", _openai(broken_endpoint), str(out))

    row = board.loc["new"]
    for column in ("win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate", "single_score"):
        assert np.isnan(row[column]), column
    assert (row["n_total"], row["n_rejected"], row["n_scored"], row["n_unscored"]) == (0, 4, 0, 4)
    assert board.loc["ref", "win_rate"] == 50.0 and board.loc["ref", "n_unscored"] == 4  # compared with itself
    records = {r["model"]: r for r in leaderboard_records(pd.read_csv(out / "leaderboard.csv", index_col=0))}
    assert records["new"]["win_rate"] is None and records["new"]["n_rejected"] == 4  # empty in the csv, None in records

    annotations = _read(out / "new" / "annotations.json")
    assert {(a["preference"], a["verdict_status"], a["score_2"], a["score_status"]) for a in annotations} == {
        (None, "unparseable", -1.0, "unparseable")}
    assert annotations[0]["verdict_reason"] == "bad_shape: the reply is a JSON array, not an object"
    assert {(a["verdict_status"], a["verdict_reason"]) for a in _read(out / "ref" / "annotations.json")} == {("ok", None)}
    stats = _read(out / "judge.json")
    assert (stats["judged"], stats["unparseable"], stats["failed"]) == (0, 12, 0)  # 4 pairwise + 8 single grades
    assert stats["reasons"] == {"bad_shape": 12} and stats["failed_fraction"] == 1.0


def test_failed_and_unparseable_judgments_mix_with_verdicts(tmp_path, broken_endpoint):
    ref = _outputs(tmp_path, "ref", ["apple done", "river done", "stone done", "tiger done"])
    new = _outputs(tmp_path, "new", ["apple GOOD", "river GOOD", "stone done", "tiger done"])
    broken_endpoint.fail_first = [500, 500]  # the first pairwise request fails (two attempts), the rest succeed
    out = tmp_path / "out"
    board = evaluate_output_files({"ref": ref, "new": new}, "ref", _openai(broken_endpoint, max_retries=1, max_concurrency=1),
                                  str(out), single_score=False)
    assert (board.loc["new", "n_total"], board.loc["new", "n_rejected"]) == (3, 1)
    annotations = _read(out / "new" / "annotations.json")
    assert [a["verdict_status"] for a in annotations] == ["failed", "ok", "ok", "ok"]
    assert annotations[0]["verdict_reason"].startswith("http_error: HTTP 500")
    assert _read(out / "judge.json")["failed_fraction"] == pytest.approx(0.25)


def _rows(name, answers):
    """Two sampled answers per prompt of the first three instructions."""
    return [{"instruction": i, "output": a, "generator": name, "sample": k}
            for (i, k), a in zip([(i, k) for i in INSTRUCTIONS[:3] for k in (0, 1)], answers)]


def test_head_to_head_judges_the_selection_directly_and_swapping_the_order_mirrors_it(tmp_path):
    from prefcurate.evaluation.evaluate import head_to_head

    outputs = {
        "selected": _rows("selected", ["apple apple done", "apple apple done", "river river done", "river river river done",
                                       "stone done", "um"]),
        "full": _rows("full", ["apple done", "apple apple done", "river river river done", "river done",
                               "stone done", "stone done"]),
        "sft": _rows("sft", ["um"] * 6),
    }
    judge = make_judge(JudgeConfig(), None)
    frame = head_to_head(outputs, "selected", judge, str(tmp_path / "out"))
    assert list(frame["opponent"]) == ["full", "sft"] and set(frame["model"]) == {"selected"}
    full = frame.set_index("opponent").loc["full"]
    # answer k against full's answer k: win, tie, lose, win, tie, lose
    assert (full["n_wins"], full["n_wins_base"], full["n_draws"], full["n_total"]) == (2, 2, 2, 6)
    assert full["win_rate"] == pytest.approx(50.0)
    annotations = _read(tmp_path / "out" / "head_to_head" / "selected-vs-full" / "annotations.json")
    assert {a["generator_1"] for a in annotations} == {"full"} and {a["generator_2"] for a in annotations} == {"selected"}
    swapped = head_to_head(outputs, "full", judge, str(tmp_path / "swapped"), opponents=["selected", "sft"])
    back = swapped.set_index("opponent")
    mine = frame.set_index("opponent")
    assert mine.loc["full", "win_rate"] + back.loc["selected", "win_rate"] == pytest.approx(100.0)
    assert mine.loc["full", "standard_error"] == pytest.approx(back.loc["selected", "standard_error"])
    on_disk = pd.read_csv(tmp_path / "out" / "head_to_head.csv")
    assert on_disk.to_dict(orient="records") == frame.to_dict(orient="records")
    # on the oracle's quality alone: selected beats sft's "um" except where it says "um" itself
    assert mine.loc["sft", "n_wins"] == 5 and mine.loc["sft", "n_draws"] == 1
    with pytest.raises(DataError, match="not among the models"):
        head_to_head(outputs, "random", judge, str(tmp_path / "x"))
