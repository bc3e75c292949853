"""A watchdog that ends what a `prefcurate` command started when the command dies, even by kill -9.

Prefect's ephemeral API server (and a local Dask cluster) run as child processes; killed
with SIGKILL, the command cannot stop them, and they would run on. The reaper is a tiny
separate process that holds the read end of a pipe whose write end only the command holds:
when the command dies the pipe closes, and the reaper ends every descendant it saw.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Runs as `python -c REAPER <pid> <fd>`; Linux /proc only (elsewhere it watches nothing).
REAPER = r"""
import os, select, signal, sys, time
pid, fd = int(sys.argv[1]), int(sys.argv[2])

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

seen = set()
while not select.select([fd], [], [], 1.0)[0]:
    seen |= descendants(pid)
seen |= descendants(pid)
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
    read_end, write_end = os.pipe()  # non-inheritable: children never hold the write end
    subprocess.Popen([sys.executable, "-c", REAPER, str(os.getpid()), str(read_end)], pass_fds=(read_end,),
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    os.close(read_end)
    _KEEP.append(write_end)


_KEEP: list[int] = []  # the write end stays open for the life of this process
