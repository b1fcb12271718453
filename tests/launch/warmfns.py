"""Jobs of the warm-worker tests (pickled by value: the job imports only gemctl, from its snapshot)."""

import os
import signal
import sys
import time
from pathlib import Path


def probe(note: str) -> dict:
    """What a job sees of its process: the same, warm or cold, except what was imported before it started."""
    preloaded = "torch" in sys.modules  # nothing of a cold job's own path imports torch before this
    forked = b"warm.py\0serve" in Path(f"/proc/{os.getppid()}/cmdline").read_bytes()  # parent: a supervisor
    import gemctl

    print(f"probe says {note}", flush=True)
    print(f"probe warns {note}", file=sys.stderr, flush=True)
    server_threads = None
    if forked:  # parent = supervisor, its parent = the server: forked while single-threaded, and still so
        supervisor = os.getppid()
        server = int(Path(f"/proc/{supervisor}/stat").read_text().rsplit(")", 1)[1].split()[1])
        server_threads = len(os.listdir(f"/proc/{server}/task"))
    return {"note": note, "forked": forked, "preloaded": preloaded, "cwd": os.getcwd(), "argv": sys.argv, "path": sys.path,
            "env": dict(os.environ), "gemctl": gemctl.__file__, "server_threads": server_threads,
            "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
            "stdin_tty": os.isatty(0)}


def stop_once(ready_dir: str) -> dict:
    """Run until the preemption signal, checkpoint nothing, ask to be requeued; the requeued run completes."""
    from gemctl.launch import preemption

    ready = Path(ready_dir) / f"ready-{preemption.restarts()}"
    if preemption.restarts() > 0:
        forked = b"warm.py\0serve" in Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        return {"status": "completed", "restarts": preemption.restarts(), "forked": forked}
    ready.write_text(str(os.getpid()))
    deadline = time.monotonic() + 120  # bound: the test signals as soon as it sees the ready file
    while not preemption.should_stop() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"status": "preempted" if preemption.should_stop() else "never signalled"}


def wait_forever(ready_dir: str) -> None:
    Path(ready_dir, "pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
