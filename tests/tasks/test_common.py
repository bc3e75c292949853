"""The IO retry policy of every stage task."""

from __future__ import annotations

import errno

from prefcurate.errors import DataError, StorageError
from prefcurate.io import storage_error
from prefcurate.tasks.common import retry_on_io
from prefcurate.tracking import TrackingError


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self, raise_on_failure=False):
        return self.exc


def test_retry_only_on_transient_faults():
    assert retry_on_io(None, None, _State(storage_error("read", "s3://b/k", ConnectionError("reset by peer"))))
    assert retry_on_io(None, None, _State(storage_error("write", "s3://b/k", OSError("503 Slow Down"))))
    assert retry_on_io(None, None, _State(ConnectionError()))
    assert retry_on_io(None, None, _State(TrackingError("server busy", transient=True)))
    # what no retry can fix fails at once
    assert not retry_on_io(None, None, _State(storage_error("read", "x", FileNotFoundError("x"))))
    assert not retry_on_io(None, None, _State(storage_error("write", "x", OSError(errno.ENOSPC, "No space left on device"))))
    assert not retry_on_io(None, None, _State(storage_error("write", "x", PermissionError(errno.EACCES, "denied"))))
    assert not retry_on_io(None, None, _State(StorageError("x does not exist")))
    assert not retry_on_io(None, None, _State(TrackingError("bad experiment name")))
    assert not retry_on_io(None, None, _State(FileNotFoundError()))
    assert not retry_on_io(None, None, _State(OSError("disk on fire")))
    assert not retry_on_io(None, None, _State(DataError("bad rows")))
    assert not retry_on_io(None, None, _State(ValueError("bug")))
