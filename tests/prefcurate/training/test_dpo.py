"""DPO training: learns the preferences, is seeded, and is always regularised towards π_ref."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prefcurate.checkpoint import load_checkpoint, save_checkpoint
from prefcurate.config import LoraSettings, TrainingConfig
from prefcurate.scoring.logps import compute_logps
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.dpo import fit_dpo, merged, train_dpo
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
        runs.append(merged(fit.model))
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


def test_lora_warmup_saves_a_plain_merged_checkpoint_with_lineage(setup, tmp_path):
    tok, pairs, ref_logps = setup
    sft_dir = str(tmp_path / "sft")
    sft_fp = save_checkpoint(build_model(tok, size="small", seed=0), tok, sft_dir)
    out = train_dpo(sft_dir, pairs, str(tmp_path / "warmup"), LORA, epochs=1, stage="warmup")
    meta = json.loads((tmp_path / "warmup" / "prefcurate.json").read_text())
    assert meta["parent_fingerprint"] == meta["reference_fingerprint"] == sft_fp
    assert meta["fingerprint"] == out.fingerprint and meta["stage"] == "warmup"
    assert meta["data"]["n_pairs"] == len(pairs) and meta["training"]["lora"]["r"] == 4
    loaded = load_checkpoint(out.uri)
    assert not any("lora" in name for name, _ in loaded.model.named_parameters())
    loss, margin = dpo_stats(loaded.model, tok, pairs, ref_logps, LORA.beta)
    assert loss < np.log(2) - 0.01 and margin > 0.02


def test_training_keeps_its_log_dicts_off_stdout(setup, capfd):
    """The CLI prints tables to stdout; TRL's per-log dicts must not interleave with them,
    while the same numbers stay in the trainer's log history."""
    tok, pairs, ref_logps = setup
    training = FULL.model_copy(update={"logging_steps": 1})
    fit = fit_dpo(build_model(tok, size="small", seed=0), tok, pairs, training, epochs=1, ref_logps=ref_logps)
    out = capfd.readouterr().out
    assert "'loss'" not in out and "train_runtime" not in out
    assert any("loss" in entry for entry in fit.log_history)
