"""kill -9 of a `prefcurate` command leaves nothing running: the ephemeral Prefect API server it
started is ended by the reaper."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.flows.conftest import toy_config

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        out.update(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_kill_9_of_the_cli_leaves_no_process_behind(toy_world, tmp_path):
    config = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    config_file = tmp_path / "toy.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the CLI starts its ephemeral server
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.Popen([sys.executable, "-m", "prefcurate.flows.cli", "curate", "--config", str(config_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline, server = time.monotonic() + 240, None
    while server is None and time.monotonic() < deadline and proc.poll() is None:
        for child in _children(proc.pid):
            if b"uvicorn" in Path(f"/proc/{child}/cmdline").read_bytes():
                server = child
        time.sleep(0.2)
    assert server is not None, "the ephemeral API server never started"
    started = _children(proc.pid) | {server}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(_running(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in started if _running(p)], "processes of the killed command still run"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_a_child_started_just_before_the_kill_is_ended_too():
    # the child is started and the command killed within milliseconds: the reaper's poll has not
    # seen it, and it is reparented at once; the command's token in its environment gives it away
    script = ("import os, subprocess, sys, time\n"
              "from prefcurate.flows.reaper import start_reaper\n"
              "start_reaper(); time.sleep(1.2)\n"
              "child = subprocess.Popen(['sleep', '60'], stdout=subprocess.DEVNULL)\n"
              "print(child.pid, flush=True); os.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pid), "a child started just before kill -9 still runs"
