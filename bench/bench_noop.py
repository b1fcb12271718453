"""No-op `gemctl train stage3` vs `dvc status` on the same up-to-date repo (target <= 1.5x)."""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pipeline.project_copy import gemctl, make_project  # noqa: E402

DVC = str(Path(sys.executable).parent / "dvc")


def wall(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp))
        r = gemctl(project, "train", "stage3", "--recipe", "ci")
        assert r.returncode == 0, r.stderr

        def noop():
            r = gemctl(project, "train", "stage3", "--recipe", "ci")
            assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr

        def status():
            subprocess.run([DVC, "status", "stage3@ci"], cwd=project, check=True, capture_output=True)

        t_noop, t_status = wall(noop), wall(status)
        ratio = t_noop / t_status
        print(f"dvc status                 {t_status:6.2f} s")
        print(f"gemctl train stage3 (noop) {t_noop:6.2f} s   ratio {ratio:.2f}x   target <= 1.5x: "
              f"{'ok' if ratio <= 1.5 else 'MISSED'}")
