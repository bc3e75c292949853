"""Which of TRL's own savings DPO training gets, fenced so a TRL upgrade that changes them is noticed.

TRL 1.16's DPOTrainer patches the policy with its fused LM head (`add_fused_lm_head`): the
training forward projects onto the vocabulary only the positions whose label is not -100,
i.e. the completion tokens, in tiles — the saving the scoring stage makes with
`AnswerLogps`. Its `padding_free` is disabled in this minor ("temporarily unavailable after a
refactor"), and DPOConfig has no `use_logits_to_keep`; prefcurate.training.dpo sets neither.
The first test checks the trained model answers TRL's fused call with per-token log-probs and no logits
tensor, equal to our answer-only log-probs; the positions TRL projects are its own business (its kernel
reads the head's weight directly, so a hook cannot count them). When a TRL release brings padding-free back, the second test fails: turn it on in `dpo_args`
then (it needs FlashAttention), with a loss-curve test.
"""

from __future__ import annotations

import torch
from trl import DPOConfig

from prefcurate.config import TrainingConfig
from prefcurate.scoring.logps import compute_logps, make_collator, sequence_logps, tokenize_pairs
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.dpo import fit_dpo
from tests.prefcurate.scoring.test_logps import toy_pairs


def test_dpo_training_runs_the_output_head_at_completion_positions_only():
    tok = build_tokenizer()
    pairs = toy_pairs(8, seed=4)
    model = build_model(tok, size="small", seed=0)
    ref = compute_logps(model, tok, pairs, desc=None)
    fit = fit_dpo(model, tok, pairs, TrainingConfig(batch_size=4), epochs=1, ref_logps=ref)
    trained = fit.model.eval()
    rows = [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in tokenize_pairs(pairs, tok)]
    batch = make_collator(tok, 512, "keep_start")(rows)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = trained(input_ids=batch["input_ids"], labels=labels, fused_lm_head=True)
    # TRL's fused head: per-token log-probs of the labelled (completion) positions, no logits tensor at all
    assert getattr(out, "logits", None) is None
    prompt_or_pad = batch["completion_mask"][:, 1:] == 0
    assert prompt_or_pad.any() and bool((out.log_probs[prompt_or_pad] == 0).all())
    with torch.no_grad():
        ours = sequence_logps(trained, batch["input_ids"], batch["completion_mask"])
    torch.testing.assert_close(out.log_probs.sum(-1), ours, rtol=1e-5, atol=1e-4)


def test_trl_padding_free_is_still_disabled_in_this_minor(tmp_path):
    from trl.trainer.dpo_trainer import DPOTrainer

    assert "padding_free" in DPOConfig.__dataclass_fields__
    assert "use_logits_to_keep" not in DPOConfig.__dataclass_fields__
    source = __import__("inspect").getsource(DPOTrainer.__init__)
    assert "temporarily unavailable" in source and "self.padding_free = False" in source
