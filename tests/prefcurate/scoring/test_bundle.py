"""The score store and scoring bundles without models: parts verified before use, bundles verified,
and the refresh policy's decisions."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pandas as pd
import pytest

from prefcurate import io
from prefcurate.config import RefreshConfig
from prefcurate.manifest import FileRef
from prefcurate.scoring.bundle import BUNDLE_JSON, LATEST, BundleOut, bundles_uri, latest_bundle, refresh_reason
from prefcurate.scoring.store import ScoreStore
from prefcurate.training.stage import ModelOut

NOW = datetime(2026, 12, 2, tzinfo=timezone.utc)


def test_store_parts_are_verified_and_identities_kept_apart(tmp_path, caplog):
    store = ScoreStore(str(tmp_path), "s-one")
    store.append("night-1", pd.DataFrame({"pair_id": ["a", "b"], "if": [1.0, 2.0]}))
    store.append("night-2", pd.DataFrame({"pair_id": ["b", "c"], "if": [9.0, 3.0]}))
    assert store.read()["pair_id"].tolist() == ["a", "b", "c"]
    assert store.read().set_index("pair_id").loc["b", "if"] == 2.0  # the first part holding a pair wins
    assert ScoreStore(str(tmp_path), "s-other").pair_ids() == set()  # another bundle's scores are never read
    before = store.state()
    part = tmp_path / "scores" / "s-one" / "part-night-2.parquet"
    part.write_bytes(part.read_bytes() + b"junk")
    with caplog.at_level(logging.WARNING, logger="prefcurate.scoring.store"):
        assert store.pair_ids() == {"a", "b"}  # the damaged part's pairs are missing, so they are scored again
    assert "changed since it was written" in caplog.text and store.state() != before
    (tmp_path / "scores" / "s-one" / "part-night-1.json").write_text("{not json")
    assert store.pair_ids() == set()


def _bundle(tmp_path, *, validation="v1", created=NOW, recipe_of=None) -> tuple[BundleOut, str]:
    """A bundle in a store under tmp_path whose 'models' are small files."""
    store = str(tmp_path / "store")
    root = io.join(bundles_uri(store, "f" * 64), "b-1")
    refs = {name: FileRef.of(io.write_bytes(io.join(root, name), name.encode())) for name in ("warmup", "val")}
    model = lambda ref: ModelOut(model=ref, fingerprint=ref.sha256, n_pairs=10, n_trained=10, steps=1, train_loss=0.5, seconds=1.0)  # noqa: E731
    from prefcurate.scoring.bundle import recipe

    bundle = BundleOut(id="b-1", sft_fingerprint="f" * 64, validation_sha256=validation, recipe=recipe(recipe_of),
                       n_pool=10, warmup=model(refs["warmup"]), val=model(refs["val"]), gradient=None, created_at=created,
                       source_run="runs/x")
    io.write_text(io.join(root, BUNDLE_JSON), bundle.model_dump_json())
    io.write_text(io.join(bundles_uri(store, "f" * 64), LATEST), "b-1\n")
    return bundle, store


def _config(store: str, **refresh):
    from prefcurate.config import NightlyConfig

    return NightlyConfig.model_validate({"model": {"uri": "m"}, "data": {"pool_uri": "p.parquet"}, "store_uri": store,
                                         "refresh": refresh})


def _ingest(validation="v1", n_train=100):
    return SimpleNamespace(sft_fingerprint="f" * 64, validation=SimpleNamespace(sha256=validation), n_train=n_train)


def test_latest_bundle_is_verified(tmp_path):
    assert latest_bundle(str(tmp_path / "empty"), "f" * 64) == (None, None)
    config = _config("unused")
    bundle, store = _bundle(tmp_path, recipe_of=config)
    found, problem = latest_bundle(store, "f" * 64)
    assert problem is None and found.id == "b-1"
    (tmp_path / "store" / "bundles" / ("f" * 16) / "b-1" / "val").write_bytes(b"VAL")
    found, problem = latest_bundle(store, "f" * 64)
    assert "val.model" in problem and "sha256 differs" in problem
    assert refresh_reason(found, problem, _ingest(), config, n_new=0) == problem  # damaged: always refreshed


@pytest.mark.parametrize(
    "refresh, ingest, n_new, age_days, refreshed",
    [
        ({}, _ingest(), 5, 1, None),
        ({}, _ingest(validation="v2"), 0, 1, "validation set changed"),
        ({"policy": "never"}, _ingest(validation="v2"), 90, 100, None),
        ({"policy": "every-n-days", "days": 3}, _ingest(), 0, 2.9, None),
        ({"policy": "every-n-days", "days": 3}, _ingest(), 0, 3.1, "3.1 days old"),
        ({"policy": "new-fraction", "new_fraction": 0.2}, _ingest(), 20, 1, None),
        ({"policy": "new-fraction", "new_fraction": 0.2}, _ingest(), 21, 1, "21 of 100 pairs (21.0%) are new"),
    ],
)
def test_refresh_policy(tmp_path, refresh, ingest, n_new, age_days, refreshed):
    config = _config(str(tmp_path), **refresh)
    bundle, _ = _bundle(tmp_path, created=NOW - timedelta(days=age_days), recipe_of=config)
    reason = refresh_reason(bundle, None, ingest, config, n_new, now=NOW)
    assert reason is None if refreshed is None else refreshed in reason


def test_no_bundle_or_another_recipe_always_refreshes(tmp_path):
    config = _config(str(tmp_path), policy="never")
    assert "no scoring bundle" in refresh_reason(None, None, _ingest(), config, 0)
    bundle, _ = _bundle(tmp_path, recipe_of=config)
    other = config.model_copy(update={"training": config.training.model_copy(update={"beta": 0.1})})
    assert "config differs" in refresh_reason(bundle, None, _ingest(), other, 0)


def test_refresh_config_refuses_unknown_policies():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RefreshConfig(policy="weekly")
