"""The score table: definitions of DESIGN §1, sharding, TIF band, determinism, bad values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from prefcurate.config import ScoringConfig, TrainingConfig
from prefcurate.errors import ScoringError
from prefcurate.scoring.influence import influence_scores, validation_gradient
from prefcurate.scoring.logps import compute_logps
from prefcurate.scoring.scores import SCORE_COLUMNS, ScoringModels, finalize_scores, score_pool, score_shard
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from tests.prefcurate.scoring.test_logps import toy_pairs

TRAINING = TrainingConfig()


@pytest.fixture(scope="module")
def world():
    tok = build_tokenizer()
    reference = build_model(tok, size="small", seed=0)
    pool, val = toy_pairs(30, seed=11), toy_pairs(8, seed=12)
    ref_logps = pd.concat([compute_logps(reference, tok, d, desc=None) for d in (pool, val)], ignore_index=True)
    models = ScoringModels(tok, build_model(tok, size="small", seed=1), build_model(tok, size="small", seed=2))
    gradient = validation_gradient(models.policy, tok, val, ref_logps, beta=TRAINING.beta, desc=None)
    return tok, reference, pool, ref_logps, models, gradient


def test_score_table_follows_the_definitions(world):
    tok, _, pool, ref_logps, models, gradient = world
    scores = score_pool(pool, models=models, ref_logps=ref_logps, gradient=gradient, training=TRAINING,
                        scoring=ScoringConfig(batch_size=8, shard_size=12))  # fmt: skip
    assert list(scores.columns) == SCORE_COLUMNS
    assert list(scores["pair_id"]) == list(pool["pair_id"])
    beta = TRAINING.beta
    m = (scores.policy_chosen_logps - scores.ref_chosen_logps) - (scores.policy_rejected_logps - scores.ref_rejected_logps)
    np.testing.assert_allclose(scores.irm, beta * m, atol=1e-4)
    np.testing.assert_allclose(scores.loss_warmup, np.logaddexp(0, -beta * m), atol=1e-4)
    m_val = (scores.val_chosen_logps - scores.ref_chosen_logps) - (scores.val_rejected_logps - scores.ref_rejected_logps)
    np.testing.assert_allclose(scores.lossdiff, scores.loss_warmup - np.logaddexp(0, -beta * m_val), atol=1e-4)
    direct = influence_scores(models.policy, tok, pool, ref_logps, gradient, beta=beta, desc=None)
    np.testing.assert_allclose(scores["if"], direct["if"], rtol=1e-4, atol=1e-6)
    assert (scores.score_chosen == 8.0).all() and (scores.score_rejected == 3.0).all()
    assert scores["tif"].sum() == 14  # strictly inside the 25th–75th IF percentiles of 30 distinct values


def test_without_warmup_every_loss_is_log_2(world):
    """θ = π_ref: m = 0 for every pair, so ℓ = log 2 and LossDiff = log 2 + log σ(IRM_val)."""
    tok, reference, pool, ref_logps, models, _ = world
    same = ScoringModels(tok, reference, models.val)
    scores = score_pool(pool, models=same, ref_logps=ref_logps, gradient=None, training=TRAINING,
                        scoring=ScoringConfig(compute_if=False))  # fmt: skip
    np.testing.assert_allclose(scores.loss_warmup, math.log(2), atol=1e-6)
    np.testing.assert_allclose(scores.irm, 0.0, atol=1e-5)
    assert scores["if"].isna().all() and scores["tif"].isna().all()


def test_scores_are_deterministic_and_independent_of_sharding(world):
    _, _, pool, ref_logps, models, gradient = world
    kwargs = dict(models=models, ref_logps=ref_logps, gradient=gradient, training=TRAINING)
    a = score_pool(pool, scoring=ScoringConfig(batch_size=8, shard_size=7), **kwargs)
    b = score_pool(pool, scoring=ScoringConfig(batch_size=8, shard_size=7), **kwargs)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    c = score_pool(pool, scoring=ScoringConfig(batch_size=30, shard_size=100), **kwargs)
    numeric = ["if", "lossdiff", "irm", "loss_warmup", "loss_val", "policy_chosen_logps", "val_rejected_logps"]
    np.testing.assert_allclose(a[numeric], c[numeric], rtol=1e-4, atol=1e-5)


def test_non_finite_values_name_the_pairs(world):
    tok, _, pool, ref_logps, models, gradient = world
    broken = ref_logps.copy()
    bad_id = pool["pair_id"][3]
    broken.loc[broken.pair_id == bad_id, "chosen_logps"] = np.nan
    with pytest.raises(ScoringError, match=bad_id):
        score_shard(pool, models=models, ref_logps=broken, gradient=gradient, training=TRAINING,
                    scoring=ScoringConfig(compute_if=False))  # fmt: skip
    nan_model = build_model(tok, size="small", seed=1)
    with torch.no_grad():
        nan_model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(ScoringError, match="non-finite .* for 30 pairs"):
        score_shard(pool, models=ScoringModels(tok, nan_model, models.val), ref_logps=ref_logps, gradient=gradient,
                    training=TRAINING, scoring=ScoringConfig())  # fmt: skip


def _frame(ids, influence):
    return pd.DataFrame({"pair_id": ids, "if": influence, **{c: 0.0 for c in SCORE_COLUMNS if c not in ("pair_id", "if", "tif")}})


def test_tif_keeps_pairs_strictly_inside_the_pool_band():
    influence = np.arange(100, dtype=float)
    rng = np.random.default_rng(0)
    order = rng.permutation(100)
    ids = [f"p{i}" for i in order]
    frames = [_frame(ids[:40], influence[order[:40]]), _frame(ids[40:], influence[order[40:]])]
    scores = finalize_scores(frames, (25.0, 75.0))
    kept = set(scores.loc[scores["tif"].astype(bool), "pair_id"])
    # numpy's linear percentiles of 0..99: q25 = 24.75, q75 = 74.25
    assert kept == {f"p{i}" for i in range(25, 75)}
    assert list(scores.columns) == SCORE_COLUMNS


def test_finalize_refuses_overlapping_or_mixed_shards():
    with pytest.raises(ScoringError, match="scored twice"):
        finalize_scores([_frame(["a", "b"], [1.0, 2.0]), _frame(["b"], [3.0])], (25.0, 75.0))
    with pytest.raises(ScoringError, match="missing for some shards"):
        finalize_scores([_frame(["a", "b"], [1.0, 2.0]), _frame(["c"], [np.nan])], (25.0, 75.0))
    with pytest.raises(ScoringError, match="no scored shards"):
        finalize_scores([], (25.0, 75.0))
