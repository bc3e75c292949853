"""verify's own path (full-logit forward with a mask, one loss.backward() per pair) must agree with
the jvp scoring it checks, in float32 and float64, full and LoRA; and its comparisons and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefcurate.errors import VerifyError
from prefcurate.scoring.influence import influence_scores, validation_gradient
from prefcurate.scoring.logps import compute_logps, make_collator
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.verify import TOLERANCES, Check, _compare, _influence, _pairs, sample_rows, verify_run
from tests.prefcurate.scoring.test_influence import BETA, full_model, lora_model
from tests.prefcurate.scoring.test_logps import toy_pairs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def world():
    tok = build_tokenizer()
    reference = build_model(tok, size="small", seed=0)
    pairs = toy_pairs(40, seed=3)
    ref_logps = compute_logps(reference, tok, pairs, desc=None)
    return tok, pairs.select(range(10)), pairs.select(range(10, 40)), ref_logps


def _ref(frame, pairs):
    rows = frame.set_index("pair_id").loc[list(pairs["pair_id"])]
    return rows["chosen_logps"].to_numpy(), rows["rejected_logps"].to_numpy()


CASES = [(full_model, False, False), (full_model, True, False), (lora_model, False, False), (lora_model, True, False),
         (full_model, False, True)]


@pytest.mark.parametrize(("make_model", "float64", "cosine"), CASES,
                         ids=["full", "full-float64", "lora", "lora-float64", "full-cosine"])
def test_per_pair_backward_matches_jvp_scoring(world, make_model, float64, cosine):
    tok, val, pool, ref_logps = world
    model = make_model(tok)
    gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, batch_size=4, desc=None)
    scores = influence_scores(model, tok, pool, ref_logps, gradient, beta=BETA, batch_size=8, cosine=cosine, desc=None)
    if float64:
        model = model.to(torch.float64)
    rows = list(range(len(pool)))
    val_grad, influence = _influence(model, _pairs(pool, tok), _pairs(val, tok), _ref(ref_logps, pool), _ref(ref_logps, val),
                                     rows, make_collator(tok, 512, "keep_start"), BETA, "sigmoid", cosine, CPU)
    assert set(val_grad) == set(gradient.tensors)
    for name, value in val_grad.items():
        torch.testing.assert_close(gradient.tensors[name].double(), value, rtol=1e-4, atol=1e-7)
    check = _compare("if", scores["if"].to_numpy(), np.array(influence), list(pool["pair_id"]), TOLERANCES["if"])
    assert check.passed, check
    assert np.abs(influence).max() > (0.1 if cosine else 1e-3)  # not a comparison of zeros


def test_errors_are_relative_to_the_largest_value_and_nan_fails():
    ids = ["a", "b", "c"]
    check = _compare("irm", np.array([1.0, 0.0, -2.001]), np.array([1.0, 1e-9, -2.0]), ids, 1e-3)
    assert check.max_abs_error == pytest.approx(1e-3) and check.max_rel_error == pytest.approx(5e-4)
    assert check.passed and "pair c" in check.detail  # a value near zero does not blow the ratio up
    missing = _compare("irm", np.array([1.0, math.nan, 2.0]), np.array([1.0, 1.0, 2.0]), ids, 1e-3)
    assert missing.max_rel_error == math.inf and not missing.passed and "pair b" in missing.detail
    assert not Check(name="if", n=1, max_abs_error=math.nan, max_rel_error=math.nan, tolerance=1.0).passed


def test_sample_is_the_same_pairs_whatever_the_row_order():
    ids = [f"p{i:03d}" for i in range(50)]
    rows = sample_rows(ids, 8, seed=1)
    assert len(rows) == 8 and rows == sorted(rows)
    shuffled = list(reversed(ids))
    assert {shuffled[i] for i in sample_rows(shuffled, 8, seed=1)} == {ids[i] for i in rows}
    assert sample_rows(ids, 8, seed=2) != rows
    assert sample_rows(ids, 500, seed=1) == list(range(50))


def test_what_is_not_a_finished_run_is_a_one_line_error(tmp_path):
    with pytest.raises(VerifyError, match="holds no manifests/: not a prefcurate run directory"):
        verify_run(str(tmp_path))
    (tmp_path / "manifests").mkdir()
    with pytest.raises(VerifyError, match="no finished `score` stage"):
        verify_run(str(tmp_path))
    (tmp_path / "manifests" / "score.json").write_text("{not json")
    with pytest.raises(VerifyError, match="not a readable `score` manifest"):
        verify_run(str(tmp_path))
    with pytest.raises(VerifyError, match=r"no check named \['iff'\]"):
        verify_run(str(tmp_path), tolerances={"iff": 1e-3})
