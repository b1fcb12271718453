"""Launch overheads, measured in one run on the project's test cluster (tests/cluster/start.sh):
- time to queue a 100-point sweep as one job array (target <= 3 s), then cancel it;
- submit-to-result wall time of a trivial function on slurm, local and debug (median of N), and their ratios.

    .venv/bin/python bench/bench_submit.py [--repeat 5]
"""

import argparse
import functools
import operator
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gemctl.launch import Resources, launch, launch_array, registry

RES = Resources(time_min=5, signal_delay_s=30, array_parallelism=4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    subprocess.run([str(Path(__file__).resolve().parents[1] / "tests/cluster/start.sh")], check=True,
                   stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as tmp:
        root = Path(tmp)
        fn = functools.partial(operator.add, 2, 3)
        # warm: the first launch snapshots the code and imports submitit
        launch(fn, kind="slurm", resources=RES, job_dir=root / "jobs", name="bench-warm")

        queue_s = []
        for i in range(3):
            t0 = time.perf_counter()
            handles = launch_array([fn] * 100, kind="slurm", resources=RES, job_dir=root / "jobs",
                                   name="bench-array", project=root, tags=[{"sweep": f"s{i}"}] * 100)
            queue_s.append(time.perf_counter() - t0)
            registry.cancel(root, f"s{i}")
            assert len(handles) == 100
        print(f"queue a 100-point array: median {statistics.median(queue_s):.2f} s "
              f"(runs: {', '.join(f'{x:.2f}' for x in queue_s)}; target <= 3 s)")
        # what `gemctl sweep` adds before queueing: resolving and validating every point of a 10 x 10 grid
        from gemctl import sweep
        from gemctl.project import Project

        grid = {"stages.stage3.lr": [1e-5 * (i + 1) for i in range(10)],
                "stages.stage3.loss.depth": [0.01 * i for i in range(10)]}
        t0 = time.perf_counter()
        points = sweep.expand(Project(Path(__file__).resolve().parents[1]), "stage3", "tiny", grid).points
        expand_s = time.perf_counter() - t0
        assert len(points) == 100
        total = expand_s + statistics.median(queue_s)
        print(f"expand a 100-point sweep: {expand_s:.2f} s; expand + queue {total:.2f} s "
              f"(target <= 3 s: {'ok' if total <= 3 else 'MISSED'})")

        walls = {}
        for kind in ("slurm", "local", "debug"):
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                r = launch(fn, kind=kind, resources=RES, job_dir=root / "jobs", name=f"bench-{kind}")
                times.append(time.perf_counter() - t0)
                assert r.ok and r.value == 5, r.error
            walls[kind] = statistics.median(times)
            print(f"submit-to-result, trivial function, {kind:5s}: median {walls[kind]:.3f} s "
                  f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)})")
        print(f"ratio slurm/local: {walls['slurm'] / walls['local']:.2f}x   "
              f"slurm/debug: {walls['slurm'] / walls['debug']:.0f}x   local/debug: {walls['local'] / walls['debug']:.0f}x")


if __name__ == "__main__":
    main()
