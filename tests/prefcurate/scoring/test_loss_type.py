"""`training.loss_type` (sigmoid, hinge, ipo): the per-pair loss is TRL's, DPO trains with it, and IF,
∇L_val and LossDiff are taken of it while IRM stays the implicit reward margin."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from prefcurate.config import RunConfig, ScoringConfig, TrainingConfig, load_config
from prefcurate.errors import ConfigError, ScoringError
from prefcurate.scoring.influence import influence_scores, trainable_parameters, validation_gradient
from prefcurate.scoring.logps import (
    compute_logps,
    dpo_loss,
    make_collator,
    reference_tensors,
    sequence_logps,
    tokenize_pairs,
)
from prefcurate.scoring.scores import ScoringModels, score_pool
from prefcurate.scoring.stage import GRADIENT, SHARD
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.dpo import StoredReferenceDPOTrainer, dpo_args, fit_dpo, with_reference_columns
from prefcurate.training.stage import FINAL, VALIDATION_MODEL, WARMUP
from tests.prefcurate.scoring.test_logps import toy_pairs

LOSS_TYPES = ["sigmoid", "hinge", "ipo"]
BETA = 2.0  # large enough that some pairs of θ are past the hinge (β·m > 1) and some are not
MAX_LENGTH = 14  # the toy prompts are 6 tokens: long answers are cut, so IPO's lengths are the truncated ones


def formula(loss_type: str, beta: float, frame: pd.DataFrame, ref: pd.DataFrame) -> np.ndarray:
    """TRL 1.16's per-sequence losses (dpo_trainer.py, `_compute_loss`), written out in numpy."""
    d_w = frame.chosen_logps.to_numpy() - ref.chosen_logps.to_numpy()
    d_l = frame.rejected_logps.to_numpy() - ref.rejected_logps.to_numpy()
    if loss_type == "sigmoid":
        return np.logaddexp(0.0, -beta * (d_w - d_l))
    if loss_type == "hinge":
        return np.maximum(0.0, 1.0 - beta * (d_w - d_l))
    ipo = d_w / np.maximum(frame.chosen_len.to_numpy(), 1) - d_l / np.maximum(frame.rejected_len.to_numpy(), 1)
    return (ipo - 1 / (2 * beta)) ** 2


@pytest.fixture(scope="module")
def world():
    tok = build_tokenizer()
    reference = build_model(tok, size="small", seed=0)
    pairs = toy_pairs(40, seed=3)
    ref_logps = compute_logps(reference, tok, pairs, max_length=MAX_LENGTH, desc=None)
    return tok, pairs.select(range(10)), pairs.select(range(10, 40)), ref_logps


def theta(tok):
    return build_model(tok, size="small", seed=1)  # θ ≠ π_ref: margins of both signs, hinge active on some pairs


def test_the_three_losses_differ_on_the_same_log_probs(world):
    tok, _, pool, ref_logps = world
    logps = compute_logps(theta(tok), tok, pool, max_length=MAX_LENGTH, desc=None)
    ref = ref_logps.set_index("pair_id").loc[logps.pair_id]
    args = [torch.tensor(v.to_numpy()) for v in (logps.chosen_logps, logps.rejected_logps, ref.chosen_logps, ref.rejected_logps)]
    lengths = (torch.tensor(logps.chosen_len.to_numpy()), torch.tensor(logps.rejected_len.to_numpy()))
    margins = []
    for loss_type in LOSS_TYPES:
        loss, margin = dpo_loss(*args, BETA, loss_type=loss_type, lengths=lengths)
        np.testing.assert_allclose(loss.numpy(), formula(loss_type, BETA, logps, ref.reset_index()), rtol=1e-10)
        margins.append(margin.numpy())
    np.testing.assert_array_equal(margins[0], margins[1])  # IRM does not depend on the loss type
    np.testing.assert_array_equal(margins[0], margins[2])
    hinge = formula("hinge", BETA, logps, ref.reset_index())
    assert (hinge == 0).any() and (hinge > 0).any()  # both sides of the hinge are exercised
    with pytest.raises(ScoringError, match="lengths"):
        dpo_loss(*args, BETA, loss_type="ipo")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_per_pair_loss_equals_trls_own_loss(world, loss_type, tmp_path):
    """TRL's DPOTrainer, built by the training stage's own args, computes the same loss pair by pair."""
    tok, _, pool, ref_logps = world
    model = theta(tok)
    training = TrainingConfig(loss_type=loss_type, beta=BETA, max_length=MAX_LENGTH, batch_size=4)
    args = dpo_args(training, 1.0, str(tmp_path))
    assert args.loss_type == [loss_type] and args.beta == BETA
    trainer = StoredReferenceDPOTrainer(model=copy.deepcopy(model), args=args, processing_class=tok,
                                        train_dataset=with_reference_columns(pool, ref_logps))  # fmt: skip
    trainer.model.eval()
    trl = []
    with torch.no_grad():
        for i in range(len(pool)):
            inputs = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i]]))
            trl.append(float(trainer.compute_loss(trainer.model, inputs)))
    logps = compute_logps(model, tok, pool, max_length=MAX_LENGTH, desc=None)
    ref_c, ref_r = reference_tensors(ref_logps, list(logps.pair_id))
    ours, _ = dpo_loss(torch.tensor(logps.chosen_logps.to_numpy()), torch.tensor(logps.rejected_logps.to_numpy()),
                       ref_c.double(), ref_r.double(), BETA, loss_type=loss_type,
                       lengths=(torch.tensor(logps.chosen_len.to_numpy()), torch.tensor(logps.rejected_len.to_numpy())))
    np.testing.assert_allclose(ours.numpy(), trl, rtol=1e-4, atol=1e-6)
    assert np.ptp(trl) > 1e-3  # the pairs' losses differ: not a comparison of constants


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_one_dpo_step_trains_with_the_loss_type(world, loss_type):
    """One step on the whole pool: the loss TRL logs is the mean per-pair loss of that type at the start."""
    tok, _, pool, ref_logps = world
    model = theta(tok)
    start = compute_logps(model, tok, pool, max_length=MAX_LENGTH, desc=None)
    expected = formula(loss_type, BETA, start, ref_logps.set_index("pair_id").loc[start.pair_id].reset_index()).mean()
    training = TrainingConfig(loss_type=loss_type, beta=BETA, max_length=MAX_LENGTH, batch_size=len(pool), logging_steps=1)
    result = fit_dpo(model, tok, pool, training, epochs=1.0, ref_logps=ref_logps)
    assert result.global_step == 1
    assert result.train_loss == pytest.approx(expected, rel=1e-4)
    others = [formula(t, BETA, start, ref_logps.set_index("pair_id").loc[start.pair_id].reset_index()).mean()
              for t in LOSS_TYPES if t != loss_type]
    assert all(abs(o - expected) > 1e-2 for o in others)  # a run with another loss would not pass


def per_pair_gradients(model, tok, pairs, ref_logps, loss_type):
    """Reference implementation: autograd, one pair at a time."""
    params = trainable_parameters(model)
    collator = make_collator(tok, MAX_LENGTH, "keep_start")
    grads = []
    for row in tokenize_pairs(pairs, tok):
        batch = collator([{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        chosen, rejected = sequence_logps(model, batch["input_ids"], batch["completion_mask"]).chunk(2)
        ref_c, ref_r = reference_tensors(ref_logps, [row["pair_id"]])
        lengths = batch["completion_mask"].sum(-1).chunk(2)
        loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, BETA, loss_type=loss_type, lengths=lengths)
        grads.append(dict(zip(params, torch.autograd.grad(loss.sum(), list(params.values())))))
    return grads


def dot(a: dict, b: dict) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_jvp_influence_and_validation_gradient_equal_per_example_autograd(world, loss_type):
    tok, val, pool, ref_logps = world
    model = theta(tok)
    kwargs = dict(beta=BETA, loss_type=loss_type, max_length=MAX_LENGTH, desc=None)
    gradient = validation_gradient(model, tok, val, ref_logps, batch_size=4, **kwargs)
    assert gradient.metadata["loss_type"] == loss_type
    for name, value in gradient.tensors.items():
        expected = torch.stack([g[name] for g in per_pair_gradients(model, tok, val, ref_logps, loss_type)]).mean(0)
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)
    scores = influence_scores(model, tok, pool, ref_logps, gradient, batch_size=8, cosine=True, cosine_chunk=4, **kwargs)
    grads = per_pair_gradients(model, tok, pool, ref_logps, loss_type)
    norms = np.array([np.sqrt(dot(g, g)) for g in grads])
    np.testing.assert_allclose(scores["grad_norm"], norms, rtol=1e-4, atol=1e-8)
    loop = np.array([dot(g, gradient.tensors) for g in grads])
    plain = influence_scores(model, tok, pool, ref_logps, gradient, batch_size=8, **kwargs)
    assert np.abs(loop).max() > 1e-3
    assert np.abs(plain["if"].to_numpy() - loop).max() / np.abs(loop).max() < 1e-4
    if loss_type == "hinge":  # past the margin there is no gradient, so no influence
        flat = formula("hinge", BETA, plain, ref_logps.set_index("pair_id").loc[plain.pair_id].reset_index()) == 0
        assert flat.any() and (plain["if"][flat] == 0).all() and (norms[flat] == 0).all()


def test_a_gradient_of_another_loss_type_is_refused(world):
    tok, val, pool, ref_logps = world
    model = theta(tok)
    gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, loss_type="hinge", desc=None)
    with pytest.raises(ScoringError, match="hinge loss, scoring asks for ipo"):
        influence_scores(model, tok, pool, ref_logps, gradient, beta=BETA, loss_type="ipo", desc=None)


@pytest.mark.parametrize("loss_type", ["hinge", "ipo"])
def test_score_table_takes_lossdiff_of_the_loss_type_and_irm_of_none(world, loss_type):
    tok, val, pool, ref_logps = world
    training = TrainingConfig(loss_type=loss_type, beta=BETA, max_length=MAX_LENGTH)
    models = ScoringModels(tok, theta(tok), build_model(tok, size="small", seed=2))
    gradient = validation_gradient(models.policy, tok, val, ref_logps, beta=BETA, loss_type=loss_type,
                                   max_length=MAX_LENGTH, desc=None)  # fmt: skip
    scores = score_pool(pool, models=models, ref_logps=ref_logps, gradient=gradient, training=training,
                        scoring=ScoringConfig(batch_size=8, shard_size=12))  # fmt: skip
    ref = scores[["ref_chosen_logps", "ref_rejected_logps"]].set_axis(["chosen_logps", "rejected_logps"], axis=1)
    lens = scores[["chosen_len", "rejected_len"]]
    policy = pd.concat([scores[["policy_chosen_logps", "policy_rejected_logps"]].set_axis(
        ["chosen_logps", "rejected_logps"], axis=1), lens], axis=1)
    val_frame = pd.concat([scores[["val_chosen_logps", "val_rejected_logps"]].set_axis(
        ["chosen_logps", "rejected_logps"], axis=1), lens], axis=1)
    np.testing.assert_allclose(scores.loss_warmup, formula(loss_type, BETA, policy, ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores.loss_val, formula(loss_type, BETA, val_frame, ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores.lossdiff, scores.loss_warmup - scores.loss_val, atol=1e-6)
    m = (policy.chosen_logps - ref.chosen_logps) - (policy.rejected_logps - ref.rejected_logps)
    np.testing.assert_allclose(scores.irm, BETA * m, atol=1e-4)


def test_every_stage_that_trains_or_takes_a_loss_reads_the_loss_type():
    for spec in (WARMUP, VALIDATION_MODEL, FINAL, GRADIENT, SHARD):
        assert "training.loss_type" in spec.reads, spec.name


def test_an_unknown_loss_type_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="invalid config field 'training.loss_type'.*'sigmoid', 'hinge' or 'ipo'"):
        load_config(RunConfig, None, ["model.uri=m", "data.pool_uri=p.parquet", "training.loss_type=kto"])
    assert RunConfig.model_validate({"model": {"uri": "m"}, "data": {"pool_uri": "p"}}).training.loss_type == "sigmoid"
