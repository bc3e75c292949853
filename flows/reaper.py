"""A watchdog that ends what a `prefcurate` command started when the command dies, even by kill -9.

Prefect's ephemeral API server (and a local Dask cluster) run as child processes; killed
with SIGKILL, the command cannot stop them, and they would run on. The reaper is a tiny
separate process that holds the read end of a pipe whose write end only the command holds:
when the command dies the pipe closes, and the reaper ends every descendant it saw, and every
process that carries the command's token in its environment (a child started in the last
moment before the kill, reparented before the reaper saw it).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

TOKEN_ENV = "PREFCURATE_REAPER_TOKEN"

# Runs as `python -c REAPER <pid> <fd> <token>`; Linux /proc only (elsewhere it watches nothing).
REAPER = r"""
import os, select, signal, sys, time
pid, fd, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()

def children(p):
    out = set()
    try:
        for task in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{task}/children") as fh:
                out.update(int(c) for c in fh.read().split())
    except OSError:
        pass
    return out

def descendants(p):
    found, todo = set(), [p]
    while todo:
        for c in children(todo.pop()):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found

def marked():
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if token in fh.read().split(b"\0"):
                        out.add(int(name))
            except OSError:
                pass
    return out

seen = set()
while not select.select([fd], [], [], 0.5)[0]:
    seen |= descendants(pid)
seen |= descendants(pid) | marked()
seen.discard(os.getpid())
for sig in (signal.SIGTERM, signal.SIGKILL):
    for p in seen:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    time.sleep(2)
"""


def start_reaper() -> None:
    """Watch this process; on its death, end every process it started (and theirs)."""
    if not os.path.isdir("/proc"):
        return
    token = secrets.token_hex(8)
    os.environ[TOKEN_ENV] = token  # inherited by everything this command starts from now on
    read_end, write_end = os.pipe()  # non-inheritable: children never hold the write end
    subprocess.Popen([sys.executable, "-c", REAPER, str(os.getpid()), str(read_end), f"{TOKEN_ENV}={token}"],
                     pass_fds=(read_end,), env={k: v for k, v in os.environ.items() if k != TOKEN_ENV},
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    os.close(read_end)
    _KEEP.append(write_end)


_KEEP: list[int] = []  # the write end stays open for the life of this process
