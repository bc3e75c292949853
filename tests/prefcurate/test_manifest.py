"""Manifests decide what a rerun skips: these tests pin when a stage counts as finished."""

from __future__ import annotations

from prefcurate import io
from prefcurate.config import ScoringConfig, SelectionConfig
from prefcurate.manifest import (
    cache_key,
    code_version,
    content_hash,
    find_manifest,
    manifest_uri,
    new_manifest,
    read_manifest,
    write_manifest,
)


def _stage(run, name, data=b"abc", inputs=(), config=None):
    out = io.write_bytes(io.join(run, f"{name}.bin"), data)
    key = cache_key(name, inputs, config, "v1")
    return new_manifest(name, run, key=key, inputs=inputs, config=config, code="v1", outputs={"blob": out}, rows={"n": len(data)})


def test_manifest_roundtrip_and_find(tmp_path):
    run = str(tmp_path / "run")
    m = _stage(run, "ingest")
    assert find_manifest(run, "ingest", m.cache_key) is None  # outputs exist, manifest not yet written
    write_manifest(m)
    found = find_manifest(run, "ingest", m.cache_key)
    assert found == read_manifest(manifest_uri(run, "ingest"))
    assert found.hashes["blob"] == io.sha256_bytes(b"abc")
    assert found.created_at == m.created_at
    assert find_manifest(run, "ingest", "another-key") is None


def test_missing_output_makes_manifest_stale(tmp_path):
    run = str(tmp_path / "run")
    m = _stage(run, "ingest")
    write_manifest(m)
    (tmp_path / "run" / "ingest.bin").unlink()
    assert find_manifest(run, "ingest", m.cache_key) is None


def test_unreadable_manifest_means_rerun(tmp_path):
    run = str(tmp_path / "run")
    m = _stage(run, "ingest")
    io.write_text(manifest_uri(run, "ingest"), "{not json")
    assert find_manifest(run, "ingest", m.cache_key) is None


def test_cache_key_depends_on_inputs_config_and_code(tmp_path):
    run = str(tmp_path / "run")
    a = _stage(run, "a", b"one")
    a2 = _stage(run, "a", b"two")
    base = cache_key("score", [a], ScoringConfig(), "v1")
    assert base == cache_key("score", [a], ScoringConfig(), "v1")
    assert base != cache_key("score", [a2], ScoringConfig(), "v1")  # input content changed
    assert base != cache_key("score", [a], ScoringConfig(batch_size=7), "v1")
    assert base != cache_key("score", [a], ScoringConfig(), "v2")
    assert base != cache_key("select", [a], ScoringConfig(), "v1")
    # a manifest's digest ignores when it was written: a recomputed identical stage keys the same
    again = _stage(run, "a", b"one")
    assert cache_key("score", [again], ScoringConfig(), "v1") == base


def test_code_version_tracks_module_source():
    v = code_version(["prefcurate.manifest"])
    assert v.startswith("0.") and "+" in v
    assert v == code_version(["prefcurate.manifest"])
    assert v != code_version(["prefcurate.io"])


def test_directory_hash_sees_every_file(tmp_path):
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text("{}")
    (d / "sub" / "w.safetensors").write_bytes(b"\x00\x01")
    h1 = content_hash(str(d))
    (d / "sub" / "w.safetensors").write_bytes(b"\x00\x02")
    assert content_hash(str(d)) != h1
    config = SelectionConfig()
    m = new_manifest("x", str(tmp_path), key="k", config=config, outputs={"dir": str(d)})
    assert m.hashes["dir"] == content_hash(str(d))
