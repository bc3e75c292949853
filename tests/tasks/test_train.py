"""Training stages' cache keys: each stage depends on its own epochs only, so changing
`final_epochs` retrains the final models but keeps θ and θ_val."""

from __future__ import annotations

from prefcurate.config import DataSource, ModelSource, NightlyConfig, ScoringConfig, TrainingConfig
from prefcurate.stage import read_config
from prefcurate.training.stage import FINAL, VALIDATION_MODEL, WARMUP


def _config(**training) -> NightlyConfig:
    return NightlyConfig(model=ModelSource(uri="m"), data=DataSource(pool_uri="p"), training=TrainingConfig(**training))


def test_each_stage_keys_on_its_own_epochs():
    base, longer_final = _config(), _config(final_epochs=3.0)
    for spec in (WARMUP, VALIDATION_MODEL):
        assert read_config(base, spec.reads) == read_config(longer_final, spec.reads)
    assert read_config(base, FINAL.reads) != read_config(longer_final, FINAL.reads)
    # a change every stage sees (the learning rate) retrains all of them
    faster = _config(learning_rate=1e-4)
    for spec in (WARMUP, VALIDATION_MODEL, FINAL):
        assert read_config(base, spec.reads) != read_config(faster, spec.reads)


def test_a_chat_template_given_at_ingest_reaches_every_later_stage(toy_world, tmp_path):
    """A checkpoint without its own chat template, supplied with `ModelSource.chat_template`,
    must be usable by the reference and warm-up stages (they load the source, not the bare URI)."""
    import json
    import shutil
    from pathlib import Path

    from prefcurate.checkpoint import load_checkpoint
    from prefcurate.tasks.ingest import ingest_stage
    from prefcurate.tasks.score import reference_stage
    from prefcurate.tasks.train import warmup_stage
    from prefcurate.toyworld.tokenizer import CHAT_TEMPLATE

    bare = tmp_path / "sft-without-template"
    shutil.copytree(toy_world.checkpoint_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config_file = bare / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config.pop("chat_template", None)
    config_file.write_text(json.dumps(tok_config))
    template = tmp_path / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)

    run = str(tmp_path / "run")
    config = NightlyConfig(
        model=ModelSource(uri=str(bare), chat_template=str(template)), cache_dir=str(tmp_path / "cache"),
        data=DataSource(pool_uri=toy_world.pool_parquet, validation_uri=toy_world.validation_parquet),
        training=TrainingConfig(warmup_epochs=0.2), scoring=ScoringConfig(),
    )
    ingest = ingest_stage.fn(config, run)
    ref = reference_stage.fn(ingest, config, run)
    warmup = warmup_stage.fn(ingest, ref, config, run)

    trained = load_checkpoint(warmup.model.uri)  # saved with the supplied template
    assert trained.tokenizer.chat_template == CHAT_TEMPLATE
    assert ref.pairs == ingest.n_train + ingest.n_validation
    assert Path(warmup.model.uri, "model.safetensors").exists()
