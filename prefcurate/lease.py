"""A lease on a run directory: one flow run writes to `<root>/<run>` at a time.

Two runs with the same run name would otherwise interleave their stages' files and
manifests. The lease is a small `lease.json` (owner token, host, pid, heartbeat time) that
works alike on local disk and on s3://: the second run finds a live lease and stops with one
line. A lease whose holder is gone — a dead pid on this host, or no heartbeat for `ttl_s` from
another host — is taken over, so a run killed with kill -9 resumes at once on the same host.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from prefcurate import io
from prefcurate.errors import ConfigError, StorageError

LEASE_FILE = "lease.json"
TTL_S = 120.0
HEARTBEAT_S = 20.0
SETTLE_S = 0.2  # time for a competing writer's lease to land before we re-read ours


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(uri: str) -> dict | None:
    try:
        return json.loads(io.read_text(uri)) if io.exists(uri) else None
    except (StorageError, ValueError):
        return None  # unreadable: a crashed writer's leftover, treated as no lease


def _stale(lease: dict, ttl_s: float) -> bool:
    if lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", -1))):
        return True
    return time.time() - float(lease.get("heartbeat", 0)) > ttl_s


def _describe(lease: dict) -> str:
    since = datetime.fromtimestamp(float(lease.get("started", 0)), timezone.utc).isoformat(timespec="seconds")
    return f"{lease.get('owner', '?')} (host {lease.get('host')}, pid {lease.get('pid')}, since {since})"


@contextmanager
def run_lease(run: str, owner: str, *, ttl_s: float = TTL_S, heartbeat_s: float = HEARTBEAT_S) -> Iterator[dict]:
    """Hold the lease on `run` while the body runs; a ConfigError in one line when another run holds it."""
    uri = io.join(run, LEASE_FILE)
    held = _read(uri)
    if held is not None and not _stale(held, ttl_s):
        raise ConfigError(f"run {run} is in use by {_describe(held)}; wait for it to finish or pick another run_name")
    now = time.time()
    mine = {"token": uuid.uuid4().hex, "owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
            "started": now, "heartbeat": now}
    io.write_text(uri, json.dumps(mine))
    time.sleep(SETTLE_S)
    current = _read(uri)
    if current is None or current.get("token") != mine["token"]:
        raise ConfigError(f"run {run} was just taken by {_describe(current or {})}; pick another run_name or retry later")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                io.write_text(uri, json.dumps({**mine, "heartbeat": time.time()}))
            except StorageError:
                pass  # the next beat tries again; a lease without beats for ttl_s may be taken over

    thread = threading.Thread(target=beat, name="prefcurate-lease", daemon=True)
    thread.start()
    try:
        yield mine
    finally:
        stop.set()
        thread.join(timeout=5)
        current = _read(uri)
        if current is not None and current.get("token") == mine["token"]:
            fs, path = io.filesystem(uri)
            fs.rm(path)
