"""Manifests decide what a rerun reuses: these tests pin when a stage's outputs can be vouched for."""

from __future__ import annotations

from datetime import datetime, timezone

from prefcurate import io
from prefcurate.manifest import (
    FileRef,
    StageMeta,
    StageOutput,
    find_output,
    manifest_uri,
    read_manifest,
    write_manifest,
)


class BlobOut(StageOutput):
    VOLATILE = frozenset({"seconds"})

    blob: FileRef
    n: int
    seconds: float = 0.0


def _stage(run, name, data=b"abc", key="k1", seconds=0.0) -> BlobOut:
    ref = FileRef.of(io.write_bytes(io.join(run, f"{name}.bin"), data))
    out = BlobOut(blob=ref, n=len(data), seconds=seconds)
    out.meta = StageMeta(stage=name, run_uri=run, cache_key=key, created_at=datetime.now(timezone.utc))
    return out


def test_manifest_roundtrip_and_find(tmp_path):
    run = str(tmp_path / "run")
    m = _stage(run, "ingest")
    assert find_output(BlobOut, run, "ingest", "k1") is None  # outputs exist, manifest not yet written
    write_manifest(m)
    found = find_output(BlobOut, run, "ingest", "k1")
    assert found == read_manifest(BlobOut, manifest_uri(run, "ingest"))
    assert found.blob.sha256 == io.sha256_bytes(b"abc") and found.blob.size == 3
    assert found.meta.created_at == m.meta.created_at
    assert find_output(BlobOut, run, "ingest", "another-key") is None


def test_missing_output_makes_manifest_stale(tmp_path):
    run = str(tmp_path / "run")
    write_manifest(_stage(run, "ingest"))
    (tmp_path / "run" / "ingest.bin").unlink()
    assert find_output(BlobOut, run, "ingest", "k1") is None


def test_truncated_or_rewritten_output_is_never_reused(tmp_path, caplog):
    run = str(tmp_path / "run")
    write_manifest(_stage(run, "score", b"0123456789"))
    path = tmp_path / "run" / "score.bin"
    path.write_bytes(b"01234")  # truncated
    assert find_output(BlobOut, run, "score", "k1") is None
    assert "blob" in caplog.text and "size 5 bytes, 10 recorded" in caplog.text
    path.write_bytes(b"9876543210")  # same size, other bytes
    assert find_output(BlobOut, run, "score", "k1") is None
    assert "content changed" in caplog.text


def test_unreadable_or_truncated_manifest_means_rerun(tmp_path):
    run = str(tmp_path / "run")
    m = _stage(run, "ingest")
    io.write_text(manifest_uri(run, "ingest"), "{not json")
    assert find_output(BlobOut, run, "ingest", "k1") is None
    io.write_text(manifest_uri(run, "ingest"), m.model_dump_json()[:40])
    assert find_output(BlobOut, run, "ingest", "k1") is None


def test_digest_is_content_not_timing_or_place(tmp_path):
    a = _stage(str(tmp_path / "r1"), "a", b"one", seconds=1.0)
    again = _stage(str(tmp_path / "r2"), "a", b"one", seconds=9.0)  # elsewhere, slower, same bytes
    other = _stage(str(tmp_path / "r1"), "b", b"two")
    assert a.digest == again.digest
    assert a.digest != other.digest


def test_directory_ref_sees_every_file(tmp_path):
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text("{}")
    (d / "sub" / "w.safetensors").write_bytes(b"\x00\x01")
    ref = FileRef.of(str(d))
    assert set(ref.files) == {"a.json", "sub/w.safetensors"} and ref.size == 4
    assert ref.problem() is None
    (d / "sub" / "w.safetensors").write_bytes(b"\x00\x02")
    assert FileRef.of(str(d)).sha256 != ref.sha256
    assert ref.problem() == "file sub/w.safetensors changed (sha256 differs)"
    (d / "a.json").unlink()
    assert ref.problem() == "file a.json missing"


class PartialOut(BlobOut):
    def incomplete(self):
        return "2 items failed" if self.n < 5 else None


def test_an_incomplete_result_is_never_reused(tmp_path, caplog):
    caplog.set_level("INFO", logger="prefcurate.manifest")
    run = str(tmp_path / "run")
    ref = FileRef.of(io.write_bytes(io.join(run, "p.bin"), b"abc"))
    for n, reused in ((3, False), (7, True)):
        out = PartialOut(blob=ref, n=n)
        out.meta = StageMeta(stage="judge", run_uri=run, cache_key="k", created_at=datetime.now(timezone.utc))
        write_manifest(out)
        assert (find_output(PartialOut, run, "judge", "k") is not None) is reused
    assert "finished incomplete (2 items failed)" in caplog.text
