"""`gemctl --help` wall time vs `python -c pass` (target: <= 0.3 s absolute)."""

import statistics
import subprocess
import sys
import time
from pathlib import Path

GEMCTL = str(Path(sys.executable).parent / "gemctl")


def wall(cmd: list[str], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    base = wall([sys.executable, "-c", "pass"])
    help_ = wall([GEMCTL, "--help"])
    print(f"python -c pass   {base * 1000:7.1f} ms")
    print(f"gemctl --help    {help_ * 1000:7.1f} ms   ratio {help_ / base:.2f}x   target <= 300 ms: "
          f"{'ok' if help_ <= 0.3 else 'MISSED'}")
