"""fsspec IO: local and s3:// behave alike, writes are atomic, and remote copies stay fresh."""

from __future__ import annotations

import pandas as pd
import pytest

from prefcurate import io
from prefcurate.errors import StorageError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


def test_json_and_parquet_roundtrip(root):
    frame = pd.DataFrame({"pair_id": ["a", "b"], "score": [0.5, None]})
    io.write_parquet(io.join(root, "x", "scores.parquet"), frame)
    io.write_json(io.join(root, "x", "meta.json"), {"b": 1, "a": [1, 2]})
    pd.testing.assert_frame_equal(io.read_parquet(io.join(root, "x", "scores.parquet")), frame)
    assert io.read_json(io.join(root, "x", "meta.json")) == {"a": [1, 2], "b": 1}
    assert io.exists(io.join(root, "x", "meta.json")) and not io.exists(io.join(root, "x", "nope.json"))
    with pytest.raises(StorageError, match="does not exist"):
        io.read_bytes(io.join(root, "x", "nope.json"))


def test_local_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    io.write_text(str(target), "old")

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(StorageError, match="power cut"):
        io.write_text(str(target), "new")
    assert target.read_text() == "old", "a failed write never replaces the previous file"


def test_join_keeps_scheme():
    assert io.join("s3://b/run/", "/data", "train.parquet") == "s3://b/run/data/train.parquet"
    assert io.is_remote("s3://b/x") and not io.is_remote("/tmp/x") and not io.is_remote("file:///tmp/x")


def test_sha256_json_ignores_key_order():
    assert io.sha256_json({"a": 1, "b": [1, 2]}) == io.sha256_json({"b": [1, 2], "a": 1})
    assert io.sha256_json({"a": 1}) != io.sha256_json({"a": 2})


def test_local_copy_dir_downloads_once_and_refreshes(s3_bucket, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    uri = f"{s3_bucket}/ckpt"
    io.upload_dir(src, uri)
    cache = tmp_path / "cache"
    with io.local_copy_dir(uri, cache) as first:
        assert (first / "sub" / "w.bin").read_bytes() == b"\x00" * 10
    with io.local_copy_dir(uri, cache) as second:
        assert second == first, "an unchanged prefix is served from the cache"
    io.write_text(f"{uri}/config.json", '{"changed": true}')
    with io.local_copy_dir(uri, cache) as third:
        assert third != first and (third / "config.json").read_text() == '{"changed": true}'
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_local_copy_dir_missing(s3_bucket, tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        with io.local_copy_dir(f"{s3_bucket}/absent", tmp_path):
            pass
    with pytest.raises(StorageError):
        with io.local_copy_dir("s3://bucket-that-was-never-made/x", tmp_path):
            pass


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root to mount; skipped with the reason otherwise)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_fails_at_once_and_leaves_nothing_behind(tiny_disk):
    from prefcurate.errors import StorageError

    with pytest.raises(StorageError, match="No space left") as info:
        io.write_bytes(str(tiny_disk / "big.bin"), b"x" * 1_000_000)
    assert not info.value.transient  # a full disk is not retried
    assert list(tiny_disk.iterdir()) == []  # no *.tmp-* file, no partial file


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os as real_os

    from prefcurate.errors import StorageError

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(StorageError):
        io.write_bytes(str(tmp_path / "a.bin"), b"data")
    monkeypatch.setattr(io.os, "replace", real_os.replace)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_bucket_is_an_error_never_created(moto_s3):
    import s3fs

    from prefcurate.errors import StorageError

    with pytest.raises(StorageError, match="bucket no-such-bucket-xyz .* does not exist; create it first"):
        io.write_text("s3://no-such-bucket-xyz/runs/a.txt", "x")
    assert not s3fs.S3FileSystem().exists("no-such-bucket-xyz")
