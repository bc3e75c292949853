"""Training stages' cache keys: each stage depends on its own epochs only, so changing
`final_epochs` retrains the final models but keeps θ and θ_val."""

from __future__ import annotations

from prefcurate.config import TrainingConfig
from prefcurate.manifest import cache_key
from tasks.train import _section


def test_each_stage_keys_on_its_own_epochs():
    base, longer_final = TrainingConfig(), TrainingConfig(final_epochs=3.0)
    for kind in ("warmup", "val"):
        assert cache_key(kind, [], _section(base, kind), "v") == cache_key(kind, [], _section(longer_final, kind), "v")
    assert cache_key("final", [], _section(base, "final"), "v") != cache_key("final", [], _section(longer_final, "final"), "v")
    # a change every stage sees (the learning rate) retrains all of them
    faster = TrainingConfig(learning_rate=1e-4)
    for kind in ("warmup", "val", "final"):
        assert cache_key(kind, [], _section(base, kind), "v") != cache_key(kind, [], _section(faster, kind), "v")


def test_a_chat_template_given_at_ingest_reaches_every_later_stage(toy_world, tmp_path):
    """A checkpoint without its own chat template, supplied with `ModelSource.chat_template`,
    must be usable by the reference and warm-up stages (they load the source, not the bare URI)."""
    import json
    import shutil
    from pathlib import Path

    from prefcurate.checkpoint import load_checkpoint
    from prefcurate.config import DataSource, ModelSource, ScoringConfig
    from prefcurate.toyworld.tokenizer import CHAT_TEMPLATE
    from tasks.ingest import ingest_stage
    from tasks.score import reference_stage
    from tasks.train import warmup_stage

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
    model = ModelSource(uri=str(bare), chat_template=str(template))
    source = DataSource(pool_uri=toy_world.pool_parquet, validation_uri=toy_world.validation_parquet)
    ingest = ingest_stage.fn(model, source, run, str(tmp_path / "cache"))
    ref = reference_stage.fn(ingest, TrainingConfig(), ScoringConfig(), run)
    warmup = warmup_stage.fn(ingest, ref, TrainingConfig(warmup_epochs=0.2), run)

    trained = load_checkpoint(warmup.outputs["model"])  # saved with the supplied template
    assert trained.tokenizer.chat_template == CHAT_TEMPLATE
    assert ref.rows["pairs"] == ingest.rows["train"] + ingest.rows["validation"]
    assert Path(warmup.outputs["model"], "model.safetensors").exists()
