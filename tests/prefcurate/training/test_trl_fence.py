"""The fence around TRL's private reference-log-prob hook: fast, so a TRL upgrade that renames
it fails here at once instead of silently training against the wrong reference."""

from __future__ import annotations

import inspect

import pytest
import torch
from trl import DPOTrainer

from prefcurate.config import TrainingConfig
from prefcurate.errors import ConfigError
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training import dpo
from prefcurate.training.dpo import REF_COLUMNS, StoredReferenceDPOTrainer, dpo_args, with_reference_columns
from tests.prefcurate.scoring.test_logps import toy_pairs


def test_the_private_hook_still_exists_with_its_signature():
    hook = getattr(DPOTrainer, "_precompute_ref_logps", None)
    assert hook is not None, "TRL renamed _precompute_ref_logps: rework prefcurate.training.dpo"
    assert list(inspect.signature(hook).parameters) == ["self", "dataset", "name", "batch_size"]


def _trainer(tmp_path, pairs, cls=StoredReferenceDPOTrainer):
    tok = build_tokenizer()
    model = build_model(tok, size="small", seed=0)
    return cls(model=model, args=dpo_args(TrainingConfig(batch_size=4), 1.0, str(tmp_path), None),
               train_dataset=pairs, processing_class=tok)


def _stored(n=8):
    import pandas as pd

    pairs = toy_pairs(n, seed=1)
    # reference values no model would give: if TRL recomputed them, they would differ
    frame = pd.DataFrame({"pair_id": pairs["pair_id"], "chosen_logps": [-1000.0 - i for i in range(n)],
                          "rejected_logps": [-2000.0 - i for i in range(n)]})
    return with_reference_columns(pairs, frame), frame


def test_a_trainer_with_stored_reference_columns_uses_exactly_those_values(tmp_path):
    pairs, frame = _stored()
    trainer = _trainer(tmp_path, pairs)
    data = trainer.train_dataset
    by_id = dict(zip(data["pair_id"], zip(data[REF_COLUMNS[0]], data[REF_COLUMNS[1]])))
    for pid, c, r in zip(frame.pair_id, frame.chosen_logps, frame.rejected_logps):
        assert by_id[pid] == (pytest.approx(c), pytest.approx(r))
    batch = trainer.data_collator([data[i] for i in range(4)])
    assert torch.equal(batch["ref_chosen_logps"], torch.tensor(data[REF_COLUMNS[0]][:4]))


def test_a_recomputed_reference_is_refused(tmp_path, monkeypatch):
    """What a TRL rename would do — recompute π_ref from the trained model — is caught at construction."""
    pairs, _ = _stored()

    def recompute(self, dataset, name, batch_size):
        return dataset.map(lambda row: {REF_COLUMNS[0]: 0.0, REF_COLUMNS[1]: 0.0})

    monkeypatch.setattr(dpo.StoredReferenceDPOTrainer, "_precompute_ref_logps", recompute)
    with pytest.raises(ConfigError, match="recomputed the reference log-probs"):
        _trainer(tmp_path, pairs)
