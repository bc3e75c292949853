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
