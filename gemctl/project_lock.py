"""One gemctl command at a time changes a project's pipeline: the others wait, saying for whom.

`gemctl train`, `run`, `eval` and `sweep` render runs/<recipe>/params.json, params.yaml and dvc.yaml's inputs and
then drive DVC, whose own repo lock would refuse a second command outright (and a second render would change the
params a running stage reads). So each holds .gemctl/pipeline.lock (flock: released by the kernel when the process
ends, however it ends) from before it writes anything until it exits; a second command prints one line naming the
holder and waits. Read-only commands (status, logs, lineage, runs) never take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from .project import Project

_held: dict[Path, int] = {}  # lock file -> descriptor, for the life of this process


def lock_file(project: Project) -> Path:
    return project.root / ".gemctl" / "pipeline.lock"


def hold(project: Project, say=None) -> None:
    """Take the project's pipeline lock for the rest of this process (again in the same process: no-op). If another
    command holds it, print who through `say` (default: stderr) and wait."""
    path = lock_file(project)
    if path in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        (say or _stderr)(f"waiting for {_holder(fd)} to finish with this project's pipeline ...")
        fcntl.flock(fd, fcntl.LOCK_EX)
    # who holds it, for the next one to name: written in the locked file itself (never read as a lock state)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time(), "command": _command()}).encode(), 0)
    _held[path] = fd


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%H:%M:%S", time.localtime(info["since"]))
        return f"`{info['command']}` (pid {info['pid']}, since {since})"
    except (ValueError, KeyError, TypeError):
        return "another gemctl command"


def _command() -> str:
    return " ".join(["gemctl", *sys.argv[1:]])[:300]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
