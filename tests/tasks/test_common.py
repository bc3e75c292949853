"""The IO retry policy of every stage task."""

from __future__ import annotations

from prefcurate.errors import DataError, StorageError
from prefcurate.tasks.common import retry_on_io


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
