"""The run lease: a second run on the same run directory stops with one line; a dead holder's
lease is taken over at once (same host) or after its heartbeat expires (another host)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from prefcurate import io
from prefcurate.errors import ConfigError
from prefcurate.lease import LEASE_FILE, run_lease


def test_a_held_run_refuses_a_second_run_in_one_line(tmp_path):
    run = str(tmp_path / "run")
    with run_lease(run, owner="first"):
        with pytest.raises(ConfigError, match=r"run .* is in use by first \(host .*, pid \d+, since .*\); wait") as info:
            with run_lease(run, owner="second"):
                pass
        assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / LEASE_FILE).exists()  # released
    with run_lease(run, owner="third"):  # free again
        pass


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    run = str(tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    lease = {"token": "x", "owner": "killed run", "host": socket.gethostname(), "pid": int(dead.stdout),
             "started": time.time(), "heartbeat": time.time()}
    io.write_text(io.join(run, LEASE_FILE), json.dumps(lease))
    with run_lease(run, owner="resumed") as mine:
        assert json.loads(io.read_text(io.join(run, LEASE_FILE)))["token"] == mine["token"]


def test_another_hosts_lease_holds_until_its_heartbeat_expires(tmp_path):
    run = str(tmp_path / "run")
    lease = {"token": "x", "owner": "remote run", "host": "another-host", "pid": 1, "started": time.time(),
             "heartbeat": time.time()}
    io.write_text(io.join(run, LEASE_FILE), json.dumps(lease))
    with pytest.raises(ConfigError, match="in use by remote run"):
        with run_lease(run, owner="local"):
            pass
    io.write_text(io.join(run, LEASE_FILE), json.dumps({**lease, "heartbeat": time.time() - 3600}))
    with run_lease(run, owner="local"):
        pass


def test_the_lease_works_on_s3(s3_bucket):
    run = f"{s3_bucket}/runs/toy"
    with run_lease(run, owner="first", heartbeat_s=0.2):
        time.sleep(0.5)  # a few heartbeats
        beat = json.loads(io.read_text(io.join(run, LEASE_FILE)))["heartbeat"]
        assert beat > time.time() - 2
        with pytest.raises(ConfigError, match="in use by first"):
            with run_lease(run, owner="second"):
                pass
    assert not io.exists(io.join(run, LEASE_FILE))
