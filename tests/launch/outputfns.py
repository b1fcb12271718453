"""Functions the job-output tests run as jobs (pickled by value, like jobfns)."""

import sys
import time
from pathlib import Path


def chatter(n: int) -> str:
    """Alternate lines on stdout and stderr, in a known order, as a stage does (results on stdout, progress and
    warnings on stderr)."""
    for i in range(n):
        stream = sys.stdout if i % 2 == 0 else sys.stderr
        print(f"line {i} on {stream.name.strip('<>')}", file=stream, flush=True)
    return "done"


def run_until(go_file: str, bound_s: float = 600) -> str:
    deadline = time.monotonic() + bound_s
    while not Path(go_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"
