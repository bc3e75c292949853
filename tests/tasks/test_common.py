"""run_stage: skip when the manifest matches, compute otherwise, manifest written last; IO retry policy."""

from __future__ import annotations

import pytest

from prefcurate import io
from prefcurate.errors import DataError, StorageError
from prefcurate.manifest import manifest_uri
from tasks.common import StageOutput, retry_on_io, run_stage


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self, raise_on_failure=False):
        return self.exc


def test_retry_only_on_transient_io():
    assert retry_on_io(None, None, _State(StorageError("s3 down")))
    assert retry_on_io(None, None, _State(ConnectionError()))
    assert not retry_on_io(None, None, _State(FileNotFoundError()))
    assert not retry_on_io(None, None, _State(DataError("bad rows")))
    assert not retry_on_io(None, None, _State(ValueError("bug")))


def test_run_stage_computes_once_then_skips(tmp_path):
    run = str(tmp_path / "run")
    calls = []

    def compute(_):
        calls.append(1)
        return StageOutput(outputs={"x": io.write_text(io.join(run, "x.txt"), "hello")}, rows={"n": 1})

    first = run_stage("s", run, inputs=(), config={"a": 1}, modules=("prefcurate.io",), tracking=None, compute=compute)
    second = run_stage("s", run, inputs=(), config={"a": 1}, modules=("prefcurate.io",), tracking=None, compute=compute)
    assert len(calls) == 1 and second == first
    run_stage("s", run, inputs=(), config={"a": 2}, modules=("prefcurate.io",), tracking=None, compute=compute)
    assert len(calls) == 2


def test_failed_stage_leaves_no_manifest(tmp_path):
    run = str(tmp_path / "run")

    def compute(_):
        io.write_text(io.join(run, "partial.txt"), "half")
        raise DataError("no usable rows")

    with pytest.raises(DataError):
        run_stage("s", run, inputs=(), config=None, modules=(), tracking=None, compute=compute)
    assert not io.exists(manifest_uri(run, "s"))
