"""DPO training: learns the preferences, is seeded, and is always regularised towards π_ref."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from prefcurate.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from prefcurate.config import LoraSettings, ModelSource, TrainingConfig
from prefcurate.errors import CheckpointError
from prefcurate.evaluation.stage import GENERATE
from prefcurate.scoring.influence import influence_scores, trainable_parameters, validation_gradient
from prefcurate.scoring.logps import compute_logps
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.dpo import fit_dpo, train_dpo
from tests.prefcurate.scoring.test_influence import dot, per_pair_gradients
from tests.prefcurate.scoring.test_logps import toy_pairs

pytestmark = pytest.mark.slow

FULL = TrainingConfig(batch_size=8, learning_rate=1e-3, seed=3)
LORA = TrainingConfig(batch_size=8, learning_rate=1e-2, seed=3, lora=LoraSettings(r=4, alpha=8))


def dpo_stats(model, tok, pairs, ref_logps, beta):
    """Mean DPO loss and mean implicit reward margin β·m over `pairs`."""
    logps = compute_logps(model, tok, pairs, desc=None)
    m = (logps.chosen_logps - ref_logps.chosen_logps) - (logps.rejected_logps - ref_logps.rejected_logps)
    return float(np.mean(np.logaddexp(0.0, -beta * m))), float(np.mean(beta * m))


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    pairs = toy_pairs(48, seed=5)
    ref_logps = compute_logps(build_model(tok, size="small", seed=0), tok, pairs, desc=None)
    return tok, pairs, ref_logps


@pytest.mark.parametrize("training", [FULL, LORA], ids=["full", "lora"])
def test_dpo_lowers_loss_raises_margin_and_is_seeded(setup, training):
    tok, pairs, ref_logps = setup
    loss0, margin0 = dpo_stats(build_model(tok, size="small", seed=0), tok, pairs, ref_logps, training.beta)
    assert loss0 == pytest.approx(np.log(2), abs=1e-5) and margin0 == pytest.approx(0.0, abs=1e-5)

    runs = []
    for _ in range(2):
        fit = fit_dpo(build_model(tok, size="small", seed=0), tok, pairs, training, epochs=1, ref_logps=ref_logps)
        runs.append(fit.model)
    assert fit.n_trained == len(pairs) and fit.global_step == 6
    loss1, margin1 = dpo_stats(runs[0], tok, pairs, ref_logps, training.beta)
    assert loss1 < loss0 - 0.01
    assert margin1 > margin0 + 0.02
    first, second = runs[0].state_dict(), runs[1].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def max_weight_difference(dir_a: str, dir_b: str) -> float:
    a, b = load_checkpoint(dir_a).model.state_dict(), load_checkpoint(dir_b).model.state_dict()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_reference_is_pi_ref_not_the_starting_model(setup, tmp_path):
    """A stage that starts from θ must regularise towards the SFT model, stored or loaded."""
    tok, _, _ = setup
    sft_dir, theta_dir = str(tmp_path / "sft"), str(tmp_path / "theta")
    sft_fp = save_checkpoint(build_model(tok, size="small", seed=0), tok, sft_dir)
    theta_fp = save_checkpoint(build_model(tok, size="small", seed=1), tok, theta_dir)
    val = toy_pairs(16, seed=9)
    val_ref = compute_logps(load_checkpoint(sft_dir).model, tok, val, desc=None)

    stored = train_dpo(theta_dir, val, str(tmp_path / "a"), FULL, epochs=1, ref_logps=val_ref, reference_dir=sft_dir)
    loaded = train_dpo(theta_dir, val, str(tmp_path / "b"), FULL, epochs=1, reference_dir=sft_dir)
    itself = train_dpo(theta_dir, val, str(tmp_path / "c"), FULL, epochs=1)  # θ as its own reference
    assert max_weight_difference(stored.uri, loaded.uri) < 1e-5
    assert max_weight_difference(stored.uri, itself.uri) > 1e-3
    assert stored.metadata["reference_fingerprint"] == loaded.metadata["reference_fingerprint"] == sft_fp
    assert stored.metadata["parent_fingerprint"] == theta_fp
    assert itself.metadata["reference_fingerprint"] == theta_fp


def adapter_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainable_parameters(model).items()}


def test_lora_stages_save_only_the_adapter_and_continue_training_it(setup, tmp_path):
    """θ = base + warm-up adapter; θ_val trains that same adapter further (A and B) on the same base."""
    tok, pairs, ref_logps = setup
    sft_dir = str(tmp_path / "sft")
    sft_fp = save_checkpoint(build_model(tok, size="small", seed=0), tok, sft_dir)
    warm = train_dpo(sft_dir, pairs, str(tmp_path / "warmup"), LORA, epochs=1, stage="warmup")
    files = {p.name for p in (tmp_path / "warmup").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "prefcurate.json"} <= files
    assert "model.safetensors" not in files and "config.json" not in files  # no full weights
    meta = json.loads((tmp_path / "warmup" / "prefcurate.json").read_text())
    assert meta["base"]["uri"] == sft_dir and meta["base_fingerprint"] == sft_fp
    assert meta["parent_fingerprint"] == meta["reference_fingerprint"] == sft_fp
    assert meta["fingerprint"] == warm.fingerprint == fingerprint(tmp_path / "warmup") and meta["stage"] == "warmup"
    assert meta["data"]["n_pairs"] == len(pairs) and meta["training"]["lora"]["r"] == 4

    theta = load_checkpoint(warm.uri)
    assert theta.base_fingerprint == sft_fp and theta.fingerprint == warm.fingerprint
    before = adapter_weights(theta.model)
    assert before and all(".lora_A." in k or ".lora_B." in k for k in before)
    loss, margin = dpo_stats(theta.model, tok, pairs, ref_logps, LORA.beta)
    assert loss < np.log(2) - 0.01 and margin > 0.02

    val_pairs = toy_pairs(16, seed=9)
    val_ref = compute_logps(load_checkpoint(sft_dir).model, tok, val_pairs, desc=None)
    val = train_dpo(warm.uri, val_pairs, str(tmp_path / "val"), LORA, epochs=1, ref_logps=val_ref,
                    reference_dir=sft_dir, stage="val")
    val_meta = json.loads((tmp_path / "val" / "prefcurate.json").read_text())
    assert val_meta["base_fingerprint"] == sft_fp and val_meta["parent_fingerprint"] == warm.fingerprint
    assert val_meta["reference_fingerprint"] == sft_fp
    theta_val = load_checkpoint(val.uri)
    assert list(theta_val.model.peft_config) == ["default"]  # TRL's "ref" copy is not saved
    after = adapter_weights(theta_val.model)
    assert after.keys() == before.keys()
    for part in (".lora_A.", ".lora_B."):  # the warm-up's A and B moved on, not a fresh B = 0 adapter
        assert max(float((after[k] - before[k]).abs().max()) for k in after if part in k) > 1e-4
    assert min(float(after[k].abs().max()) for k in after if ".lora_B." in k) > 0


def test_a_loaded_adapter_scores_like_the_model_in_memory(setup, tmp_path):
    """Base + adapter from disk: the same log-probs as the trained model, and IF over its A and B
    equals the per-example autograd loop over the adapter parameters."""
    tok, pairs, ref_logps = setup
    sft_dir = str(tmp_path / "sft")
    sft_fp = save_checkpoint(build_model(tok, size="small", seed=0), tok, sft_dir)
    fit = fit_dpo(load_checkpoint(sft_dir).model, tok, pairs, LORA, epochs=1, ref_logps=ref_logps)
    save_checkpoint(fit.model, tok, str(tmp_path / "theta"), base=ModelSource(uri=sft_dir), base_fingerprint=sft_fp)
    loaded = load_checkpoint(str(tmp_path / "theta")).model
    in_memory, from_disk = compute_logps(fit.model, tok, pairs, desc=None), compute_logps(loaded, tok, pairs, desc=None)
    np.testing.assert_allclose(from_disk["chosen_logps"], in_memory["chosen_logps"], atol=1e-5)
    np.testing.assert_allclose(from_disk["rejected_logps"], in_memory["rejected_logps"], atol=1e-5)

    val, pool = pairs.select(range(12)), pairs.select(range(12, 36))
    gradient = validation_gradient(loaded, tok, val, ref_logps, beta=LORA.beta, batch_size=4, desc=None)
    assert {".lora_A." in k for k in gradient.tensors} == {True, False}  # both A and B, nothing of the base
    assert all(".lora_A." in k or ".lora_B." in k for k in gradient.tensors)
    scores = influence_scores(loaded, tok, pool, ref_logps, gradient, beta=LORA.beta, batch_size=8, desc=None)
    loop = np.array([dot(g, gradient.tensors) for g in per_pair_gradients(loaded, tok, pool, ref_logps, LORA.beta)])
    a_only = np.array([dot({k: v for k, v in g.items() if ".lora_A." in k}, gradient.tensors)
                       for g in per_pair_gradients(loaded, tok, pool, ref_logps, LORA.beta)])
    assert np.abs(a_only).max() > 1e-3 * np.abs(loop).max()  # A really contributes
    assert np.abs(scores["if"].to_numpy() - loop).max() / np.abs(loop).max() < 1e-4


def test_an_adapter_refuses_a_changed_or_missing_base(setup, tmp_path):
    tok, pairs, ref_logps = setup
    sft_dir = str(tmp_path / "sft")
    sft_fp = save_checkpoint(build_model(tok, size="small", seed=0), tok, sft_dir)
    warm = train_dpo(sft_dir, pairs.select(range(16)), str(tmp_path / "warmup"), LORA, epochs=1, ref_logps=ref_logps)
    # a stage given this adapter from outside the run (generate) is keyed by the adapter and its base
    assert GENERATE.identify(None, {"model": warm.uri}) == f"{warm.fingerprint}+{sft_fp}"
    save_checkpoint(build_model(tok, size="small", seed=1), tok, sft_dir)  # the base is replaced
    with pytest.raises(CheckpointError, match="has changed") as changed:
        load_checkpoint(warm.uri)
    assert "\n" not in str(changed.value)
    with pytest.raises(CheckpointError, match="has changed"):  # nor is a cached stage of it reused
        GENERATE.identify(None, {"model": warm.uri})
    shutil.rmtree(sft_dir)
    with pytest.raises(CheckpointError, match="base model of adapter .* cannot be used: .* does not exist") as missing:
        load_checkpoint(warm.uri)
    assert "\n" not in str(missing.value)


def test_training_keeps_its_log_dicts_off_stdout(setup, capfd):
    """The CLI prints tables to stdout; TRL's per-log dicts must not interleave with them,
    while the same numbers stay in the trainer's log history."""
    tok, pairs, ref_logps = setup
    training = FULL.model_copy(update={"logging_steps": 1})
    fit = fit_dpo(build_model(tok, size="small", seed=0), tok, pairs, training, epochs=1, ref_logps=ref_logps)
    out = capfd.readouterr().out
    assert "'loss'" not in out and "train_runtime" not in out
    assert any("loss" in entry for entry in fit.log_history)
